//! The participant contract in another language: `tests/python/insurance.py`
//! (grpcio and psycopg, no Sagaflow code) runs as its own process over its
//! own database, its outbox published by a relay, in a saga defined by a
//! file: `insured` reserves a flight (the Rust library's flight
//! participant) and insures the traveller (Python) at once, then charges.
//!
//! - happy path: the policy is issued and its output kept with the step;
//! - the flight is refused while the insurance is still deciding (it waits
//!   1.5 s): the cancellation reaches Python first and leaves a tombstone,
//!   and the late `Insure` is refused `compensated_before_action`;
//! - Python refuses (`uninsurable`): the flight seat is released;
//! - repeats, forged straight to the Python participant: copies of one
//!   command at once and one after are answered with one outcome under one
//!   event id, which is emitted again for each copy;
//! - reconciliation agrees with Python's inbox (`CommandLog`).

use std::process::{Child, Stdio};
use std::time::Duration;

use sagaflow_protos::orchestrator::v1::{GetSagaRequest, SagaState, StartSagaRequest};
use sagaflow_protos::participant::v1::command_ack::Status as AckStatus;
use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use sagaflow_tests::system::{Options, Outside, System};
use sagaflow_tests::{free_port, reconcile, wait_for};

const INSURED: &str = r#"
type: insured
version: 1
description: Reserve a flight and insure the traveller at once, then charge.
input_schema:
  $schema: https://json-schema.org/draft/2020-12/schema
  type: object
  required: [traveller, flight, amount_cents]
  additionalProperties: false
  properties:
    traveller: {type: string, minLength: 1, maxLength: 100}
    flight: {type: string, minLength: 1, maxLength: 100}
    amount_cents: {type: integer, minimum: 1, maximum: 100000}
defaults:
  action: {deadline: 3s, attempts: 20}
  compensation: {deadline: 3s, attempts: 20}
steps:
  - name: reserve_flight
    participant: flight
    group: book
    action: /sagaflow.trip.v1.FlightService/Reserve
    compensation: /sagaflow.trip.v1.FlightService/Release
    input: {traveller: /input/traveller, flight: /input/flight}
  - name: insure
    participant: insurance
    group: book
    action: /sagaflow.test.v1.Insurance/Insure
    compensation: /sagaflow.test.v1.Insurance/CancelInsurance
    input: {traveller: /input/traveller}
    compensation_input: {policy: /steps/insure/output/policy}
  - name: charge
    participant: payment
    action: /sagaflow.participant.v1.PaymentService/ProcessPayment
    compensation: /sagaflow.participant.v1.PaymentService/RefundPayment
    input: {customer_id: /input/traveller, amount_cents: /input/amount_cents}
"#;

const WAIT: Duration = Duration::from_secs(60);

/// The Python participant's process, SIGKILLed on drop, and its database.
struct Python {
    child: Child,
    db_name: String,
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("SAGAFLOW_KEEP_DATABASES").is_none() {
            sagaflow_common::testkit::drop_now(vec![std::mem::take(&mut self.db_name)]);
        }
    }
}

