//! Test support: the real Pub/Sub emulator, throw-away databases, a running
//! relay, and waiting for conditions with deadlines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use outbox_relay::RelayConfig;
use sagaflow_common::outbox;
use sagaflow_common::pubsub::{
    EventSubscriber, PubSubConfig, ReceivedMessage, SubscriptionSpec, ensure_subscription,
    ensure_topic,
};
use sagaflow_common::{db, testkit};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";
const EMULATOR_START: Duration = Duration::from_secs(60);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,hyper=warn,tonic=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Poll `cond` every 50 ms until it holds; panic naming `what` after
/// `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- emulator

/// A running Pub/Sub emulator, killed with its process group on drop.
pub struct Emulator {
    child: Child,
    pub host: String,
    log: PathBuf,
}

impl Emulator {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("finding a free port")
            .port();
        let log = std::env::temp_dir().join(format!("sagaflow-relay-emulator-{port}.log"));
        let out = File::create(&log).expect("creating the emulator log");
        let err = out.try_clone().expect("cloning the emulator log handle");
        let mut child = Command::new(EMULATOR)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {EMULATOR}: {e}"));
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + EMULATOR_START;
        while TcpStream::connect(&host).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("emulator exited with {status}; log: {}", log.display());
            }
            assert!(
                Instant::now() < deadline,
                "emulator not listening on {host} after {EMULATOR_START:?}; log: {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, host, log }
    }

    pub fn config(&self) -> PubSubConfig {
        PubSubConfig {
            project: "sagaflow-test".into(),
            emulator_host: Some(self.host.clone()),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The emulator shared by the tests running now; started on first use and
/// killed when the last of them drops it.
pub fn emulator() -> Arc<Emulator> {
    static SHARED: Mutex<Weak<Emulator>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(emu) = shared.upgrade() {
        return emu;
    }
    let emu = Arc::new(Emulator::start());
    *shared = Arc::downgrade(&emu);
    emu
}

/// A fresh topic with one (unordered) subscription, and a subscriber on it.
pub async fn subscribe(
    cfg: &PubSubConfig,
    streams: usize,
) -> (String, EventSubscriber, mpsc::Receiver<ReceivedMessage>) {
    let topic = unique("events");
    let sub = unique("sub");
    ensure_topic(cfg, &topic).await.expect("creating topic");
    ensure_subscription(
        cfg,
        &SubscriptionSpec {
            id: sub.clone(),
            topic_id: topic.clone(),
            ordering: false,
            ack_deadline_secs: 60,
            dead_letter: None,
        },
    )
    .await
    .expect("creating subscription");
    let (subscriber, rx) = EventSubscriber::start(cfg, &sub, streams)
        .await
        .expect("starting subscriber");
    (topic, subscriber, rx)
}

/// What arrived on a subscription, by `event_id` attribute.
#[derive(Debug, Default)]
pub struct Inbox {
    pub by_event: HashMap<String, Received>,
    /// Deliveries beyond the first per event id.
    pub duplicates: usize,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    pub ordering_key: String,
}

impl Inbox {
    /// Ack messages into the inbox until `expected` distinct events arrived.
    pub async fn collect(
        &mut self,
        rx: &mut mpsc::Receiver<ReceivedMessage>,
        expected: usize,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.by_event.len() < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => self.add(m),
                Ok(None) => panic!("subscriber closed"),
                Err(_) => panic!(
                    "timed out after {timeout:?}: {} of {expected} events arrived",
                    self.by_event.len()
                ),
            }
        }
    }

    /// Ack whatever else arrives until `quiet` passes without a message.
    pub async fn drain(&mut self, rx: &mut mpsc::Receiver<ReceivedMessage>, quiet: Duration) {
        while let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
            self.add(m);
        }
    }

    fn add(&mut self, m: ReceivedMessage) {
        let event_id = m
            .attribute(outbox::attributes::EVENT_ID)
            .expect("event_id attribute")
            .to_owned();
        let r = Received {
            data: m.data.to_vec(),
            attributes: m.attributes.clone(),
            ordering_key: m.ordering_key.clone(),
        };
        m.ack();
        if self.by_event.insert(event_id, r).is_some() {
            self.duplicates += 1;
        }
    }
}

// ---------------------------------------------------------------- databases

