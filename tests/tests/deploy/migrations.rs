//! Replicas starting at once: every deployment runs two of each binary, and
//! each creates its database if missing and migrates it when it starts.
//! Started together on a fresh server, they must all come up, and each
//! migration must be applied once.

use std::sync::Arc;

use sagaflow_common::db::{self, Migration};
use sagaflow_common::testkit;
use sagaflow_participants::Kind;

/// More than any deployment runs, to make the race likely.
const REPLICAS: usize = 8;

/// Migrations that fail or leave a trace when applied twice: the table's
/// second creation fails, each insert would leave a second row.
const COUNTED: &[Migration] = &[
    Migration {
        version: 1,
        name: "create applied",
        sql: "CREATE TABLE applied (version integer NOT NULL)",
    },
    Migration {
        version: 2,
        name: "slow insert",
        sql: "INSERT INTO applied VALUES (2); SELECT pg_sleep(0.05)",
    },
    Migration {
        version: 3,
        name: "insert",
        sql: "INSERT INTO applied VALUES (3)",
    },
];

/// Dropped when the test ends, however it ends.
struct Databases(Vec<String>);

impl Drop for Databases {
    fn drop(&mut self) {
        testkit::drop_now(std::mem::take(&mut self.0));
    }
}

/// `REPLICAS` starts of one binary on `url`, released at once: each
/// creates the database if missing and migrates it, as the binaries do.
async fn start_together(url: &str, migrations: Vec<Migration>) -> anyhow::Result<()> {
    let gate = Arc::new(tokio::sync::Barrier::new(REPLICAS));
    let migrations: Arc<[Migration]> = migrations.into();
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..REPLICAS {
        let (gate, url, migrations) = (gate.clone(), url.to_owned(), migrations.clone());
        starts.spawn(async move {
            gate.wait().await;
            db::ensure_database(&url).await?;
            let pool = db::pool(&url, 1)?;
            db::migrate(&pool, &migrations).await
        });
    }
    while let Some(started) = starts.join_next().await {
        started??;
    }
    Ok(())
}

/// Each version recorded once, and no other.
async fn recorded(url: &str) -> anyhow::Result<Vec<i32>> {
    let client = db::connect(url).await?;
    let rows = client
        .query(
            "SELECT version FROM sagaflow_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_apply_each_migration_once() -> anyhow::Result<()> {
    let names: Vec<String> = ["sf_deploy_counted", "sf_deploy_orch", "sf_deploy_order"]
        .map(testkit::unique_name)
        .to_vec();
    let _drop = Databases(names.clone());
    let url = |name: &str| format!("{}/{name}", testkit::server_url());

    // Migrations that would fail or count twice.
    let counted = url(&names[0]);
    start_together(&counted, COUNTED.to_vec()).await?;
    assert_eq!(recorded(&counted).await?, vec![1, 2, 3]);
    let client = db::connect(&counted).await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM applied ORDER BY version", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, vec![2, 3], "a migration ran more than once");

    // The real ones: the orchestrator's and a participant's, seed data
    // included.
    for (name, migrations) in [
        (&names[1], sagaflow_orchestrator::migrations()),
        (
            &names[2],
            sagaflow_participants::server::migrations(Kind::Order).to_vec(),
        ),
    ] {
        let want: Vec<i32> = migrations.iter().map(|m| m.version).collect();
        start_together(&url(name), migrations).await?;
        assert_eq!(recorded(&url(name)).await?, want, "{name}");
    }
    Ok(())
}
