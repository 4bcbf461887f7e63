//! The relay against real Postgres (127.0.0.1:5432, trust auth) and the real
//! Pub/Sub emulator. Every test gets its own database and topic.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sagaflow_common::outbox::attributes;
use support::{
    Inbox, Relay, TestDb, emulator, events, init_logs, relay_config, subscribe, wait_for,
};

const UNSENT: &str = "SELECT count(*) FROM outbox WHERE sent_at IS NULL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_row_with_its_attributes_and_ordering_key_on_notify() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let db = TestDb::migrated().await;
    let (topic, subscriber, mut rx) = subscribe(&cfg, 2).await;

    // Polling is slowed to a minute: only NOTIFY (or the catch-up after
    // LISTEN connects) can relay rows within the deadlines below.
    let relay = Relay::start(outbox_relay::RelayConfig {
        poll_interval: Duration::from_secs(60),
        ordering_key: true,
        ..relay_config(&emu, &[&db], &topic)
    });

    let mut inbox = Inbox::default();
    let mut all = Vec::new();
    for wave in 0..2 {
        let rows = events(20, 5);
        let started = Instant::now();
        db.insert(&rows).await;
        all.extend(rows);
        inbox
            .collect(&mut rx, all.len(), Duration::from_secs(20))
            .await;
        eprintln!(
            "wave {wave}: 100 rows relayed in {:?} after insert",
            started.elapsed()
        );
    }

    for e in &all {
        let got = &inbox.by_event[&e.event_id.to_string()];
        assert_eq!(got.data, e.payload);
        assert_eq!(got.ordering_key, e.saga_id.to_string());
        assert_eq!(
            got.attributes.get(attributes::SAGA_ID),
            Some(&e.saga_id.to_string())
        );
        assert_eq!(
            got.attributes.get(attributes::EVENT_TYPE),
            Some(&e.event_type)
        );
        assert_eq!(
            got.attributes.get(attributes::TRACEPARENT),
            e.traceparent.as_ref()
        );
    }
    wait_for("every row marked sent", Duration::from_secs(10), || async {
        db.count(UNSENT).await == 0
    })
    .await;
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox WHERE publish_attempts > 0 OR last_error IS NOT NULL"
        )
        .await,
        0
    );
    inbox.drain(&mut rx, Duration::from_millis(500)).await;
    eprintln!("duplicates: {}", inbox.duplicates);

    relay.stop().await;
    drop(rx);
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_every_row_at_least_once() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let db = TestDb::migrated().await;
    let (topic, subscriber, mut rx) = subscribe(&cfg, 4).await;
    let rows = events(1000, 6);
    db.insert(&rows).await;

    let started = Instant::now();
    let relays = [
        Relay::start(relay_config(&emu, &[&db], &topic)),
        Relay::start(relay_config(&emu, &[&db], &topic)),
    ];
    wait_for("every row marked sent", Duration::from_secs(60), || async {
        db.count(UNSENT).await == 0
    })
    .await;
    let elapsed = started.elapsed();

    let mut inbox = Inbox::default();
    inbox
        .collect(&mut rx, rows.len(), Duration::from_secs(60))
        .await;
    inbox.drain(&mut rx, Duration::from_secs(1)).await;
    let expected: HashSet<String> = rows.iter().map(|e| e.event_id.to_string()).collect();
    let got: HashSet<String> = inbox.by_event.keys().cloned().collect();
    assert_eq!(got, expected);
    eprintln!(
        "two relays: {} rows sent in {elapsed:?} ({:.0} rows/s), {} duplicate deliveries",
        rows.len(),
        rows.len() as f64 / elapsed.as_secs_f64(),
        inbox.duplicates
    );

    for r in relays {
        r.stop().await;
    }
    drop(rx);
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_only_sent_rows_past_retention() {
    init_logs();
    let emu = emulator();
    let db = TestDb::migrated().await;
    let rows = events(1, 10);
    db.insert(&rows).await;
    let client = db.client().await;
    // ids 1..=4: sent two hours ago; 5..=7: sent ten minutes ago; 8..=10 unsent.
    client
        .batch_execute(
            "UPDATE outbox SET sent_at = now() - interval '2 hours' WHERE id <= 4;
             UPDATE outbox SET sent_at = now() - interval '10 minutes' WHERE id BETWEEN 5 AND 7;",
        )
        .await
        .expect("backdating rows");

    let relay = Relay::start(outbox_relay::RelayConfig {
        retention: Duration::from_secs(3600),
        cleanup_interval: Duration::from_millis(100),
        ..relay_config(&emu, &[&db], &support::unique("events"))
    });
    wait_for("old sent rows deleted", Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM outbox WHERE id <= 4").await == 0
    })
    .await;
    wait_for("unsent rows sent", Duration::from_secs(20), || async {
        db.count(UNSENT).await == 0
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM outbox").await, 6);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_missing_outbox_table_then_relays() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let db = TestDb::empty().await;
    let (topic, subscriber, mut rx) = subscribe(&cfg, 1).await;
    let relay = Relay::start(relay_config(&emu, &[&db], &topic));

    // A claim against the missing table rolls back its transaction.
    wait_for("a failed claim", Duration::from_secs(20), || async {
        db.rollbacks().await > 0
    })
    .await;

    db.migrate().await;
    let rows = events(3, 4);
    db.insert(&rows).await;
    let mut inbox = Inbox::default();
    inbox
        .collect(&mut rx, rows.len(), Duration::from_secs(30))
        .await;
    wait_for("rows marked sent", Duration::from_secs(10), || async {
        db.count(UNSENT).await == 0
    })
    .await;

    relay.stop().await;
    drop(rx);
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_its_database_connections_are_killed() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let db = TestDb::migrated().await;
    let (topic, subscriber, mut rx) = subscribe(&cfg, 1).await;
    // Slow polling: after the kill only a re-established LISTEN (or its
    // catch-up wake-up) relays rows within the deadline.
    let relay = Relay::start(outbox_relay::RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..relay_config(&emu, &[&db], &topic)
    });
    let mut inbox = Inbox::default();
    let first = events(2, 3);
    db.insert(&first).await;
    inbox
        .collect(&mut rx, first.len(), Duration::from_secs(20))
        .await;

    let killed = db.kill_other_connections().await;
    assert!(!killed.is_empty(), "the relay had connections to kill");
    wait_for(
        "a new LISTEN connection",
        Duration::from_secs(20),
        || async { db.listeners().await.iter().any(|pid| !killed.contains(pid)) },
    )
    .await;

    let second = events(2, 3);
    db.insert(&second).await;
    inbox
        .collect(&mut rx, first.len() + second.len(), Duration::from_secs(20))
        .await;
    wait_for("rows marked sent", Duration::from_secs(10), || async {
        db.count(UNSENT).await == 0
    })
    .await;

    relay.stop().await;
    drop(rx);
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_pubsub_rejects_does_not_hold_back_the_others() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let db = TestDb::migrated().await;
    let (topic, subscriber, mut rx) = subscribe(&cfg, 1).await;
    // Over Pub/Sub's 10 MB message limit.
    let mut poison = events(1, 1);
    poison[0].payload = vec![b'x'; 11 * 1024 * 1024];
    db.insert(&poison).await;
    let rows = events(5, 4);
    db.insert(&rows).await;

    let started = Instant::now();
    let relay = Relay::start(relay_config(&emu, &[&db], &topic));
    let mut inbox = Inbox::default();
    inbox
        .collect(&mut rx, rows.len(), Duration::from_secs(20))
        .await;
    wait_for("the failure recorded", Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM outbox WHERE id = 1 AND publish_attempts > 0 AND last_error IS NOT NULL AND sent_at IS NULL")
            .await
            == 1
    })
    .await;
    eprintln!("poison row failed after {:?}", started.elapsed());
    wait_for(
        "the other rows marked sent",
        Duration::from_secs(10),
        || async { db.count(UNSENT).await == 1 },
    )
    .await;
    let error: String = db
        .client()
        .await
        .query_one("SELECT last_error FROM outbox WHERE id = 1", &[])
        .await
        .expect("reading last_error")
        .get(0);
    assert!(error.contains("limit"), "{error}");
    assert!(!inbox.by_event.contains_key(&poison[0].event_id.to_string()));

    relay.stop().await;
    drop(rx);
    subscriber.shutdown().await;
}