/// A database created for one test and dropped (best effort) afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A new empty database (no outbox table).
    pub async fn empty() -> Self {
        let name = unique("sagaflow_relay_test");
        let url = testkit::create(&name)
            .await
            .expect("creating test database (is Postgres running on 127.0.0.1:5432?)");
        Self { name, url }
    }

    /// A new database with the outbox migration applied.
    pub async fn migrated() -> Self {
        let d = Self::empty().await;
        d.migrate().await;
        d
    }

    pub async fn migrate(&self) {
        let pool = db::pool(&self.url, 1).expect("pool");
        db::migrate(&pool, &[outbox::MIGRATION])
            .await
            .expect("applying the outbox migration");
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        db::connect(&self.url).await.expect("connecting")
    }

    /// Insert rows in transactions of up to 500.
    pub async fn insert(&self, rows: &[Event]) {
        let pool = db::pool(&self.url, 1).expect("a pool");
        let mut client = pool.get().await.expect("connecting");
        for chunk in rows.chunks(500) {
            let tx = client.transaction().await.expect("begin");
            for e in chunk {
                outbox::insert(
                    &tx,
                    e.event_id,
                    e.saga_id,
                    &e.event_type,
                    &e.payload,
                    e.traceparent.as_deref(),
                )
                .await
                .expect("inserting outbox row");
            }
            tx.commit().await.expect("commit");
        }
    }

    /// Transactions rolled back in this database so far (server statistics,
    /// updated about once a second).
    pub async fn rollbacks(&self) -> i64 {
        let client = db::connect(&format!("{}/postgres", testkit::server_url()))
            .await
            .expect("connecting to postgres");
        client
            .query_one(
                "SELECT xact_rollback FROM pg_stat_database WHERE datname = $1",
                &[&self.name],
            )
            .await
            .expect("reading pg_stat_database")
            .get(0)
    }

    /// Terminate every other session on this database (as a restart or a
    /// network cut would); returns their pids.
    pub async fn kill_other_connections(&self) -> Vec<i32> {
        let client = db::connect(&format!("{}/postgres", testkit::server_url()))
            .await
            .expect("connecting to postgres");
        // Two statements: in one, the planner may call pg_terminate_backend
        // before filtering on the database.
        let pids: Vec<i32> = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("listing sessions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
                &[&pids],
            )
            .await
            .expect("terminating sessions");
        pids
    }

    /// Pids of sessions on this database whose last statement was LISTEN.
    pub async fn listeners(&self) -> Vec<i32> {
        let client = db::connect(&format!("{}/postgres", testkit::server_url()))
            .await
            .expect("connecting to postgres");
        client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'",
                &[&self.name],
            )
            .await
            .expect("reading pg_stat_activity")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// One number from a query returning a single bigint.
    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        testkit::drop_now(vec![self.name.clone()]);
    }
}

/// An outbox event to insert.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: uuid::Uuid,
    pub saga_id: uuid::Uuid,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// `sagas × per_saga` events; every other saga carries a traceparent.
pub fn events(sagas: usize, per_saga: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(sagas * per_saga);
    for s in 0..sagas {
        let saga_id = uuid::Uuid::now_v7();
        let traceparent = (s % 2 == 0).then(|| {
            format!(
                "00-{}-{:016x}-01",
                uuid::Uuid::new_v4().simple(),
                rand_span_id()
            )
        });
        for n in 0..per_saga {
            out.push(Event {
                event_id: uuid::Uuid::now_v7(),
                saga_id,
                event_type: format!("Step{n}Done"),
                payload: format!("saga {saga_id} event {n}").into_bytes(),
                traceparent: traceparent.clone(),
            });
        }
    }
    out
}

fn rand_span_id() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 | 1
}

// ---------------------------------------------------------------- relay

/// Settings for a relay over `dbs` publishing to `topic` on the emulator.
pub fn relay_config(emu: &Emulator, dbs: &[&TestDb], topic: &str) -> RelayConfig {
    RelayConfig {
        database_urls: dbs.iter().map(|d| d.url.clone()).collect(),
        pubsub: emu.config(),
        topic_id: topic.to_owned(),
        batch_size: 100,
        poll_interval: Duration::from_millis(200),
        retention: Duration::from_secs(3600),
        cleanup_interval: Duration::from_secs(60),
        max_in_flight: 1000,
        publish_delay: Duration::from_millis(1),
        ordering_key: false,
        http_listen: None,
    }
}

/// A relay running in this process.
pub struct Relay {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    pub fn start(config: RelayConfig) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(outbox_relay::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    /// Cancel and wait (with a deadline) for a clean exit.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("relay failed: {e:#}"),
            Ok(Err(e)) => panic!("relay task panicked: {e}"),
            Err(_) => panic!("relay did not stop within 30 s of shutdown"),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
