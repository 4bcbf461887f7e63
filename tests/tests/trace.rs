//! One trace per saga, as an OTLP collector receives it: the five processes
//! export to a receiver this test runs (the collector's `TraceService` from
//! `opentelemetry-proto`, served with tonic), and for a happy saga, a saga
//! whose payment is refused and a saga whose orchestrator is SIGKILLed
//! mid-way, the test asserts:
//!
//! - every span tagged with the saga's id has one trace id, and every span
//!   of that trace belongs to the saga;
//! - every parent is present: one root (the `PlaceOrder` server span);
//! - spans from every service that took part, with the stable names, kinds
//!   and attributes of the RPC and messaging conventions (client and server
//!   spans per call, the relay's PRODUCER span under the participant that
//!   wrote the row, the orchestrator's CONSUMER span under it);
//! - a relay batch links to the saga's trace;
//! - the resumed saga stays in its own trace (a `saga.resume` span after the
//!   restart).
//!
//! And with the collector down, or no endpoint set, nothing fails and
//! nothing is exported.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sagaflow_protos::orchestrator::v1::{
    GetSagaRequest, PlaceOrderRequest, RetrySagaRequest, SagaState,
};
use sagaflow_tests::injector::hold_refunds;
use sagaflow_tests::orders::order;
use sagaflow_tests::otlp::{
    KIND_CLIENT, KIND_CONSUMER, KIND_INTERNAL, KIND_PRODUCER, KIND_SERVER, Received, Receiver,
};
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::{free_port, wait_for};

const SETTLE: Duration = Duration::from_secs(90);
/// Spans of a finished saga reach the receiver within this (its events may
/// come a little after it ends: the fast path finishes it on replies).
const EXPORTED: Duration = Duration::from_secs(45);

const ORCHESTRATOR: &str = "sagaflow-orchestrator";
const RELAY: &str = "sagaflow-outbox-relay";
const ALL: [&str; 5] = [
    ORCHESTRATOR,
    "sagaflow-order",
    "sagaflow-payment",
    "sagaflow-inventory",
    RELAY,
];

const API: &str = "sagaflow.orchestrator.v1.SagaService/";
const PLACE_ORDER: &str = "sagaflow.orchestrator.v1.SagaService/PlaceOrder";
const RETRY: &str = "sagaflow.orchestrator.v1.SagaService/RetrySaga";
const REFUND: &str = "sagaflow.participant.v1.PaymentService/RefundPayment";
const RELEASE: &str = "sagaflow.participant.v1.InventoryService/ReleaseInventory";
const CREATE: &str = "sagaflow.participant.v1.OrderService/CreateOrder";
const CANCEL: &str = "sagaflow.participant.v1.OrderService/CancelOrder";
const APPROVE: &str = "sagaflow.participant.v1.OrderService/ApproveOrder";
const CHARGE: &str = "sagaflow.participant.v1.PaymentService/ProcessPayment";
const RESERVE: &str = "sagaflow.participant.v1.InventoryService/ReserveInventory";

fn exporting(endpoint: String) -> Options {
    Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint),
            // Export soon after a span ends: the SIGKILL below must not
            // lose spans that ended before it.
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ],
        ..Options::default()
    }
}

fn happy() -> PlaceOrderRequest {
    order("cust-alice", &[("sku-widget", 1), ("sku-gadget", 1)], 1_500)
}

/// What one saga's trace must hold.
struct Wanted<'a> {
    services: &'a [&'a str],
    names: Vec<String>,
}

