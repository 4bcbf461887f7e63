//! Test helpers every crate's tests share (feature `testkit`): each test
//! gets fresh databases on the local server, named by a UUID, and drops
//! them when done.

use crate::db;

/// The Postgres server tests use: `SAGAFLOW_SERVER_URL`, or the local one.
pub fn server_url() -> String {
    std::env::var("SAGAFLOW_SERVER_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// `{prefix}_{uuid}`: a database name no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Create database `name` on the test server; its URL.
pub async fn create(name: &str) -> anyhow::Result<String> {
    let url = format!("{}/{name}", server_url());
    db::ensure_database(&url).await?;
    Ok(url)
}

/// Drop `names` now (`WITH (FORCE)`, best effort), from any context: a
/// `Drop` may run inside a runtime or outside one, so this runs on a thread
/// with a runtime of its own and waits for it.
pub fn drop_now(names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let admin = db::connect(&format!("{}/postgres", server_url())).await?;
            for name in names {
                admin
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                        name.replace('"', "\"\"")
                    ))
                    .await?;
            }
            anyhow::Ok(())
        })
    })
    .join();
    if let Ok(Err(e)) = dropped {
        eprintln!("could not drop test databases: {e:#}");
    }
}
