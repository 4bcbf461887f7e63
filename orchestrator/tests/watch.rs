//! The watch reads against real Postgres: a list cursor never skips a change
//! that commits late and never repeats one; a saga read resumes exactly
//! after a seq and reports history deleted by retention.

use sagaflow_common::{db, testkit};
use sagaflow_orchestrator::definitions::order;
use sagaflow_orchestrator::store::{self, NewSaga};
use sagaflow_orchestrator::watch::list::{self, Cursor, Filter, Since};
use sagaflow_orchestrator::watch::saga;
use sagaflow_protos::orchestrator::v1::{SagaChange, SagaState};
use uuid::Uuid;

struct TestDb {
    name: String,
    url: String,
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
        TestDb { name, url, pool }
    }

    async fn place(&self, key: &str) -> Uuid {
        let saga_id = Uuid::now_v7();
        store::place(
            &self.pool,
            NewSaga {
                saga_id,
                idempotency_key: key.to_owned(),
                definition: order::shared(),
                input: vec![],
                traceparent: None,
            },
        )
        .await
        .expect("placing");
        saga_id
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        testkit::drop_now(vec![self.name.clone()]);
    }
}

/// Move `saga` to `status` with a history entry, in `tx` (not committed).
async fn change_in(tx: &tokio_postgres::Transaction<'_>, saga: Uuid, status: &str) {
    tx.execute(
        "WITH s AS (UPDATE sagas SET status = $2, version = version + 1
                    WHERE saga_id = $1 RETURNING version)
         INSERT INTO saga_history (saga_id, seq, kind, status, detail)
         SELECT $1, version, 'test', $2, '' FROM s",
        &[&saga, &status],
    )
    .await
    .expect("changing");
}

async fn since(t: &TestDb, filter: &Filter, cursor: &Cursor) -> (Vec<SagaChange>, Cursor) {
    match list::changes_since(&t.pool, filter, cursor)
        .await
        .expect("reading")
    {
        Since::Changes { changes, cursor } => (changes, cursor),
        Since::TooMany => panic!("too many"),
    }
}

fn ids(changes: &[SagaChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| c.saga.as_ref().unwrap().saga_id.clone())
        .collect()
}

