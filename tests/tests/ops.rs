//! The operations side of every binary, on real processes:
//!
//! - after a small mixed run, `/metrics` of every process (parsed with a
//!   Prometheus text parser) agrees with what is known of the run: sagas
//!   started and finished by state, commands per participant on both ends,
//!   rows published, the sagas by state and the backlogs read from the
//!   databases; `/healthz` and `/readyz` answer 200 everywhere;
//! - gRPC reflection lists the orchestrator's services without a token and
//!   describes `PlaceOrder`, and lists a participant's over mutual TLS (and
//!   nothing without a client certificate);
//! - `/readyz` turns 503 when the database stops taking connections and 200
//!   again when it is back, and 503 during a SIGTERM drain.

use std::process::Stdio;
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value};
use prost::Message as _;
use sagaflow_protos::orchestrator::v1::SagaState;
use sagaflow_tests::orders::{Expect, mixed, order};
use sagaflow_tests::system::{self, Options, PARTICIPANTS, Peer, System};
use sagaflow_tests::{free_port, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SETTLE: Duration = Duration::from_secs(90);
const ORDERS: usize = 20;

// ------------------------------------------------------------------ HTTP

/// An HTTP/1.1 GET of `url` (`http://host:port/path`): status and body.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: not http://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
            .await??;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{url}: no end of headers in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{url}: no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            unchunk(body)?
        } else {
            body.to_owned()
        },
    ))
}

fn unchunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow::anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// One scrape of `/metrics`, parsed.
struct Metrics {
    samples: Vec<prometheus_parse::Sample>,
}

impl Metrics {
    /// Parse a scrape: every line must be a comment or a sample the parser
    /// recognises (it skips what it does not, so that is checked here).
    fn parse(text: &str) -> anyhow::Result<Metrics> {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let info = LineInfo::parse(line);
            let ok = match info {
                LineInfo::Doc { .. } | LineInfo::Type { .. } => true,
                LineInfo::Sample { .. } => !line.starts_with('#'),
                LineInfo::Empty | LineInfo::Ignored => false,
            };
            anyhow::ensure!(ok, "not a sample, HELP or TYPE line: {line:?}");
        }
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
        Ok(Metrics {
            samples: scrape.samples,
        })
    }

    /// The sum of the samples of `name` whose labels include `labels`
    /// (counters, gauges, untyped; histograms count their observations).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                Value::Summary(_) => 0.0,
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.metric == name)
    }
}

async fn scrape(sys: &System, name: &str) -> anyhow::Result<Metrics> {
    let url = format!("{}/metrics", sys.http_url(name)?);
    let (status, body) = get(&url).await?;
    anyhow::ensure!(status == 200, "{url}: {status} {body}");
    Metrics::parse(&body)
}

// ------------------------------------------------------------ reflection

/// The services a reflection server lists, sorted.
async fn list_services(channel: Channel) -> anyhow::Result<Vec<String>> {
    let answer = ask(channel, MessageRequest::ListServices(String::new())).await?;
    let MessageResponse::ListServicesResponse(list) = answer else {
        anyhow::bail!("unexpected answer {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    Ok(names)
}

async fn ask(channel: Channel, request: MessageRequest) -> anyhow::Result<MessageResponse> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    answer
        .message_response
        .ok_or_else(|| anyhow::anyhow!("an empty answer"))
}

/// The input type of `method` of `service`, from reflection.
async fn input_type(channel: Channel, service: &str, method: &str) -> anyhow::Result<String> {
    let answer = ask(
        channel,
        MessageRequest::FileContainingSymbol(service.to_owned()),
    )
    .await?;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        anyhow::bail!("unexpected answer {answer:?}");
    };
    let short = service.rsplit('.').next().unwrap_or(service);
    for raw in files.file_descriptor_proto {
        let file = prost_types::FileDescriptorProto::decode(raw.as_slice())?;
        for s in file.service.iter().filter(|s| s.name() == short) {
            if let Some(m) = s.method.iter().find(|m| m.name() == method) {
                return Ok(m.input_type().to_owned());
            }
        }
    }
    anyhow::bail!("{service}/{method} not described")
}

