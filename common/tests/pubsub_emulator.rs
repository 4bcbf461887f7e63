//! `sagaflow_common::pubsub` against the real Pub/Sub emulator.
//!
//! Each test uses unique topic and subscription names. Tests running at the
//! same time share one emulator process; it is killed (with its process
//! group: the launcher is a shell script that starts java) when the last test
//! using it finishes.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sagaflow_common::pubsub::{
    EventPublisher, EventSubscriber, OutgoingMessage, PubSubConfig, ReceivedMessage,
    SubscriptionSpec, ensure_subscription, ensure_topic,
};
use tokio::sync::mpsc;

const EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// How long the emulator may take to accept connections (≈3–5 s when idle;
/// generous because tests and builds share the machine).
const EMULATOR_START: Duration = Duration::from_secs(60);

/// A running emulator, killed with its process group on drop.
struct Emulator {
    child: Child,
    host: String,
    log: PathBuf,
}

impl Emulator {
    /// Launch the emulator on a free port without waiting for it.
    fn spawn() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("finding a free port")
            .port();
        let log = std::env::temp_dir().join(format!("sagaflow-pubsub-emulator-{port}.log"));
        let out = File::create(&log).expect("creating the emulator log");
        let err = out.try_clone().expect("cloning the emulator log handle");
        let child = Command::new(EMULATOR)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {EMULATOR}: {e}"));
        Self {
            child,
            host: format!("127.0.0.1:{port}"),
            log,
        }
    }

    /// Launch the emulator and wait until it accepts TCP connections.
    fn start() -> Self {
        let mut emu = Self::spawn();
        let deadline = Instant::now() + EMULATOR_START;
        loop {
            if TcpStream::connect(&emu.host).is_ok() {
                return emu;
            }
            if let Ok(Some(status)) = emu.child.try_wait() {
                panic!("emulator exited with {status}; log: {}", emu.log.display());
            }
            assert!(
                Instant::now() < deadline,
                "emulator not listening on {} after {EMULATOR_START:?}; log: {}",
                emu.host,
                emu.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn config(&self) -> PubSubConfig {
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
        // The process group id is the launcher's pid (process_group(0)).
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The emulator shared by the tests running now; started on first use.
fn emulator() -> Arc<Emulator> {
    static SHARED: Mutex<Weak<Emulator>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(emu) = shared.upgrade() {
        return emu;
    }
    let emu = Arc::new(Emulator::start());
    *shared = Arc::downgrade(&emu);
    emu
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sagaflow_common=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The next message, or a panic naming `what` after `within`.
async fn next(
    rx: &mut mpsc::Receiver<ReceivedMessage>,
    within: Duration,
    what: &str,
) -> ReceivedMessage {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("subscriber closed while waiting for {what}"),
        Err(_) => panic!("no message within {within:?} while waiting for {what}"),
    }
}

fn spec(id: &str, topic_id: &str, ordering: bool) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        topic_id: topic_id.into(),
        ordering,
        ack_deadline_secs: 10,
        dead_letter: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_arrive_with_data_attributes_and_key_order() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let (topic, sub) = (unique("topic"), unique("sub"));

    ensure_topic(&cfg, &topic).await.expect("creating topic");
    ensure_topic(&cfg, &topic)
        .await
        .expect("topic creation is idempotent");
    ensure_subscription(&cfg, &spec(&sub, &topic, true))
        .await
        .expect("creating subscription");
    ensure_subscription(&cfg, &spec(&sub, &topic, true))
        .await
        .expect("subscription creation is idempotent");

    let (subscriber, mut rx) = EventSubscriber::start(&cfg, &sub, 2)
        .await
        .expect("starting subscriber");
    let publisher = Arc::new(
        EventPublisher::new(&cfg, &topic, 16)
            .await
            .expect("building publisher"),
    );

    // 10 keys × 30 messages: keys publish concurrently, each key in order.
    const KEYS: usize = 10;
    const PER_KEY: usize = 30;
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..PER_KEY {
                let msg = OutgoingMessage {
                    data: format!("key-{k} message-{n}").into_bytes(),
                    ordering_key: format!("key-{k}"),
                    attributes: vec![("n".into(), n.to_string()), ("kind".into(), "test".into())],
                };
                ids.push(publisher.publish(msg).await.expect("publishing"));
            }
            ids
        }));
    }
    let mut message_ids = Vec::new();
    for t in tasks {
        message_ids.extend(t.await.expect("publisher task"));
    }
    assert_eq!(message_ids.len(), KEYS * PER_KEY);

    // Receive everything; remember the first-seen order per key.
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut received = 0;
    let mut duplicates = 0;
    while received < KEYS * PER_KEY {
        let m = next(&mut rx, Duration::from_secs(30), "published messages").await;
        let n: usize = m.attribute("n").expect("n attribute").parse().expect("n");
        assert_eq!(m.attribute("kind"), Some("test"));
        assert_eq!(
            m.data.as_ref(),
            format!("{} message-{n}", m.ordering_key).as_bytes()
        );
        assert!(message_ids.contains(&m.message_id));
        assert!(m.publish_time.is_some());
        let order = seen.entry(m.ordering_key.clone()).or_default();
        if order.contains(&n) {
            duplicates += 1;
        } else {
            order.push(n);
            received += 1;
        }
        m.ack();
    }
    assert_eq!(seen.len(), KEYS);
    for (key, order) in &seen {
        let expected: Vec<usize> = (0..PER_KEY).collect();
        assert_eq!(order, &expected, "messages of {key} out of order");
    }
    eprintln!("received {received} messages ({duplicates} redelivered duplicates)");

    drop(rx);
    subscriber.shutdown().await;
    Arc::try_unwrap(publisher)
        .expect("publisher tasks finished")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_redelivered() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let (topic, sub) = (unique("topic"), unique("sub"));
    ensure_topic(&cfg, &topic).await.expect("creating topic");
    ensure_subscription(&cfg, &spec(&sub, &topic, false))
        .await
        .expect("creating subscription");
    let (subscriber, mut rx) = EventSubscriber::start(&cfg, &sub, 1)
        .await
        .expect("starting subscriber");
    let publisher = EventPublisher::new(&cfg, &topic, 4)
        .await
        .expect("building publisher");
    let id = publisher
        .publish(OutgoingMessage {
            data: b"again".to_vec(),
            ..Default::default()
        })
        .await
        .expect("publishing");

    let first = next(&mut rx, Duration::from_secs(20), "first delivery").await;
    assert_eq!(first.message_id, id);
    first.nack();
    let second = next(&mut rx, Duration::from_secs(20), "redelivery").await;
    assert_eq!(second.message_id, id);
    assert_eq!(second.data.as_ref(), b"again");
    second.ack();

    // Acked: nothing more arrives within a couple of delivery cycles.
    let extra = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(extra.is_err(), "unexpected delivery after ack: {extra:?}");

    drop(rx);
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nacked_too_often_lands_on_the_dead_letter_topic() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let (topic, sub) = (unique("topic"), unique("sub"));
    let (dead_topic, dead_sub) = (unique("dead-topic"), unique("dead-sub"));
    ensure_topic(&cfg, &topic).await.expect("creating topic");
    ensure_topic(&cfg, &dead_topic)
        .await
        .expect("creating dead-letter topic");
    ensure_subscription(&cfg, &spec(&dead_sub, &dead_topic, false))
        .await
        .expect("creating dead-letter subscription");
    ensure_subscription(
        &cfg,
        &SubscriptionSpec {
            dead_letter: Some((dead_topic.clone(), 5)),
            ..spec(&sub, &topic, false)
        },
    )
    .await
    .expect("creating subscription with dead-letter policy");

    let (subscriber, mut rx) = EventSubscriber::start(&cfg, &sub, 1)
        .await
        .expect("starting subscriber");
    let (dead_subscriber, mut dead_rx) = EventSubscriber::start(&cfg, &dead_sub, 1)
        .await
        .expect("starting dead-letter subscriber");
    let publisher = EventPublisher::new(&cfg, &topic, 4)
        .await
        .expect("building publisher");
    publisher
        .publish(OutgoingMessage {
            data: b"poison".to_vec(),
            ordering_key: String::new(),
            attributes: vec![("event_id".into(), "e-1".into())],
        })
        .await
        .expect("publishing");

    let mut attempts = Vec::new();
    for _ in 0..5 {
        let m = next(&mut rx, Duration::from_secs(20), "a delivery to nack").await;
        assert_eq!(m.data.as_ref(), b"poison");
        attempts.push(m.delivery_attempt);
        m.nack();
    }
    assert_eq!(
        attempts,
        (1..=5).map(Some).collect::<Vec<_>>(),
        "delivery attempts count up on a dead-lettering subscription"
    );

    let dead = next(&mut dead_rx, Duration::from_secs(30), "the dead letter").await;
    assert_eq!(dead.data.as_ref(), b"poison");
    assert_eq!(dead.attribute("event_id"), Some("e-1"));
    dead.ack();
    let extra = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(
        extra.is_err(),
        "dead-lettered message delivered again: {extra:?}"
    );

    drop(rx);
    subscriber.shutdown().await;
    drop(dead_rx);
    dead_subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_waits_for_an_emulator_that_is_still_starting() {
    init_logs();
    // Not `emulator()`: this one must still be starting when we call it.
    let emu = Emulator::spawn();
    let cfg = emu.config();
    let topic = unique("topic");
    let started = Instant::now();
    ensure_topic(&cfg, &topic)
        .await
        .expect("ensure_topic retries while the emulator starts");
    ensure_subscription(&cfg, &spec(&unique("sub"), &topic, false))
        .await
        .expect("creating subscription");
    eprintln!("emulator ready after {:?}", started.elapsed());

    // A subscription that does not exist: the subscriber keeps retrying
    // (logging) instead of failing, and shuts down cleanly.
    let (subscriber, mut rx) = EventSubscriber::start(&cfg, "no-such-subscription", 1)
        .await
        .expect("starting subscriber");
    let got = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(got.is_err(), "no message expected: {got:?}");
    drop(rx);
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_just_before_shutdown_are_not_lost() {
    init_logs();
    let emu = emulator();
    let cfg = emu.config();
    let (topic, sub) = (unique("topic"), unique("sub"));
    ensure_topic(&cfg, &topic).await.expect("creating topic");
    ensure_subscription(&cfg, &spec(&sub, &topic, false))
        .await
        .expect("creating subscription");
    let publisher = EventPublisher::new(&cfg, &topic, 64)
        .await
        .expect("building publisher");
    const N: usize = 50;
    let publishes = (0..N).map(|n| {
        publisher.publish(OutgoingMessage {
            data: n.to_string().into_bytes(),
            ..Default::default()
        })
    });
    for r in futures::future::join_all(publishes).await {
        r.expect("publishing");
    }

    let (subscriber, mut rx) = EventSubscriber::start(&cfg, &sub, 2)
        .await
        .expect("starting subscriber");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        let m = next(&mut rx, Duration::from_secs(20), "published messages").await;
        seen.insert(m.message_id.clone());
        m.ack();
    }
    // Shut down right after the last ack.
    drop(rx);
    subscriber.shutdown().await;

    // A lost ack would show up as a redelivery once the 10 s ack deadline
    // passes.
    let (subscriber, mut rx) = EventSubscriber::start(&cfg, &sub, 1)
        .await
        .expect("restarting subscriber");
    let redelivered = tokio::time::timeout(Duration::from_secs(13), rx.recv()).await;
    assert!(
        redelivered.is_err(),
        "an acked message came back: {redelivered:?}"
    );
    drop(rx);
    subscriber.shutdown().await;
    publisher.shutdown().await;
}
