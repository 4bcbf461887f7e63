//! Retention against real Postgres: a sweep deletes what is old and keeps
//! what dedupe, paused and running sagas, and idempotency keys still need.

use std::time::Duration;

use sagaflow_common::{db, testkit};
use sagaflow_orchestrator::definitions::order;
use sagaflow_orchestrator::retention::{self, Retention};
use sagaflow_orchestrator::saga::{Event, Kind, Outcome};
use sagaflow_orchestrator::store::{self, Applied, NewSaga};
use uuid::Uuid;

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// A fresh, migrated orchestrator database, dropped at the end.
struct TestDb {
    name: String,
    pool: deadpool_postgres::Pool,
    client: tokio_postgres::Client,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = testkit::unique_name("sagaflow_test");
        let url = testkit::create(&name).await.expect("creating database");
        let pool = db::pool(&url, 4).expect("pool");
        db::migrate(&pool, &sagaflow_orchestrator::migrations())
            .await
            .expect("migrating");
        let client = db::connect(&url).await.expect("connecting");
        TestDb { name, pool, client }
    }

    async fn place(&self, key: &str) -> Uuid {
        let saga_id = Uuid::now_v7();
        store::place(
            &self.pool,
            NewSaga {
                saga_id,
                idempotency_key: key.to_owned(),
                definition: order::shared(),
                input: vec![1, 2, 3],
                traceparent: None,
            },
        )
        .await
        .expect("placing");
        saga_id
    }

    /// Make `saga` look `status` since `age_days` days, its history as old.
    async fn age(&self, saga: Uuid, status: &str, age_days: i32) {
        self.client
            .execute(
                "UPDATE sagas SET status = $2, updated_at = now() - $3::int * interval '1 day'
                 WHERE saga_id = $1",
                &[&saga, &status, &age_days],
            )
            .await
            .unwrap();
        self.client
            .execute(
                "UPDATE saga_history SET at = now() - $2::int * interval '1 day' WHERE saga_id = $1",
                &[&saga, &age_days],
            )
            .await
            .unwrap();
    }

    async fn count(&self, sql: &str, saga: Uuid) -> i64 {
        self.client.query_one(sql, &[&saga]).await.unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        testkit::drop_now(vec![self.name.clone()]);
    }
}

#[tokio::test]
async fn a_sweep_deletes_what_is_old_and_keeps_what_is_still_needed() {
    let t = TestDb::new().await;
    let done_old = t.place("done-old").await;
    let done_new = t.place("done-new").await;
    let running_old = t.place("running-old").await;
    let paused_old = t.place("paused-old").await;
    t.age(done_old, "COMPLETED", 40).await;
    t.age(done_new, "COMPENSATED", 2).await;
    t.age(running_old, "RUNNING", 40).await;
    t.age(paused_old, "COMPENSATION_FAILED", 40).await;
    let (old_event, new_event) = (Uuid::now_v7(), Uuid::now_v7());
    t.client
        .execute(
            "INSERT INTO processed_events (event_id, saga_id, processed_at) VALUES
                ($1, $3, now() - interval '20 days'), ($2, $3, now() - interval '1 day')",
            &[&old_event, &new_event, &running_old],
        )
        .await
        .unwrap();
    t.client
        .batch_execute(
            "INSERT INTO dead_letters (message_id, reason, attributes, data, dead_at) VALUES
                ('old', 'poison', '{}', '', now() - interval '20 days'),
                ('new', 'poison', '{}', '', now() - interval '1 day')",
        )
        .await
        .unwrap();
    t.client
        .execute(
            "INSERT INTO operator_requests (request_id, saga_id, action, applied_at) VALUES
                ('r-done', $1, 'cancel', now() - interval '40 days'),
                ('r-running', $2, 'cancel', now() - interval '40 days')",
            &[&done_old, &running_old],
        )
        .await
        .unwrap();

    let r = Retention {
        message: days(7),
        dead_letters: days(14),
        dedupe: days(15),
        history: days(30),
        interval: Duration::from_secs(3600),
    };
    let swept = retention::sweep(&t.pool, &r).await.expect("sweep");
    assert_eq!(swept.processed_events, 1);
    assert_eq!(swept.history, 1);
    assert_eq!(swept.operator_requests, 1);
    assert_eq!(swept.dead_letters, 1);

    let history = "SELECT count(*) FROM saga_history WHERE saga_id = $1";
    assert_eq!(t.count(history, done_old).await, 0, "finished long ago");
    assert_eq!(t.count(history, done_new).await, 1, "finished lately");
    assert_eq!(t.count(history, running_old).await, 1, "still running");
    assert_eq!(
        t.count(history, paused_old).await,
        1,
        "paused: a person must look"
    );
    let sagas = "SELECT count(*) FROM sagas WHERE saga_id = $1";
    assert_eq!(t.count(sagas, done_old).await, 1, "the saga row stays");
    let events: Vec<Uuid> = t
        .client
        .query("SELECT event_id FROM processed_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, [new_event]);
    let letters: Vec<String> = t
        .client
        .query("SELECT message_id FROM dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(letters, ["new"]);

    // Dedupe still does its job for the id it kept.
    let event = Event::Outcome {
        step: 0,
        kind: Kind::Action,
        outcome: Outcome::succeeded(),
    };
    let applied = store::apply_event(&t.pool, new_event, running_old, &event)
        .await
        .expect("apply");
    assert!(matches!(applied, Applied::Duplicate));
    // And the idempotency key of a saga whose history is gone still works.
    let existing = store::find_by_key(&t.pool, order::SAGA_TYPE, "done-old", &[1, 2, 3])
        .await
        .expect("find")
        .expect("still there");
    assert_eq!(existing.saga_id, done_old);

    // A second sweep finds nothing more.
    let again = retention::sweep(&t.pool, &r).await.expect("sweep");
    assert_eq!(again, retention::Swept::default());
}