/// The saga's trace if it is complete and well formed, else what is wrong.
fn check_trace(
    all: &[Received],
    saga_id: &str,
    sys: &System,
    wanted: &Wanted<'_>,
) -> Result<Vec<Received>, String> {
    let tagged: Vec<&Received> = all
        .iter()
        .filter(|s| s.attr("saga.id") == Some(saga_id))
        .collect();
    let trace_ids: BTreeSet<&str> = tagged.iter().map(|s| s.trace_id.as_str()).collect();
    let trace_id = match trace_ids.len() {
        0 => return Err("no span of the saga received".to_owned()),
        1 => trace_ids.into_iter().next().unwrap().to_owned(),
        n => return Err(format!("the saga's spans are in {n} traces: {trace_ids:?}")),
    };
    let trace: Vec<Received> = all
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    for s in &trace {
        if s.attr("saga.id") != Some(saga_id) {
            return Err(format!(
                "span {} ({}) in the trace is not tagged with the saga: {:?}",
                s.name, s.service, s.attributes
            ));
        }
    }
    let by_id: HashMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let roots: Vec<&Received> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    if roots.len() != 1 || roots[0].name != PLACE_ORDER {
        let names: Vec<&str> = roots.iter().map(|s| s.name.as_str()).collect();
        return Err(format!("roots {names:?}; want one, {PLACE_ORDER}"));
    }
    for s in &trace {
        if !s.parent_span_id.is_empty() && !by_id.contains_key(s.parent_span_id.as_str()) {
            return Err(format!(
                "span {} ({}) has a parent {} not in the trace",
                s.name, s.service, s.parent_span_id
            ));
        }
    }
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for want in wanted.services {
        if !services.contains(want) {
            return Err(format!("no span from {want}; services {services:?}"));
        }
    }
    let names: HashSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    for want in &wanted.names {
        if !names.contains(want.as_str()) {
            let mut have: Vec<&str> = names.iter().copied().collect();
            have.sort_unstable();
            return Err(format!("no span named {want}; names {have:?}"));
        }
    }
    let parent_of = |s: &Received| by_id.get(s.parent_span_id.as_str()).copied();
    let send = format!("send {}", sys.topic);
    let process = format!("process {}", sys.subscription);
    for s in &trace {
        let attr = |k: &str| s.attr(k).unwrap_or_default();
        match s.kind {
            KIND_CLIENT => {
                // A command's call: under its command span.
                if attr("rpc.system") != "grpc"
                    || format!("{}/{}", attr("rpc.service"), attr("rpc.method")) != s.name
                    || attr("command.id").is_empty()
                    || attr("saga.step").is_empty()
                {
                    return Err(format!("client span {}: {:?}", s.name, s.attributes));
                }
                let p = parent_of(s).ok_or("client span without parent")?;
                if p.name != "saga.command" || p.attr("command.id") != s.attr("command.id") {
                    return Err(format!("client span {} under {}", s.name, p.name));
                }
            }
            KIND_SERVER
                if s.name == PLACE_ORDER
                    && (attr("rpc.system") != "grpc" || attr("saga.type") != "order") =>
            {
                return Err(format!("{PLACE_ORDER}: {:?}", s.attributes));
            }
            // The API's own spans (PlaceOrder, an operator's RetrySaga).
            KIND_SERVER
                if s.name.starts_with(API)
                    && (attr("rpc.system") != "grpc" || attr("rpc.grpc.status_code") != "0") =>
            {
                return Err(format!("{}: {:?}", s.name, s.attributes));
            }
            KIND_SERVER if s.name.starts_with(API) => {}
            KIND_SERVER => {
                // The participant's side of a call: under the client span of
                // the same method, with the command and the outcome.
                if attr("rpc.system") != "grpc"
                    || attr("command.id").is_empty()
                    || attr("saga.step").is_empty()
                    || attr("saga.type") != "order"
                    || attr("command.outcome").is_empty()
                    || attr("event.id").is_empty()
                    || attr("rpc.grpc.status_code") != "0"
                {
                    return Err(format!("server span {}: {:?}", s.name, s.attributes));
                }
                let p = parent_of(s).ok_or("server span without parent")?;
                if p.kind != KIND_CLIENT || p.name != s.name {
                    return Err(format!("server span {} under {}", s.name, p.name));
                }
            }
            KIND_PRODUCER => {
                if s.name != send
                    || s.service != RELAY
                    || attr("messaging.system") != "gcp_pubsub"
                    || attr("messaging.destination.name") != sys.topic
                    || attr("messaging.message.id").is_empty()
                    || attr("event.id").is_empty()
                {
                    return Err(format!("producer span {}: {:?}", s.name, s.attributes));
                }
                let p = parent_of(s).ok_or("producer span without parent")?;
                if p.kind != KIND_SERVER || p.service == ORCHESTRATOR {
                    return Err(format!("producer span under {} ({})", p.name, p.service));
                }
            }
            KIND_CONSUMER => {
                if s.name != process
                    || s.service != ORCHESTRATOR
                    || attr("messaging.system") != "gcp_pubsub"
                    || attr("messaging.destination.subscription.name") != sys.subscription
                    || attr("event.id").is_empty()
                    || attr("saga.outcome").is_empty()
                {
                    return Err(format!("consumer span {}: {:?}", s.name, s.attributes));
                }
                let p = parent_of(s).ok_or("consumer span without parent")?;
                if p.kind != KIND_PRODUCER || p.attr("event.id") != s.attr("event.id") {
                    return Err(format!("consumer span under {}", p.name));
                }
            }
            KIND_INTERNAL if s.name == "saga.command" => {
                for k in [
                    "saga.type",
                    "saga.step",
                    "command.id",
                    "saga.command.attempt",
                ] {
                    if attr(k).is_empty() {
                        return Err(format!("saga.command without {k}: {:?}", s.attributes));
                    }
                }
            }
            KIND_INTERNAL
                if s.name == "saga.transition"
                    && (attr("event.id").is_empty() || attr("saga.outcome").is_empty()) =>
            {
                return Err(format!("saga.transition: {:?}", s.attributes));
            }
            _ => {}
        }
    }
    // The relay's batch is a trace of its own that links to this one.
    let linked = all
        .iter()
        .any(|s| s.name == "relay.batch" && s.links.iter().any(|(t, _)| *t == trace_id));
    if !linked {
        return Err("no relay.batch span links to the trace".to_owned());
    }
    Ok(trace)
}