/// The interpreter of the venv `.ci/run` and the README set up.
fn python() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("SAGAFLOW_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("python/.venv/bin/python");
    anyhow::ensure!(
        venv.exists(),
        "{} is missing: python3 -m venv tests/python/.venv && tests/python/.venv/bin/pip install -r tests/python/requirements.txt",
        venv.display()
    );
    Ok(venv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_written_in_python_keeps_the_contract() -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("sf_python_{}_insurance", &id[..12]);
    let db_url = sagaflow_common::testkit::create(&db_name).await?;
    let port = free_port();
    let system = System::start(
        "python",
        Options {
            insecure: true,
            trip: true,
            outside: vec![Outside {
                name: "insurance".into(),
                url: format!("http://127.0.0.1:{port}"),
                database_url: db_url.clone(),
                definition: ("insured.v1.yaml".into(), INSURED.into()),
            }],
            ..Options::default()
        },
    )
    .await?;

    let log = std::fs::File::create(system.log_of("insurance"))?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/insurance.py");
    let _python = Python {
        child: std::process::Command::new(python()?)
            .arg(script)
            .env("SAGAFLOW_INSECURE", "true")
            .env("SAGAFLOW_INSURANCE_DATABASE_URL", &db_url)
            .env("SAGAFLOW_INSURANCE_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
        db_name,
    };
    let db = sagaflow_common::db::connect(&db_url).await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.connect_lazy();
    // Serving once health says so (after its migrations).
    wait_for("the Python participant to serve", WAIT, || {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            let ok = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "sagaflow.test.v1.Insurance".into(),
                })
                .await
                .map(|r| r.into_inner().status == 1)
                .unwrap_or(false);
            Ok(ok.then_some(()))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; log in {}", system.log_of("insurance").display()))?;
    db.execute(
        "INSERT INTO slow_travellers (traveller, ms) VALUES ('cust-alice-slow', 1500)",
        &[],
    )
    .await?;
    db.execute("INSERT INTO uninsurable VALUES ('cust-bob')", &[])
        .await?;

    let mut client = system.client().await?;
    let mut start = async |traveller: &str, flight: &str| -> anyhow::Result<String> {
        Ok(client
            .start_saga(StartSagaRequest {
                saga_type: "insured".into(),
                input: format!(
                    r#"{{"traveller": "{traveller}", "flight": "{flight}", "amount_cents": 1000}}"#
                ),
                idempotency_key: format!("insured-{traveller}"),
            })
            .await?
            .into_inner()
            .saga_id)
    };
    let ann = start("cust-alice", "SF-100").await?;
    let late = start("cust-alice-slow", "SF-FULL").await?;
    let bob = start("cust-bob", "SF-200").await?;
    let ended = system
        .wait_terminal(&[ann.clone(), late.clone(), bob.clone()], WAIT)
        .await?;
    let flight = sagaflow_common::db::connect(
        &system
            .env_value("SAGAFLOW_FLIGHT_DATABASE_URL")
            .unwrap_or_default(),
    )
    .await?;
    let policy = |saga: &str| {
        let db = &db;
        let saga: uuid::Uuid = saga.parse().unwrap();
        async move {
            db.query_opt(
                "SELECT status, traveller FROM policies WHERE saga_id = $1",
                &[&saga],
            )
            .await
            .map(|r| r.map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))))
        }
    };
    let seat = |saga: &str| {
        let flight = &flight;
        let saga: uuid::Uuid = saga.parse().unwrap();
        async move {
            flight
                .query_opt(
                    "SELECT status FROM reservations WHERE saga_id = $1",
                    &[&saga],
                )
                .await
                .map(|r| r.map(|r| r.get::<_, String>(0)))
        }
    };

    // Happy: insured, its output kept with the step.
    assert_eq!(
        ended[0].state,
        SagaState::Completed as i32,
        "{:?}",
        ended[0]
    );
    let output: serde_json::Value = serde_json::from_str(&ended[0].steps[1].output_json)?;
    let issued = format!("P-{}", &ann.replace('-', "")[..8]);
    assert_eq!(output["policy"], issued.as_str());
    assert_eq!(
        policy(&ann).await?,
        Some(("INSURED".to_owned(), Some("cust-alice".to_owned())))
    );

    // The flight refused while the insurance was deciding: the tombstone
    // came first, the late action was refused.
    assert_eq!(
        ended[1].state,
        SagaState::Compensated as i32,
        "{:?}",
        ended[1]
    );
    assert!(ended[1].reason.contains("no_seats"), "{}", ended[1].reason);
    assert_eq!(policy(&late).await?, Some(("CANCELLED".to_owned(), None)));
    let late_id: uuid::Uuid = late.parse()?;
    let decided = wait_for("the late Insure to decide", WAIT, || async {
        Ok(db
            .query_opt(
                "SELECT outcome, reason FROM inbox WHERE saga_id = $1 AND kind = 'action'",
                &[&late_id],
            )
            .await?
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))))
    })
    .await?;
    assert_eq!(
        decided,
        ("REFUSED".to_owned(), "compensated_before_action".to_owned())
    );
    let late_saga = system
        .client()
        .await?
        .get_saga(GetSagaRequest {
            saga_id: late.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(late_saga.steps[1].status, "COMPENSATED", "{late_saga:?}");

    // Python refused: the seat was released, nothing charged.
    assert_eq!(
        ended[2].state,
        SagaState::Compensated as i32,
        "{:?}",
        ended[2]
    );
    assert!(
        ended[2].reason.contains("uninsurable: cust-bob"),
        "{}",
        ended[2].reason
    );
    assert_eq!(seat(&bob).await?.as_deref(), Some("RELEASED"));
    assert_eq!(seat(&ann).await?.as_deref(), Some("RESERVED"));

    // Repeats, forged straight to Python: four copies at once, one after.
    let saga_id = uuid::Uuid::now_v7();
    let command = StepCommand {
        command_id: uuid::Uuid::now_v7().to_string(),
        saga_id: saga_id.to_string(),
        step: 1,
        step_name: "insure".into(),
        attempt: 1,
        saga_type: "insured".into(),
        input: br#"{"traveller":"cust-dora"}"#.to_vec(),
    };
    let call = |command: StepCommand| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/sagaflow.test.v1.Insurance/Insure",
            );
            let ack: tonic::Response<CommandAck> = grpc
                .unary(
                    tonic::Request::new(command),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await?;
            Ok::<CommandAck, anyhow::Error>(ack.into_inner())
        }
    };
    let mut acks = futures::future::try_join_all((0..4).map(|_| call(command.clone()))).await?;
    acks.push(call(command.clone()).await?);
    let accepted = acks
        .iter()
        .filter(|a| a.status() == AckStatus::Accepted)
        .count();
    assert_eq!(accepted, 1, "{acks:?}");
    assert!(
        acks.iter().all(|a| a.event_id == acks[0].event_id),
        "{acks:?}"
    );
    assert!(acks.iter().all(|a| a.output == acks[0].output), "{acks:?}");
    let event_id: uuid::Uuid = acks[0].event_id.parse()?;
    let emitted: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE event_id = $1",
            &[&event_id],
        )
        .await?
        .get(0);
    assert_eq!(emitted, 5, "the event once per copy, under one id");
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM policies WHERE saga_id = $1",
            &[&saga_id],
        )
        .await?
        .get(0);
    assert_eq!(rows, 1);

    // Reconciliation reads Python's inbox through its CommandLog.
    let reconciled = reconcile::run(&system, &[]).await?;
    assert!(reconciled.wrong.is_empty(), "{:?}", reconciled.wrong);
    assert_eq!(reconciled.finished, 3, "{:?}", reconciled.lines);
    Ok(())
}
