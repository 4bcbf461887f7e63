//! End to end, on real processes: PlaceOrder over gRPC → participants →
//! outboxes → relay → Pub/Sub emulator → orchestrator, to a terminal state.

use std::time::{Duration, Instant};

use prost::Message as _;
use sagaflow_common::db;
use sagaflow_protos::events::v1::EventEnvelope;
use sagaflow_protos::orchestrator::v1::{
    GetSagaRequest, ListSagasRequest, PlaceOrderRequest, SagaState,
};
use sagaflow_tests::business::{available, order_status, payment_status, stock};
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::order;
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::{invariants, wait_for};

/// A change that makes a good request bad.
type Mutation = Box<dyn Fn(&mut PlaceOrderRequest)>;

const SETTLE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_saga_outcomes_end_to_end() -> anyhow::Result<()> {
    let sys = System::start("e2e", Options::default()).await?;
    let mut client = sys.client().await?;
    let widget_before = stock(&sys.dbs, "sku-widget").await?;
    let soldout_before = stock(&sys.dbs, "sku-soldout").await?;
    let alice_before = available(&sys.dbs, "cust-alice").await?;

    let happy = client
        .place_order(order("cust-alice", &[("sku-widget", 2)], 2_500))
        .await?
        .into_inner();
    let refused = client
        .place_order(order("cust-broke", &[("sku-widget", 1)], 1_000))
        .await?
        .into_inner();
    let short = client
        .place_order(order("cust-alice", &[("sku-soldout", 1)], 700))
        .await?
        .into_inner();
    assert!(happy.created && refused.created && short.created);
    // PlaceOrder answers at once; the saga runs after.
    assert_eq!(happy.state, SagaState::Running as i32);

    let ids = vec![
        happy.saga_id.clone(),
        refused.saga_id.clone(),
        short.saga_id.clone(),
    ];
    let done = sys.wait_terminal(&ids, SETTLE).await?;

    // Happy path: order APPROVED, payment CHARGED, stock decremented, COMPLETED.
    let saga_id = happy.saga_id.clone();
    assert_eq!(done[0].state, SagaState::Completed as i32, "{:?}", done[0]);
    assert!(
        done[0].steps.iter().all(|s| s.status == "SUCCEEDED"),
        "{:?}",
        done[0].steps
    );
    assert_eq!(
        order_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("APPROVED")
    );
    assert_eq!(
        payment_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("CHARGED")
    );

    // Payment refused: order CANCELLED, no charge, COMPENSATED.
    let saga_id = refused.saga_id.clone();
    assert_eq!(
        done[1].state,
        SagaState::Compensated as i32,
        "{:?}",
        done[1]
    );
    assert!(
        done[1].reason.contains("credit_limit_exceeded"),
        "{}",
        done[1].reason
    );
    assert_eq!(
        order_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("CANCELLED")
    );
    assert_ne!(
        payment_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("CHARGED")
    );
    assert_eq!(done[1].steps[1].status, "REFUSED");
    assert_eq!(done[1].steps[0].status, "COMPENSATED");
    assert_eq!(done[1].steps[2].status, "NOT_STARTED");

    // Stock short: payment REFUNDED, order CANCELLED, stock unchanged, COMPENSATED.
    let saga_id = short.saga_id.clone();
    assert_eq!(
        done[2].state,
        SagaState::Compensated as i32,
        "{:?}",
        done[2]
    );
    assert!(done[2].reason.contains("stock_short"), "{}", done[2].reason);
    assert_eq!(
        payment_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("REFUNDED")
    );
    assert_eq!(
        order_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(stock(&sys.dbs, "sku-soldout").await?, soldout_before);

    // Money and stock: only the happy order's effects remain.
    assert_eq!(stock(&sys.dbs, "sku-widget").await?, widget_before - 2);
    assert_eq!(
        available(&sys.dbs, "cust-alice").await?,
        alice_before - 2_500
    );
    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    assert!(report.ok(), "{:?}", report.violations);

    // History: sequence-numbered, gap-free, ending in the terminal state.
    let full = client
        .get_saga(GetSagaRequest {
            saga_id: short.saga_id.clone(),
        })
        .await?
        .into_inner();
    let seqs: Vec<u64> = full.history.iter().map(|h| h.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        full.history.last().unwrap().state,
        SagaState::Compensated as i32
    );
    let kinds: Vec<&str> = full.history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "placed",
            "step_succeeded",
            "step_succeeded",
            "step_refused",
            "step_compensated",
            "step_compensated"
        ]
    );

    // Trace context: every outbox row of the saga carries a traceparent of
    // the saga's trace.
    assert_eq!(full.trace_id.len(), 32, "saga has a trace id");
    let id = uuid::Uuid::parse_str(&short.saga_id)?;
    for url in [&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory] {
        let c = db::connect(url).await?;
        for row in c
            .query(
                "SELECT traceparent, payload FROM outbox WHERE saga_id = $1",
                &[&id],
            )
            .await?
        {
            let tp: Option<String> = row.get(0);
            let tp = tp.expect("outbox row has a traceparent");
            assert_eq!(tp.split('-').nth(1), Some(full.trace_id.as_str()), "{tp}");
            let env = EventEnvelope::decode(row.get::<_, Vec<u8>>(1).as_slice())?;
            assert_eq!(env.saga_id, short.saga_id);
        }
    }
    Ok(())
}