/// Wait until the saga's trace is complete, then return it.
async fn complete_trace(
    receiver: &Receiver,
    saga_id: &str,
    sys: &System,
    wanted: Wanted<'_>,
) -> anyhow::Result<Vec<Received>> {
    let deadline = tokio::time::Instant::now() + EXPORTED;
    loop {
        let last = match check_trace(&receiver.spans(), saga_id, sys, &wanted) {
            Ok(trace) => return Ok(trace),
            Err(e) => e,
        };
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("saga {saga_id}: its trace is not complete after {EXPORTED:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn describe(trace: &[Received]) -> String {
    let mut count: BTreeSet<(String, String)> = BTreeSet::new();
    for s in trace {
        count.insert((s.service.clone(), s.name.clone()));
    }
    format!(
        "{} spans, {} distinct (service, name)",
        trace.len(),
        count.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_saga_is_one_complete_trace_even_across_a_sigkill() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let mut sys = System::start("trace", exporting(receiver.endpoint())).await?;
    let mut client = sys.client().await?;
    let (topic, subscription) = (sys.topic.clone(), sys.subscription.clone());
    let pipeline = |extra: &[&str]| {
        let mut n = names(&[
            PLACE_ORDER,
            "saga.command",
            "saga.transition",
            "participant.inbox",
            "participant.decide",
            "participant.outbox",
        ]);
        n.push(format!("send {topic}"));
        n.extend(names(extra));
        n
    };
    let consumed = format!("process {subscription}");

    // A happy saga and one whose payment is refused.
    let ok = client.place_order(happy()).await?.into_inner().saga_id;
    let refused = client
        .place_order(order("cust-broke", &[("sku-widget", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    let done = sys
        .wait_terminal(&[ok.clone(), refused.clone()], SETTLE)
        .await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    assert_eq!(done[1].state, SagaState::Compensated as i32);

    let trace = complete_trace(
        &receiver,
        &ok,
        &sys,
        Wanted {
            services: &ALL,
            names: [
                pipeline(&[CREATE, CHARGE, RESERVE, APPROVE]),
                vec![consumed.clone()],
            ]
            .concat(),
        },
    )
    .await?;
    println!("trace: happy saga {ok}: {}", describe(&trace));

    let trace = complete_trace(
        &receiver,
        &refused,
        &sys,
        Wanted {
            // Inventory never hears of it: payment refuses first.
            services: &[ORCHESTRATOR, "sagaflow-order", "sagaflow-payment", RELAY],
            names: [pipeline(&[CREATE, CHARGE, CANCEL]), vec![consumed.clone()]].concat(),
        },
    )
    .await?;
    let refusal = trace
        .iter()
        .find(|s| s.name == CHARGE && s.kind == KIND_SERVER)
        .expect("the payment's server span");
    assert_eq!(refusal.attr("command.outcome"), Some("refused"));
    assert!(
        trace.iter().any(
            |s| s.name == "saga.command" && s.attr("saga.command.kind") == Some("compensation")
        ),
        "the compensation's command span"
    );
    println!("trace: refused saga {refused}: {}", describe(&trace));

    // An operator's retry is in the saga's trace, and what it sets off
    // hangs under it: a refund refused while the customer's refunds are
    // held pauses the saga; released and retried, the saga ends.
    hold_refunds(&sys, "cust-bob", true).await?;
    let paused = client
        .place_order(order("cust-bob", &[("sku-soldout", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    let done = sys
        .wait_terminal(std::slice::from_ref(&paused), SETTLE)
        .await?;
    assert_eq!(
        done[0].state,
        SagaState::CompensationFailed as i32,
        "{:?}",
        done[0]
    );
    hold_refunds(&sys, "cust-bob", false).await?;
    client
        .retry_saga(RetrySagaRequest {
            saga_id: paused.clone(),
            request_id: "trace-retry".to_owned(),
            reason: "refunds released".to_owned(),
        })
        .await?;
    wait_for("the retried saga to be compensated", SETTLE, || {
        let mut client = client.clone();
        let saga_id = paused.clone();
        async move {
            let saga = client
                .get_saga(GetSagaRequest { saga_id })
                .await?
                .into_inner();
            Ok((saga.state == SagaState::Compensated as i32).then_some(()))
        }
    })
    .await?;
    let trace = complete_trace(
        &receiver,
        &paused,
        &sys,
        Wanted {
            services: &[ORCHESTRATOR, "sagaflow-order", "sagaflow-payment", RELAY],
            names: [
                pipeline(&[CREATE, CHARGE, RESERVE, REFUND, CANCEL, RETRY]),
                vec![consumed.clone()],
            ]
            .concat(),
        },
    )
    .await?;
    let retry = trace
        .iter()
        .find(|s| s.name == RETRY)
        .expect("checked above");
    assert_eq!(retry.kind, KIND_SERVER);
    assert!(
        trace.iter().any(|s| s.name == "saga.command"
            && s.parent_span_id == retry.span_id
            && s.attr("saga.step") == Some("process_payment")),
        "the refund the retry re-sends hangs under RetrySaga"
    );
    assert!(
        !trace.iter().any(|s| s.name == RELEASE),
        "nothing was reserved, so nothing is released"
    );
    println!("trace: retried saga {paused}: {}", describe(&trace));

    // A saga whose orchestrator is SIGKILLed mid-way. Without the fast path
    // and with the relay stopped, the saga waits for CreateOrder's event
    // with no span of it open in the orchestrator; the kill comes once all
    // that ended is exported.
    sys.set_process_env("orchestrator-0", &[("SAGAFLOW_FAST_PATH", "false")]);
    sys.restart_gracefully("orchestrator-0").await?;
    sys.kill("relay");
    let mut client = sys.client().await?;
    let resumed = client.place_order(happy()).await?.into_inner().saga_id;
    wait_for("CreateOrder's spans exported", EXPORTED, || {
        let spans = receiver.spans();
        let resumed = resumed.clone();
        async move {
            let of = |service: &str, name: &str| {
                spans.iter().any(|s| {
                    s.attr("saga.id") == Some(resumed.as_str())
                        && s.service == service
                        && s.name == name
                })
            };
            Ok((of(ORCHESTRATOR, PLACE_ORDER)
                && of(ORCHESTRATOR, "saga.command")
                && of(ORCHESTRATOR, CREATE)
                && of("sagaflow-order", CREATE))
            .then_some(()))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sys.kill("orchestrator-0");
    let killed_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    sys.set_process_env("orchestrator-0", &[]);
    sys.restart("orchestrator-0").await?;
    // The relay after the orchestrator: a message the emulator handed to
    // the dead instance's stream would wait out its ack deadline.
    sys.spawn("relay")?;
    let done = sys
        .wait_terminal(std::slice::from_ref(&resumed), SETTLE)
        .await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    let trace = complete_trace(
        &receiver,
        &resumed,
        &sys,
        Wanted {
            services: &ALL,
            // Its events' CONSUMER spans are checked when they are there,
            // not awaited: the fast path finishes it on replies, and the
            // emulator may have handed its events to the killed instance's
            // stream, to come back after the ack deadline or later.
            names: pipeline(&[CREATE, CHARGE, RESERVE, APPROVE, "saga.resume"]),
        },
    )
    .await?;
    let resume = trace
        .iter()
        .find(|s| s.name == "saga.resume")
        .expect("checked above");
    assert!(
        resume.start_unix_nano > killed_at,
        "saga.resume comes from the restarted orchestrator"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.name == CHARGE && s.kind == KIND_CLIENT && s.start_unix_nano > killed_at),
        "the restarted orchestrator's commands are in the saga's trace"
    );
    println!("trace: resumed saga {resumed}: {}", describe(&trace));

    let dead: Vec<_> = sys.reap();
    assert!(dead.is_empty(), "processes died: {dead:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_collector_or_no_endpoint_fails_nothing_and_exports_nothing() -> anyhow::Result<()> {
    // The OTLP default endpoint: were an exporter built without an
    // endpoint, it would send here.
    let default = Receiver::start_on(4317).await?;
    // A collector that is down: nothing listens on this port.
    let down = free_port();
    let mut sys = System::start("notrace", exporting(format!("http://127.0.0.1:{down}"))).await?;
    // The relay has no endpoint at all.
    sys.set_process_env("relay", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]);
    sys.restart("relay").await?;
    let mut client = sys.client().await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let req = if i % 2 == 0 {
            happy()
        } else {
            order("cust-broke", &[("sku-widget", 1)], 1_000)
        };
        ids.push(client.place_order(req).await?.into_inner().saga_id);
    }
    let done = sys.wait_terminal(&ids, SETTLE).await?;
    for (i, saga) in done.iter().enumerate() {
        let want = if i % 2 == 0 {
            SagaState::Completed
        } else {
            SagaState::Compensated
        };
        assert_eq!(saga.state, want as i32, "saga {}", saga.saga_id);
    }
    // Batches go out every 100 ms: give them time to (fail to) go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead: Vec<_> = sys.reap();
    assert!(dead.is_empty(), "processes died: {dead:?}");
    assert_eq!(
        default.requests(),
        0,
        "nothing is exported where no endpoint is set"
    );
    println!(
        "trace: {} sagas finished with the collector down; the default endpoint got {} requests",
        ids.len(),
        default.requests()
    );
    Ok(())
}