// ----------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_reflection_of_every_binary() -> anyhow::Result<()> {
    let mut sys = System::start("ops", Options::default()).await?;
    let everyone: Vec<String> = PARTICIPANTS
        .iter()
        .map(|p| (*p).to_owned())
        .chain(["relay".to_owned(), "orchestrator-0".to_owned()])
        .collect();
    for name in &everyone {
        let base = sys.http_url(name)?;
        let (status, body) = get(&format!("{base}/healthz")).await?;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{name} /healthz");
        wait_for(
            &format!("{name} /readyz 200"),
            Duration::from_secs(30),
            || {
                let url = format!("{base}/readyz");
                async move { Ok((get(&url).await?.0 == 200).then_some(())) }
            },
        )
        .await?;
    }

    // A small mixed run.
    let mut client = sys.client().await?;
    let mut ids = Vec::new();
    let mut expected = Vec::new();
    for i in 0..ORDERS {
        let (request, expect) = mixed(i);
        ids.push(client.place_order(request).await?.into_inner().saga_id);
        expected.push(expect);
    }
    let expected_n = |e: Expect| expected.iter().filter(|x| **x == e).count();
    let done = sys.wait_terminal(&ids, SETTLE).await?;
    let completed = done
        .iter()
        .filter(|s| s.state == SagaState::Completed as i32)
        .count();
    let compensated = done
        .iter()
        .filter(|s| s.state == SagaState::Compensated as i32)
        .count();
    assert_eq!(completed, expected_n(Expect::Completed));
    assert_eq!(compensated, ORDERS - completed);
    let payment_refused = expected_n(Expect::PaymentRefused);
    let stock_short = expected_n(Expect::StockShort);
    assert!(payment_refused > 0 && stock_short > 0, "{expected:?}");

    // Every event is published, and every Pub/Sub copy consumed (the fast
    // path applied them first: the copies are duplicates).
    let events: f64 = {
        let mut n = 0.0;
        for p in PARTICIPANTS {
            let m = scrape(&sys, p).await?;
            n += m.sum(
                "sagaflow_participant_commands_total",
                &[("outcome", "succeeded")],
            ) + m.sum(
                "sagaflow_participant_commands_total",
                &[("outcome", "refused")],
            );
        }
        n
    };
    let relay = wait_for("every event published and consumed", SETTLE, || {
        let sys = &sys;
        async move {
            let relay = scrape(sys, "relay").await?;
            let orchestrator = scrape(sys, "orchestrator-0").await?;
            let published = relay.sum("sagaflow_relay_rows_published_total", &[]);
            let consumed = ["events_applied", "events_duplicate", "events_ignored"]
                .iter()
                .map(|m| {
                    orchestrator.sum(
                        &format!("sagaflow_orchestrator_{m}_total"),
                        &[("path", "pubsub")],
                    )
                })
                .sum::<f64>();
            Ok((published >= events && consumed >= published).then_some(relay))
        }
    })
    .await?;

    // The relay: rows published, no backlog, a lag for every row.
    let published = relay.sum("sagaflow_relay_rows_published_total", &[]);
    assert!(
        published >= events,
        "published {published} < events {events}"
    );
    assert_eq!(relay.sum("sagaflow_relay_publish_errors_total", &[]), 0.0);
    assert_eq!(relay.sum("sagaflow_relay_outbox_backlog", &[]), 0.0);
    assert_eq!(
        relay.sum("sagaflow_relay_commit_to_ack_seconds_count", &[]),
        published
    );
    for db in [&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory] {
        let label = db.rsplit('/').next().unwrap_or(db);
        assert!(
            relay.sum(
                "sagaflow_relay_rows_published_total",
                &[("database", label)]
            ) > 0.0,
            "nothing published from {label}"
        );
        assert_eq!(
            relay.sum(
                "sagaflow_relay_listen_connections_up",
                &[("database", label)]
            ),
            1.0
        );
        assert!(relay.has("sagaflow_relay_outbox_oldest_unsent_seconds"));
    }

    // The orchestrator: sagas started and finished, as the run went.
    let m = scrape(&sys, "orchestrator-0").await?;
    let n = |name: &str, labels: &[(&str, &str)]| {
        m.sum(&format!("sagaflow_orchestrator_{name}"), labels)
    };
    assert_eq!(
        n("sagas_started_total", &[("saga_type", "order")]),
        ORDERS as f64
    );
    assert_eq!(
        n("sagas_finished_total", &[("state", "COMPLETED")]),
        completed as f64
    );
    assert_eq!(
        n("sagas_finished_total", &[("state", "COMPENSATED")]),
        compensated as f64
    );
    assert_eq!(n("saga_duration_seconds_count", &[]), ORDERS as f64);
    // Read from the database at scrape time.
    assert_eq!(n("sagas", &[("state", "COMPLETED")]), completed as f64);
    assert_eq!(n("sagas", &[("state", "COMPENSATED")]), compensated as f64);
    assert_eq!(n("sagas", &[("state", "RUNNING")]), 0.0);
    assert!(n("pubsub_streams_up", &[]) >= 1.0);
    assert!(m.has("sagaflow_orchestrator_watchers"));
    assert_eq!(n("dead_lettered_total", &[]), 0.0);
    // Every event was applied once, by the reply or by Pub/Sub.
    let applied = n("events_applied_total", &[]) + n("events_ignored_total", &[]);
    assert_eq!(
        applied, events,
        "events applied vs outcomes the participants recorded"
    );
    let fast_path = std::env::var("SAGAFLOW_FAST_PATH").map_or(true, |v| v != "false");
    if fast_path {
        // The replies applied first: their Pub/Sub copies were duplicates.
        assert!(n("events_duplicate_total", &[("path", "pubsub")]) > 0.0);
    }

    // Commands: sent by the orchestrator, handled by each participant.
    for p in PARTICIPANTS {
        let sent = n("commands_sent_total", &[("participant", p)]);
        let failed = n("commands_failed_total", &[("participant", p)]);
        let handled = scrape(&sys, p)
            .await?
            .sum("sagaflow_participant_commands_total", &[]);
        assert!(sent > 0.0, "no command sent to {p}");
        assert!(
            handled <= sent && handled >= sent - failed,
            "{p}: sent {sent}, failed {failed}, handled {handled}"
        );
    }
    assert_eq!(
        n("step_duration_seconds_count", &[]),
        n("commands_sent_total", &[])
    );

    // Each participant: its commands by method and outcome.
    let order_m = scrape(&sys, "order").await?;
    assert_eq!(
        order_m.sum(
            "sagaflow_participant_commands_total",
            &[("method", "CreateOrder"), ("outcome", "succeeded")]
        ),
        ORDERS as f64
    );
    assert_eq!(
        order_m.sum(
            "sagaflow_participant_commands_total",
            &[("method", "CancelOrder"), ("kind", "compensation")]
        ),
        compensated as f64
    );
    let payment_m = scrape(&sys, "payment").await?;
    assert_eq!(
        payment_m.sum(
            "sagaflow_participant_commands_total",
            &[("method", "ProcessPayment"), ("outcome", "refused")]
        ),
        payment_refused as f64
    );
    let inventory_m = scrape(&sys, "inventory").await?;
    assert_eq!(
        inventory_m.sum(
            "sagaflow_participant_commands_total",
            &[("method", "ReserveInventory"), ("outcome", "refused")]
        ),
        stock_short as f64
    );
    assert!(inventory_m.has("sagaflow_participant_command_duration_seconds_count"));

    // Reflection: the orchestrator's services, no token needed.
    let services = list_services(sys.orchestrator_channel(0)?).await?;
    for s in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "sagaflow.orchestrator.v1.SagaService",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} not in {services:?}");
    }
    assert_eq!(
        input_type(
            sys.orchestrator_channel(0)?,
            "sagaflow.orchestrator.v1.SagaService",
            "PlaceOrder"
        )
        .await?,
        ".sagaflow.orchestrator.v1.PlaceOrderRequest"
    );
    // A participant's, over mutual TLS (any certificate of the client CA;
    // reflection is not pinned), and nothing without a certificate.
    let services = list_services(sys.participant_channel("payment", Peer::Rogue)?).await?;
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "sagaflow.participant.v1.CommandLog",
            "sagaflow.participant.v1.PaymentService",
        ]
    );
    assert!(
        list_services(sys.participant_channel("payment", Peer::NoCertificate)?)
            .await
            .is_err()
    );

    // A drain: /readyz says so from the SIGTERM until the process is gone.
    // Payment is paused so that placements wait on their look-ups and the
    // orchestrator has RPCs to finish: of a customer no order of this run
    // has named, so no look-up is answered from the cache.
    sys.pause("payment")?;
    let placing: Vec<_> = (0..4)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.place_order(order("cust-bob", &[("sku-widget", 1)], 100))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readyz = format!("{}/readyz", sys.http_url("orchestrator-0")?);
    let sigterm = Instant::now();
    sys.sigterm("orchestrator-0")?;
    let mut seen = Vec::new();
    while sigterm.elapsed() < Duration::from_secs(15) {
        match get(&readyz).await {
            Ok((status, body)) => {
                if seen.last() != Some(&(status, body.clone())) {
                    seen.push((status, body));
                }
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sys.resume("payment")?;
    for p in placing {
        let _ = p.await;
    }
    let status = sys
        .wait_exit("orchestrator-0", Duration::from_secs(30))
        .await?;
    assert!(status.success(), "{status}");
    // Until the signal is handled it may still say ready; never after.
    let draining = seen
        .iter()
        .position(|(s, b)| *s == 503 && b == "draining: shutting down\n");
    assert!(
        draining.is_some_and(|i| seen[i..].iter().all(|(s, _)| *s == 503)),
        "/readyz after SIGTERM: {seen:?}"
    );
    Ok(())
}

/// Wait until `url` answers status `want`; its body.
async fn answers(url: &str, want: u16) -> anyhow::Result<String> {
    wait_for(
        &format!("{url} to answer {want}"),
        Duration::from_secs(30),
        || async move {
            Ok(match get(url).await {
                Ok((status, body)) if status == want => Some(body),
                _ => None,
            })
        },
    )
    .await
}

/// A participant alone over its own database: `/readyz` follows the
/// database, and the reason names it.
#[tokio::test]
async fn readyz_follows_the_database() -> anyhow::Result<()> {
    use sagaflow_common::testkit;
    let name = testkit::unique_name("sf_ops_ready");
    let url = testkit::create(&name).await?;
    let (grpc, http) = (free_port(), free_port());
    let mut child = system::binary("sagaflow-participant")?
        .arg("order")
        .env("SAGAFLOW_INSECURE", "true")
        .env("SAGAFLOW_ORDER_DATABASE_URL", &url)
        .env("SAGAFLOW_ORDER_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("SAGAFLOW_ORDER_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("SAGAFLOW_DB_POOL_SIZE", "2")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let readyz = format!("http://127.0.0.1:{http}/readyz");
    let admin =
        sagaflow_common::db::connect(&format!("{}/postgres", testkit::server_url())).await?;
    let result = async {
        let until = |want: u16| answers(&readyz, want);
        assert_eq!(until(200).await?, "ready\n");
        // The database stops taking connections; its sessions are ended.
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
            ))
            .await?;
        let why = until(503).await?;
        assert!(why.starts_with("not ready: database: "), "{why}");
        admin
            .batch_execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
            .await?;
        assert_eq!(until(200).await?, "ready\n");
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true;
             DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        ))
        .await;
    result
}