/// Throughput of one relay on one database, without a subscriber. Ignored by
/// default; run with
/// `cargo test -p sagaflow-outbox-relay --release --test relay -- --ignored --nocapture`.
/// `RELAY_BENCH_ROWS`, `RELAY_BENCH_BATCH`, `RELAY_BENCH_PER_SAGA`,
/// `RELAY_BENCH_RELAYS` tune it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn relay_throughput() {
    init_logs();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, batch, per_saga, relays) = (
        env("RELAY_BENCH_ROWS", 20_000),
        env("RELAY_BENCH_BATCH", 100),
        env("RELAY_BENCH_PER_SAGA", 1),
        env("RELAY_BENCH_RELAYS", 1),
    );
    let emu = emulator();
    let db = TestDb::migrated().await;
    db.insert(&events(n / per_saga, per_saga)).await;
    let topic = support::unique("events");
    sagaflow_common::pubsub::ensure_topic(&emu.config(), &topic)
        .await
        .expect("creating topic");
    let started = Instant::now();
    let running: Vec<Relay> = (0..relays)
        .map(|_| {
            Relay::start(outbox_relay::RelayConfig {
                batch_size: batch as i64,
                ..relay_config(&emu, &[&db], &topic)
            })
        })
        .collect();
    wait_for("every row sent", Duration::from_secs(600), || async {
        db.count(UNSENT).await == 0
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "{n} rows ({per_saga} per saga), batch {batch}, {relays} relay(s): {elapsed:?}, {:.0} rows/s",
        n as f64 / elapsed.as_secs_f64()
    );
    for r in running {
        r.stop().await;
    }
}

/// The claim stays a range scan of the unsent-rows index in the relay's
/// sessions, whatever the planner believes of the table. Its statement is
/// prepared once per connection, and a plan made while the table was empty
/// (a sequential scan and a sort) would be kept while the table fills up
/// with rows kept for the retention period, each claim reading them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_is_an_index_range_scan_in_relay_sessions() {
    init_logs();
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute("ALTER TABLE outbox SET (autovacuum_enabled = false); ANALYZE outbox;")
        .await
        .expect("freezing the statistics of an empty table");
    let explain = |pool: deadpool_postgres::Pool| async move {
        let client = pool.get().await.expect("a connection");
        let plan = client
            .query(
                &format!("EXPLAIN {}", outbox_relay::CLAIM),
                &[&100i64, &Vec::<i64>::new()],
            )
            .await
            .expect("explain");
        plan.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let plain = explain(sagaflow_common::db::pool(&db.url, 1).expect("pool")).await;
    eprintln!("the claim's plan without the relay's settings:\n{plain}");
    let relay = explain(
        sagaflow_common::db::pool_with_settings(&db.url, 1, &outbox_relay::SESSION_SETTINGS)
            .expect("pool"),
    )
    .await;
    assert!(relay.contains("outbox_unsent_idx"), "{relay}");
    assert!(!relay.contains("Seq Scan"), "{relay}");
}