async fn count(url: &str, table: &str) -> anyhow::Result<i64> {
    let c = db::connect(url).await?;
    Ok(c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_placement_is_idempotent() -> anyhow::Result<()> {
    let sys = System::start("input", Options::default()).await?;
    let mut client = sys.client().await?;

    let good = order("cust-alice", &[("sku-widget", 1)], 1_000);
    let cases: Vec<(&str, Mutation)> = vec![
        ("idempotency_key", Box::new(|r| r.idempotency_key.clear())),
        ("customer_id", Box::new(|r| r.customer_id.clear())),
        ("items", Box::new(|r| r.items.clear())),
        ("items[0].sku", Box::new(|r| r.items[0].sku.clear())),
        ("items[0].quantity", Box::new(|r| r.items[0].quantity = 0)),
        ("items[0].quantity", Box::new(|r| r.items[0].quantity = -2)),
        ("amount_cents", Box::new(|r| r.amount_cents = 0)),
        ("amount_cents", Box::new(|r| r.amount_cents = -100)),
        ("currency", Box::new(|r| r.currency = "euros".into())),
        (
            "items[0].sku",
            Box::new(|r| r.items[0].sku = "sku-does-not-exist".into()),
        ),
        // What an attacker would try: control characters, NUL bytes, huge
        // numbers, made-up codes, unbounded strings, unknown parties.
        (
            "idempotency_key",
            Box::new(|r| r.idempotency_key = "k\0ey".into()),
        ),
        (
            "idempotency_key",
            Box::new(|r| r.idempotency_key = "k\ney".into()),
        ),
        (
            "idempotency_key",
            Box::new(|r| r.idempotency_key = "\u{1b}[31mred".into()),
        ),
        (
            "customer_id",
            Box::new(|r| r.customer_id = "cust-\0alice".into()),
        ),
        (
            "items[0].sku",
            Box::new(|r| r.items[0].sku = "sku-\0widget".into()),
        ),
        ("amount_cents", Box::new(|r| r.amount_cents = 1 << 48)),
        ("amount_cents", Box::new(|r| r.amount_cents = i64::MAX)),
        (
            "items[0].quantity",
            Box::new(|r| r.items[0].quantity = 1 << 48),
        ),
        ("currency", Box::new(|r| r.currency = "ZZZ".into())),
        ("currency", Box::new(|r| r.currency = "Z".repeat(1 << 20))),
        (
            "items",
            Box::new(|r| {
                r.items = (0..101)
                    .map(|i| sagaflow_protos::participant::v1::OrderItem {
                        sku: format!("sku-{i}"),
                        quantity: 1,
                    })
                    .collect()
            }),
        ),
        (
            "customer_id",
            Box::new(|r| r.customer_id = "cust-nobody".into()),
        ),
    ];
    for (field, mutate) in &cases {
        let mut req = good.clone();
        mutate(&mut req);
        let err = client.place_order(req).await.expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{:?} should name {field}",
            err.message()
        );
        assert!(err.message().len() < 200, "{field}: input echoed unbounded");
    }
    // Nothing was written anywhere.
    assert_eq!(count(&sys.dbs.orchestrator, "sagas").await?, 0);
    assert_eq!(count(&sys.dbs.order, "inbox").await?, 0);
    assert_eq!(count(&sys.dbs.payment, "inbox").await?, 0);

    // The same key and payload: the same saga.
    let first = client.place_order(good.clone()).await?.into_inner();
    let again = client.place_order(good.clone()).await?.into_inner();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.saga_id, again.saga_id);
    // The same key with another payload is refused, naming the key.
    let mut other = good.clone();
    other.amount_cents += 1;
    let err = client
        .place_order(other)
        .await
        .expect_err("different payload");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(
        err.message().starts_with("idempotency_key"),
        "{}",
        err.message()
    );
    assert_eq!(count(&sys.dbs.orchestrator, "sagas").await?, 1);

    // GetSaga: unknown → NOT_FOUND; malformed → INVALID_ARGUMENT.
    let err = client
        .get_saga(GetSagaRequest {
            saga_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown saga");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .get_saga(GetSagaRequest {
            saga_id: "nope".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("saga_id"));

    // ListSagas: filters by state, pages without gaps or repeats.
    let mut ids = vec![first.saga_id.clone()];
    for _ in 0..6 {
        ids.push(
            client
                .place_order(order("cust-alice", &[("sku-gadget", 1)], 500))
                .await?
                .into_inner()
                .saga_id,
        );
    }
    ids.push(
        client
            .place_order(order("cust-broke", &[("sku-gadget", 1)], 500))
            .await?
            .into_inner()
            .saga_id,
    );
    sys.wait_terminal(&ids, SETTLE).await?;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_sagas(ListSagasRequest {
                states: vec![],
                page_size: 3,
                page_token: token,
            })
            .await?
            .into_inner();
        assert!(page.sagas.len() <= 3);
        seen.extend(page.sagas.into_iter().map(|s| s.saga_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    sorted_seen.dedup();
    assert_eq!(
        sorted_seen.len(),
        ids.len(),
        "every saga exactly once: {seen:?}"
    );
    let compensated = client
        .list_sagas(ListSagasRequest {
            states: vec![SagaState::Compensated as i32],
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(compensated.sagas.len(), 1);
    assert_eq!(compensated.sagas[0].saga_id, ids[7]);
    let err = client
        .list_sagas(ListSagasRequest {
            states: vec![],
            page_size: 0,
            page_token: "garbage".into(),
        })
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("page_token"));
    // A token with a time no page could start after: refused, not a
    // storage error.
    for token in [
        format!("-8000000000000000000.{}", uuid::Uuid::now_v7().simple()),
        format!("9223372036854775807.{}", uuid::Uuid::now_v7().simple()),
    ] {
        let err = client
            .list_sagas(ListSagasRequest {
                states: vec![],
                page_size: 0,
                page_token: token,
            })
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("page_token: "), "{err:?}");
    }
    // Suspended sagas can be listed (none here).
    let suspended = client
        .list_sagas(ListSagasRequest {
            states: vec![SagaState::Suspended as i32],
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert!(suspended.sagas.is_empty());
    // An operator's reason and request id follow the same rules.
    for (req, field) in [
        (
            sagaflow_protos::orchestrator::v1::CancelSagaRequest {
                saga_id: ids[1].clone(),
                reason: "oops\0".into(),
                request_id: String::new(),
            },
            "reason",
        ),
        (
            sagaflow_protos::orchestrator::v1::CancelSagaRequest {
                saga_id: ids[1].clone(),
                reason: "why".into(),
                request_id: "r\n1".into(),
            },
            "request_id",
        ),
        (
            sagaflow_protos::orchestrator::v1::CancelSagaRequest {
                saga_id: ids[1].clone(),
                reason: "x".repeat(1 << 20),
                request_id: String::new(),
            },
            "reason",
        ),
    ] {
        let err = client.cancel_saga(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(&format!("{field}: ")), "{err:?}");
        assert!(err.message().len() < 200);
    }
    Ok(())
}

/// A fresh directory for definition files, removed by the caller.
fn definitions_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sf-defs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A system whose orchestrator reads its definitions from `dir`, with
/// `extra` settings.
async fn start_with_definitions(
    prefix: &str,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<System> {
    let mut env = vec![(
        "SAGAFLOW_DEFINITIONS_DIR".to_owned(),
        dir.display().to_string(),
    )];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    System::start(
        prefix,
        Options {
            env,
            ..Options::default()
        },
    )
    .await
}

/// Versions: a saga placed under v1 is in flight (inventory down) while the
/// orchestrator restarts with v2 added, then again with v1's file gone. New
/// sagas start under v2; the v1 saga finishes under v1, from the stored
/// copy.
///
/// The fast path stays on even in the event-path run: two restarts in a few
/// seconds leave the emulator two dead subscribers' streams, which it goes
/// on leasing most new events to for a minute at a time (see
/// `common::pubsub::subscriber`), so a step's event would often come back
/// only after the step's deadlines ran out. The event path across restarts
/// is the restart suite's subject; this test's is which version runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_saga_finishes_under_v1_after_v2_is_deployed() -> anyhow::Result<()> {
    let dir = definitions_dir()?;
    let v1 = sagaflow_orchestrator::definitions::order::FILE;
    let v2 = v1
        .replace("version: 1\n", "version: 2\n")
        .replace("attempts: 5 ", "attempts: 6 ");
    assert_ne!(v1, v2);
    std::fs::write(dir.join("order.v1.yaml"), v1)?;
    let mut sys =
        start_with_definitions("versions", &dir, &[("SAGAFLOW_FAST_PATH", "true")]).await?;
    let orchestrator_db = db::connect(&sys.dbs.orchestrator).await?;
    let version_of = |id: String| {
        let c = &orchestrator_db;
        async move {
            let v: i32 = c
                .query_one(
                    "SELECT definition_version FROM sagas WHERE saga_id::text = $1",
                    &[&id],
                )
                .await?
                .get(0);
            anyhow::Ok(v)
        }
    };
    sys.kill("inventory");
    let mut client = sys.client().await?;
    let first = client
        .place_order(order("cust-alice", &[("sku-widget", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    assert_eq!(version_of(first.clone()).await?, 1);

    std::fs::write(dir.join("order.v2.yaml"), &v2)?;
    sys.restart_gracefully("orchestrator-0").await?;
    let mut client = sys.client().await?;
    let second = client
        .place_order(order("cust-alice", &[("sku-gadget", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    assert_eq!(version_of(second.clone()).await?, 2);

    std::fs::remove_file(dir.join("order.v1.yaml"))?;
    sys.restart_gracefully("orchestrator-0").await?;
    sys.restart("inventory").await?;
    let done = sys
        .wait_terminal(&[first.clone(), second.clone()], SETTLE)
        .await?;
    for saga in &done {
        assert_eq!(saga.state, SagaState::Completed as i32, "{saga:?}");
    }
    assert_eq!(version_of(first).await?, 1);
    assert_eq!(version_of(second).await?, 2);
    let log = std::fs::read_to_string(sys.log_of("orchestrator-0"))?;
    assert!(
        log.contains("saga definition loaded from the database (no file here)"),
        "the last start ran v1 from the stored copy"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The step policies come from the definition file: a directory whose order
/// saga gives `reserve_inventory` one send and a 1 s deadline gives up on
/// the step (inventory down) within seconds, where the built-in policy
/// (5 sends, 10 s each) would wait close to a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitions_directory_sets_the_step_policies() -> anyhow::Result<()> {
    let dir = definitions_dir()?;
    let release = "    compensation: /sagaflow.participant.v1.InventoryService/ReleaseInventory\n";
    let file = sagaflow_orchestrator::definitions::order::FILE;
    assert!(file.contains(release));
    std::fs::write(
        dir.join("order.v1.yaml"),
        file.replace(
            release,
            &format!(
                "{release}    policy:\n      attempts: 1\n      deadline: 1s\n    compensation_policy:\n      deadline: 1s\n"
            ),
        ),
    )?;
    let mut sys = start_with_definitions("definitions", &dir, &[]).await?;
    let mut client = sys.client().await?;
    sys.kill("inventory");
    let placed = Instant::now();
    let id = client
        .place_order(order("cust-alice", &[("sku-widget", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    let gave_up = wait_for(
        "the saga to give up on reserve_inventory",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let saga = client
                    .get_saga(GetSagaRequest { saga_id: id })
                    .await?
                    .into_inner();
                Ok((saga.state != SagaState::Running as i32).then_some(saga))
            }
        },
    )
    .await?;
    println!(
        "definitions: gave up on reserve_inventory {:.1} s after placement: {:?} {}",
        placed.elapsed().as_secs_f64(),
        SagaState::try_from(gave_up.state),
        gave_up.reason
    );
    sys.restart("inventory").await?;
    let done = sys.wait_terminal(std::slice::from_ref(&id), SETTLE).await?;
    assert_eq!(
        done[0].state,
        SagaState::Compensated as i32,
        "{:?}",
        done[0]
    );
    assert!(
        done[0].reason.contains("reserve_inventory"),
        "{:?}",
        done[0].reason
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Placement never waits on a participant's look-up it does not need: a
/// repeat is answered from the orchestrator's own records while inventory
/// is down, and a new order is accepted unchecked (its steps check it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_does_not_depend_on_a_participant_that_is_down() -> anyhow::Result<()> {
    let mut sys = System::start("lookups", Options::default()).await?;
    let mut client = sys.client().await?;
    let placed = order("cust-alice", &[("sku-widget", 1)], 1_000);
    let first = client.place_order(placed.clone()).await?.into_inner();
    sys.wait_terminal(std::slice::from_ref(&first.saga_id), SETTLE)
        .await?;

    sys.kill("inventory");
    sys.kill("payment");
    // A repeat: the same saga, though both look-ups are down.
    let again = client.place_order(placed.clone()).await?.into_inner();
    assert_eq!(
        (again.saga_id.as_str(), again.created),
        (first.saga_id.as_str(), false)
    );
    let mut other = placed.clone();
    other.amount_cents += 1;
    let err = client
        .place_order(other)
        .await
        .expect_err("another payload");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    // New orders the look-ups would have refused are accepted...
    let unknown_sku = client
        .place_order(order("cust-alice", &[("sku-made-up", 1)], 500))
        .await?
        .into_inner();
    let unknown_customer = client
        .place_order(order("cust-made-up", &[("sku-widget", 1)], 500))
        .await?
        .into_inner();
    assert!(unknown_sku.created && unknown_customer.created);
    // ...and their steps refuse them once the participants are back.
    sys.restart("inventory").await?;
    sys.restart("payment").await?;
    let done = sys
        .wait_terminal(
            &[
                unknown_sku.saga_id.clone(),
                unknown_customer.saga_id.clone(),
            ],
            SETTLE,
        )
        .await?;
    assert_eq!(
        done[0].state,
        SagaState::Compensated as i32,
        "{:?}",
        done[0]
    );
    assert!(done[0].reason.contains("unknown_sku"), "{}", done[0].reason);
    assert_eq!(
        done[1].state,
        SagaState::Compensated as i32,
        "{:?}",
        done[1]
    );
    assert!(
        done[1].reason.contains("unknown_customer"),
        "{}",
        done[1].reason
    );
    // With everyone up, the look-ups refuse such orders at once.
    let err = client
        .place_order(order("cust-made-up", &[("sku-widget", 1)], 500))
        .await
        .expect_err("unknown customer");
    assert!(
        err.message().starts_with("customer_id: unknown customer"),
        "{err:?}"
    );
    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    assert!(report.ok(), "{:?}", report.violations);
    Ok(())
}

/// A participant that rejects a command as malformed (INVALID_ARGUMENT)
/// wrote nothing and will reject it again: the step is refused at once and
/// the saga compensated, without waiting out its deadlines. The API never
/// lets such an input in, so the saga is written straight to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_rejected_as_malformed_is_refused_at_once() -> anyhow::Result<()> {
    let sys = System::start(
        "malformed",
        Options {
            env: vec![("SAGAFLOW_TIMER_POLL_MS".into(), "100".into())],
            policies: Policies {
                deadline: Some(Duration::from_millis(5000)),
                attempts: Some(5),
                ..Policies::default()
            },
            ..Options::default()
        },
    )
    .await?;
    let pool = db::pool(&sys.dbs.orchestrator, 2)?;
    let input = sagaflow_protos::participant::v1::OrderInput {
        customer_id: "cust-alice".into(),
        items: vec![sagaflow_protos::participant::v1::OrderItem {
            sku: "sku-widget".into(),
            quantity: 1,
        }],
        amount_cents: 1 << 50,
        currency: "EUR".into(),
    };
    let saga_id = uuid::Uuid::now_v7();
    sagaflow_orchestrator::store::place(
        &pool,
        sagaflow_orchestrator::store::NewSaga {
            saga_id,
            idempotency_key: "forged".into(),
            definition: sagaflow_orchestrator::definitions::order::shared(),
            input: input.encode_to_vec(),
            traceparent: None,
        },
    )
    .await?;
    // Due now: the orchestrator's timer sends it.
    let c = db::connect(&sys.dbs.orchestrator).await?;
    c.execute(
        "UPDATE saga_wakeups SET due = now() WHERE saga_id = $1",
        &[&saga_id],
    )
    .await?;
    let done = sys
        .wait_terminal(&[saga_id.to_string()], Duration::from_secs(60))
        .await?;
    let saga = &done[0];
    assert_eq!(saga.state, SagaState::Compensated as i32, "{saga:?}");
    assert!(
        saga.reason
            .starts_with("create_order refused: invalid_command: order answered INVALID_ARGUMENT")
            && saga.reason.contains("input.amount_cents"),
        "{}",
        saga.reason
    );
    let kinds: Vec<&str> = saga.history.iter().map(|h| h.kind.as_str()).collect();
    assert!(!kinds.contains(&"step_timed_out"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "resent").count(),
        1,
        "sent once by the timer, then refused: {kinds:?}"
    );
    // The participant wrote nothing: no order, not even a tombstone.
    assert_eq!(count(&sys.dbs.order, "orders").await?, 0);
    assert_eq!(count(&sys.dbs.order, "inbox").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_listed_and_redriven() -> anyhow::Result<()> {
    let sys = System::start("poison", Options::default()).await?;
    let ps = sagaflow_common::pubsub::PubSubConfig {
        project: "sagaflow-local".into(),
        emulator_host: Some(sys.emulator_host.clone()),
    };
    let publisher = sagaflow_common::pubsub::EventPublisher::new(&ps, &sys.topic, 8).await?;
    let unknown = EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        saga_id: uuid::Uuid::now_v7().to_string(),
        step: 0,
        kind: 1,
        outcome: 1,
        ..Default::default()
    };
    for data in [
        b"\x08\xff\xff not protobuf".to_vec(),
        unknown.encode_to_vec(),
    ] {
        publisher
            .publish(sagaflow_common::pubsub::OutgoingMessage {
                data,
                ordering_key: String::new(),
                attributes: vec![],
            })
            .await?;
    }
    // A normal saga still runs to completion.
    let mut client = sys.client().await?;
    let placed = client
        .place_order(order("cust-alice", &[("sku-widget", 1)], 100))
        .await?
        .into_inner();
    let done = sys.wait_terminal(&[placed.saga_id], SETTLE).await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    // Both end on the dead-letter topic with their reason, stored and counted.
    let dead = |min: usize| {
        let url = sys.dbs.orchestrator.clone();
        async move {
            let c = db::connect(&url).await?;
            let rows = c
                .query("SELECT reason FROM dead_letters ORDER BY id", &[])
                .await?;
            let reasons: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            Ok((reasons.len() >= min).then_some(reasons))
        }
    };
    let reasons = wait_for("both poison messages to be dead-lettered", SETTLE, || {
        dead(2)
    })
    .await?;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("undecodable")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r == &format!("unknown saga {}", unknown.saga_id)),
        "{reasons:?}"
    );
    // The documented commands list and re-drive them; a re-driven poison
    // message comes back to the dead-letter table, nothing else changes.
    let listed = sys.run_command("sagaflow", &["dead-letters", "list"])?;
    let listed = String::from_utf8(listed.stdout)?;
    assert!(listed.starts_with("dead letters: 2\n"), "{listed}");
    assert!(listed.contains("unknown saga"), "{listed}");
    let redriven = sys.run_command("sagaflow", &["dead-letters", "redrive", "--all"])?;
    assert!(String::from_utf8(redriven.stdout)?.contains("re-drove 2 dead letters"));
    let reasons = wait_for("re-driven poison to come back", SETTLE, || dead(4)).await?;
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    let again = sys.run_command("sagaflow", &["dead-letters", "redrive", "--all"])?;
    assert!(
        String::from_utf8(again.stdout)?.contains("re-drove 2 dead letters"),
        "only the new ones"
    );
    Ok(())
}

/// `StartSaga`: the input is JSON, checked against the type's schema; a
/// refusal names the JSON pointer and the rule and writes nothing. For the
/// order type it is `PlaceOrder`'s path (the same keys, the same checks);
/// a type defined only by a file in the directory starts too, its input
/// stored as canonical JSON. (The shipped participants read only the order
/// saga's input, so that saga's command is refused as malformed and it is
/// compensated at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_saga_checks_json_input_and_shares_place_orders_keys() -> anyhow::Result<()> {
    use sagaflow_protos::orchestrator::v1::StartSagaRequest;
    let dir = definitions_dir()?;
    std::fs::write(
        dir.join("order.v1.yaml"),
        sagaflow_orchestrator::definitions::order::FILE,
    )?;
    std::fs::write(
        dir.join("loyalty.v1.yaml"),
        "type: loyalty\nversion: 1\ninput_schema:\n  type: object\n  required: [customer_id, points]\n  additionalProperties: false\n  properties:\n    customer_id: {type: string, minLength: 1}\n    points: {type: integer, minimum: 1, maximum: 1000}\nsteps:\n  - name: award\n    participant: payment\n    action: /sagaflow.participant.v1.PaymentService/ProcessPayment\n    compensation: /sagaflow.participant.v1.PaymentService/RefundPayment\n",
    )?;
    let sys = start_with_definitions("start", &dir, &[]).await?;
    let mut client = sys.client().await?;
    let start = |saga_type: &str, input: &str, key: &str| StartSagaRequest {
        saga_type: saga_type.to_owned(),
        input: input.to_owned(),
        idempotency_key: key.to_owned(),
    };

    let order_json = r#"{"customer_id": "cust-alice", "items": [{"sku": "sku-widget", "quantity": 1}], "amount_cents": 1000, "currency": "EUR"}"#;
    let refused: Vec<(StartSagaRequest, tonic::Code, &str)> = vec![
        (
            start("", order_json, "k"),
            tonic::Code::InvalidArgument,
            "saga_type: ",
        ),
        (
            start("no-such-type", order_json, "k"),
            tonic::Code::NotFound,
            "saga_type: ",
        ),
        (
            start("ord\0er", order_json, "k"),
            tonic::Code::InvalidArgument,
            "saga_type: ",
        ),
        (
            start("order", "", "k"),
            tonic::Code::InvalidArgument,
            "input: ",
        ),
        (
            start("order", "{\"customer_id\": ", "k"),
            tonic::Code::InvalidArgument,
            "input: is not JSON",
        ),
        (
            start(
                "order",
                &order_json.replace("\"quantity\": 1", "\"quantity\": 0"),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input/items/0/quantity: ",
        ),
        (
            start("order", &order_json.replace("1000", "1e300"), "k"),
            tonic::Code::InvalidArgument,
            "input/amount_cents: ",
        ),
        (
            start("order", &order_json.replace("1000", "\"1000\""), "k"),
            tonic::Code::InvalidArgument,
            "input/amount_cents: ",
        ),
        (
            start(
                "order",
                &order_json.replace("\"EUR\"", "\"EUR\", \"admin\": true"),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input: ",
        ),
        (
            start(
                "order",
                &order_json.replace("cust-alice", "cust-\\u0000alice"),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input/customer_id: ",
        ),
        (
            start(
                "order",
                &order_json.replace("cust-alice", "cust-nobody"),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input/customer_id: ",
        ),
        (
            start(
                "order",
                &order_json.replace("sku-widget", "sku-nothing"),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input/items/0/sku: ",
        ),
        (
            start(
                "order",
                &format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000)),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input: ",
        ),
        (
            start(
                "order",
                &format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
                "k",
            ),
            tonic::Code::InvalidArgument,
            "input: is not JSON",
        ),
        (
            start("order", order_json, ""),
            tonic::Code::InvalidArgument,
            "idempotency_key: ",
        ),
        (
            start("loyalty", r#"{"customer_id": "c", "points": 5000}"#, "k"),
            tonic::Code::InvalidArgument,
            "input/points: ",
        ),
        (
            start("loyalty", r#"{"customer_id": "c"}"#, "k"),
            tonic::Code::InvalidArgument,
            "input: ",
        ),
        // A NUL in any type's input, whatever its schema allows.
        (
            start("loyalty", r#"{"customer_id": "c\u0000", "points": 1}"#, "k"),
            tonic::Code::InvalidArgument,
            "input/customer_id: contains a NUL",
        ),
        (
            start("loyalty", r#"{"customer_id": "c", "points": 1}"#, "k\0"),
            tonic::Code::InvalidArgument,
            "idempotency_key: ",
        ),
    ];
    for (req, code, prefix) in refused {
        let shown = format!("{}: {:.60}", req.saga_type, req.input);
        let err = client.start_saga(req).await.expect_err("must be refused");
        assert_eq!(err.code(), code, "{shown}: {err:?}");
        assert!(
            err.message().starts_with(prefix),
            "{shown}: {:?} should start with {prefix:?}",
            err.message()
        );
        assert!(
            err.message().len() < 400,
            "{shown}: input echoed unbounded: {}",
            err.message().len()
        );
    }
    let bad_schema = client
        .start_saga(start(
            "order",
            &order_json.replace("\"quantity\": 1", "\"quantity\": 0"),
            "k",
        ))
        .await
        .unwrap_err();
    assert!(
        bad_schema.message().ends_with("(rule: minimum)"),
        "{bad_schema:?}"
    );
    assert_eq!(
        count(&sys.dbs.orchestrator, "sagas").await?,
        0,
        "a refusal wrote a saga"
    );
    assert_eq!(count(&sys.dbs.order, "inbox").await?, 0);

    // The order type: StartSaga and PlaceOrder share one key space.
    let started = client
        .start_saga(start("order", order_json, "key-1"))
        .await?
        .into_inner();
    assert!(started.created);
    let mut same = order("cust-alice", &[("sku-widget", 1)], 1_000);
    same.idempotency_key = "key-1".into();
    let placed = client.place_order(same).await?.into_inner();
    assert_eq!(
        (placed.saga_id.as_str(), placed.created),
        (started.saga_id.as_str(), false)
    );
    let reformatted = order_json.replace(": ", ":").replace(", ", ",");
    let again = client
        .start_saga(start("order", &reformatted, "key-1"))
        .await?
        .into_inner();
    assert_eq!(
        (again.saga_id.as_str(), again.created),
        (started.saga_id.as_str(), false)
    );
    let other = client
        .start_saga(start("order", &order_json.replace("1000", "2000"), "key-1"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");

    // A type defined only by a file.
    let loyalty = client
        .start_saga(start(
            "loyalty",
            r#"{"points": 10, "customer_id": "cust-bob"}"#,
            "key-1",
        ))
        .await?
        .into_inner();
    assert!(loyalty.created, "keys are per saga type");
    let repeat = client
        .start_saga(start(
            "loyalty",
            "{\"customer_id\":\"cust-bob\",\n \"points\":10}",
            "key-1",
        ))
        .await?
        .into_inner();
    assert_eq!(
        (repeat.saga_id.as_str(), repeat.created),
        (loyalty.saga_id.as_str(), false)
    );
    let done = sys
        .wait_terminal(&[started.saga_id.clone(), loyalty.saga_id.clone()], SETTLE)
        .await?;
    let by_id = |id: &str| {
        done.iter()
            .find(|s| s.saga_id == id)
            .expect("waited for")
            .clone()
    };
    let order_saga = by_id(&started.saga_id);
    assert_eq!(
        order_saga.state,
        SagaState::Completed as i32,
        "{order_saga:?}"
    );
    assert_eq!(order_saga.saga_type, "order");
    let shown: serde_json::Value = serde_json::from_str(&order_saga.input_json)?;
    assert_eq!(
        shown,
        serde_json::from_str::<serde_json::Value>(order_json)?
    );
    let loyalty_saga = by_id(&loyalty.saga_id);
    assert_eq!(loyalty_saga.saga_type, "loyalty");
    assert!(loyalty_saga.order.is_none());
    assert_eq!(
        loyalty_saga.input_json,
        r#"{"customer_id":"cust-bob","points":10}"#
    );
    assert_eq!(
        loyalty_saga.state,
        SagaState::Compensated as i32,
        "{loyalty_saga:?}"
    );
    assert!(
        loyalty_saga.reason.contains("invalid_command"),
        "{:?}",
        loyalty_saga.reason
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
