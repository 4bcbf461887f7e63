//! Stored definitions against real Postgres: a version, once stored, never
//! changes (reformatting its file is not a change; new content under the
//! same version is refused, naming the file); every instance runs every
//! stored version, and one stored by another instance is picked up.
//!
//! Own test binary: it installs the process-wide registry.

use std::collections::{BTreeMap, HashSet};

use sagaflow_common::{db, testkit};
use sagaflow_orchestrator::definitions::{self, file, order, stored};

struct TestDb {
    name: String,
    pool: deadpool_postgres::Pool,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = testkit::unique_name("sagaflow_test");
        let url = testkit::create(&name).await.expect("creating database");
        let pool = db::pool(&url, 4).expect("pool");
        db::migrate(&pool, &sagaflow_orchestrator::migrations())
            .await
            .expect("migrating");
        TestDb { name, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        testkit::drop_now(vec![self.name.clone()]);
    }
}

fn participants() -> BTreeMap<String, String> {
    ["order", "payment", "inventory"]
        .iter()
        .map(|k| ((*k).to_owned(), format!("http://{k}:1")))
        .collect()
}

fn parse(name: &str, text: &str) -> (String, sagaflow_orchestrator::saga::Definition) {
    let def = file::parse(name, text, Some(&participants())).expect("valid");
    (name.to_owned(), def)
}

#[tokio::test]
async fn a_stored_version_never_changes_and_every_stored_version_runs() {
    let t = TestDb::new().await;
    let v1 = parse("a/order.v1.yaml", order::FILE);
    assert!(
        stored::share(&t.pool, std::slice::from_ref(&v1))
            .await
            .unwrap()
            .is_empty()
    );
    // Again, and reformatted (comments gone, keys reordered, units
    // rewritten): the same definition, the same hash.
    assert!(
        stored::share(&t.pool, std::slice::from_ref(&v1))
            .await
            .unwrap()
            .is_empty()
    );
    let reformatted = order::FILE
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(" #").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("deadline: 10s", "deadline: 10000ms")
        .replace("version: 1\n", "")
        .replace("type: order\n", "type: order\nversion: 1\n");
    assert_ne!(reformatted, order::FILE);
    let same = parse("b/order.v1.yaml", &reformatted);
    assert!(stored::share(&t.pool, &[same]).await.unwrap().is_empty());

    // New content under version 1: refused, naming the file, the stored
    // one's file, and the version to use.
    let changed = parse(
        "c/order.v1.yaml",
        &order::FILE.replace("attempts: 5 ", "attempts: 6 "),
    );
    let e = stored::share(&t.pool, std::slice::from_ref(&changed))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "c/order.v1.yaml: order version 1 differs from the one stored from a/order.v1.yaml at "
        ) && e.ends_with("a stored version never changes; give the new content version 2"),
        "{e}"
    );

    // As version 2 it is stored; an instance whose files give only v2 runs
    // the stored v1 too.
    let v2 = parse(
        "c/order.v2.yaml",
        &order::FILE
            .replace("attempts: 5 ", "attempts: 6 ")
            .replace("version: 1", "version: 2"),
    );
    let others = stored::share(&t.pool, std::slice::from_ref(&v2))
        .await
        .unwrap();
    assert_eq!(others, vec![v1.1.clone()]);

    // An instance started with v1 only picks v2 up from the database.
    definitions::install(vec![v1.1.clone()]);
    assert!(definitions::find("order", 2).is_none());
    assert_eq!(stored::refresh(&t.pool).await.unwrap(), 1);
    assert_eq!(
        definitions::find("order", 2).unwrap().steps[0]
            .policy
            .max_attempts,
        6
    );
    assert_eq!(
        definitions::find("order", 1).unwrap().steps[0]
            .policy
            .max_attempts,
        5
    );
    assert_eq!(definitions::latest("order").unwrap().version, 2);
    assert_eq!(stored::refresh(&t.pool).await.unwrap(), 0);

    // A stored row that no longer reads back is skipped, not fatal.
    let c = t.pool.get().await.unwrap();
    c.execute(
        "INSERT INTO saga_definitions (saga_type, version, hash, definition, source)
         VALUES ('broken', 1, 'x', '{\"not\": \"a definition\"}', 'somewhere')",
        &[],
    )
    .await
    .unwrap();
    let have: HashSet<(String, u32)> = [("order".to_owned(), 1), ("order".to_owned(), 2)]
        .into_iter()
        .collect();
    assert!(
        stored::stored_except(&t.pool, &have)
            .await
            .unwrap()
            .is_empty()
    );
}