#[tokio::test]
async fn a_change_that_commits_late_is_not_skipped_and_none_is_sent_twice() {
    let t = TestDb::new().await;
    let filter = Filter::default();
    let x = t.place("x").await;
    let first = list::snapshot(&t.pool, &filter, false).await.unwrap();
    let c0 = Cursor::decode(&first.cursor).unwrap();
    let running = first
        .snapshot
        .unwrap()
        .counts
        .iter()
        .find(|c| c.state == SagaState::Running as i32)
        .unwrap()
        .count;
    assert_eq!(running, 1);

    // X changes in a transaction that starts first and commits last; Y is
    // placed (and committed) in between.
    let mut late = db::connect(&t.url).await.unwrap();
    let tx = late.transaction().await.unwrap();
    change_in(&tx, x, "COMPENSATING").await;
    let y = t.place("y").await;

    let (changes, c1) = since(&t, &filter, &c0).await;
    assert_eq!(
        ids(&changes),
        vec![y.to_string()],
        "only what has committed"
    );
    assert_eq!(changes[0].previous_state, 0, "created");
    assert!(
        c1.xip.iter().any(|x| *x >= c0.xmin),
        "X is still in progress"
    );

    tx.commit().await.unwrap();
    let (changes, c2) = since(&t, &filter, &c1).await;
    assert_eq!(
        ids(&changes),
        vec![x.to_string()],
        "the late commit arrives"
    );
    assert_eq!(changes[0].previous_state, SagaState::Running as i32);
    assert_eq!(
        changes[0].saga.as_ref().unwrap().state,
        SagaState::Compensating as i32
    );

    let (changes, _) = since(&t, &filter, &c2).await;
    assert!(changes.is_empty(), "nothing twice: {changes:?}");
    // Resuming from an old cursor gives both again, once each.
    let (changes, _) = since(&t, &filter, &c0).await;
    let mut got = ids(&changes);
    got.sort();
    let mut want = vec![x.to_string(), y.to_string()];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn changes_fold_per_saga_and_counts_kept_from_them_match_the_table() {
    let t = TestDb::new().await;
    let filter = Filter {
        states: [sagaflow_orchestrator::saga::Status::Compensated].into(),
        ..Default::default()
    };
    let a = t.place("a").await;
    let first = list::snapshot(&t.pool, &filter, false).await.unwrap();
    let mut cursor = Cursor::decode(&first.cursor).unwrap();
    let b = t.place("b").await;
    let mut c = db::connect(&t.url).await.unwrap();
    for status in ["COMPENSATING", "COMPENSATED"] {
        let tx = c.transaction().await.unwrap();
        change_in(&tx, a, status).await;
        tx.commit().await.unwrap();
    }
    let (changes, next) = since(&t, &filter, &cursor).await;
    cursor = next;
    assert_eq!(changes.len(), 2, "{changes:?}");
    let ca = changes
        .iter()
        .find(|c| c.saga.as_ref().unwrap().saga_id == a.to_string())
        .unwrap();
    assert_eq!(ca.previous_state, SagaState::Running as i32, "folded");
    assert_eq!(
        ca.saga.as_ref().unwrap().state,
        SagaState::Compensated as i32
    );
    assert!(ca.matches);
    let cb = changes
        .iter()
        .find(|c| c.saga.as_ref().unwrap().saga_id == b.to_string())
        .unwrap();
    assert!(!cb.matches, "RUNNING is outside the filter");
    assert!(cb.saga.as_ref().unwrap().created_at.is_none(), "minimal");

    // A leaves the filter: reported, not matching.
    let tx = c.transaction().await.unwrap();
    change_in(&tx, a, "COMPENSATION_FAILED").await;
    tx.commit().await.unwrap();
    let (changes, _) = since(&t, &filter, &cursor).await;
    assert_eq!(changes.len(), 1);
    assert!(!changes[0].matches);
    assert_eq!(changes[0].previous_state, SagaState::Compensated as i32);
    assert!(
        changes[0].saga.as_ref().unwrap().created_at.is_some(),
        "full"
    );
}

#[tokio::test]
async fn a_saga_read_resumes_after_any_seq_and_reports_pruned_history() {
    let t = TestDb::new().await;
    let s = t.place("s").await;
    let mut c = db::connect(&t.url).await.unwrap();
    for status in ["COMPENSATING", "COMPENSATED"] {
        let tx = c.transaction().await.unwrap();
        change_in(&tx, s, status).await;
        tx.commit().await.unwrap();
    }
    for after in 0..=3u64 {
        let r = saga::read(&t.pool, s, after).await.unwrap().unwrap();
        let seqs: Vec<u64> = r.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (after + 1..=3).collect::<Vec<_>>());
        assert_eq!(saga::start(after, &r).ok(), Some(None));
        assert!(saga::ends(&r));
        assert_eq!(r.saga.state, SagaState::Compensated as i32);
    }
    let r = saga::read(&t.pool, s, 0).await.unwrap().unwrap();
    assert!(saga::start(4, &r).is_err(), "past the end");
    assert!(
        saga::read(&t.pool, Uuid::now_v7(), 0)
            .await
            .unwrap()
            .is_none()
    );

    c.execute(
        "DELETE FROM saga_history WHERE saga_id = $1 AND seq < 3",
        &[&s],
    )
    .await
    .unwrap();
    let r = saga::read(&t.pool, s, 0).await.unwrap().unwrap();
    assert_eq!(saga::start(0, &r).ok(), Some(Some(3)));
    assert_eq!(r.entries.len(), 1);
    let r = saga::read(&t.pool, s, 2).await.unwrap().unwrap();
    assert_eq!(
        saga::start(2, &r).ok(),
        Some(None),
        "nothing missing after 2"
    );
}
