//! The participant library's example (`participants/kit/examples/bikes.rs`)
//! as a user would run it: its own process and database, named by a saga
//! definition file (`ride`: rent a bike, then charge the rider through the
//! payment participant, its input mapped), its outbox published by a relay
//! of its own. The fleet has three bikes.
//!
//! A rider who cannot pay gets the bike given back; then four riders at
//! once: three ride, the fourth is refused `no_bikes`. Bikes out equal
//! rides completed, and reconciliation agrees with the example's inbox.

use std::process::{Child, Stdio};
use std::time::Duration;

use sagaflow_protos::orchestrator::v1::{Saga, SagaState, StartSagaRequest};
use sagaflow_tests::system::{Options, Outside, System, bin_dir};
use sagaflow_tests::{free_port, reconcile, wait_for};

const RIDE: &str = r#"
type: ride
version: 1
description: Rent a bike, then charge the rider.
input_schema:
  $schema: https://json-schema.org/draft/2020-12/schema
  type: object
  required: [rider, customer_id]
  additionalProperties: false
  properties:
    rider: {type: string, minLength: 1, maxLength: 100}
    customer_id: {type: string, minLength: 1, maxLength: 200}
defaults:
  action: {deadline: 3s, attempts: 20}
  compensation: {deadline: 3s, attempts: 20}
steps:
  - name: rent
    participant: bikes
    action: /example.v1.Bikes/Rent
    compensation: /example.v1.Bikes/GiveBack
    input: {rider: /input/rider}
  - name: charge
    participant: payment
    action: /sagaflow.participant.v1.PaymentService/ProcessPayment
    compensation: /sagaflow.participant.v1.PaymentService/RefundPayment
    input: {customer_id: /input/customer_id, amount_cents: /steps/rent/output/fare}
"#;

const WAIT: Duration = Duration::from_secs(60);

/// The example's process, SIGKILLed on drop.
struct Example(Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_example_runs_in_a_saga_defined_by_a_file() -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let bikes_db =
        sagaflow_common::testkit::create(&format!("sf_library_{}_bikes", &id[..12])).await?;
    let port = free_port();
    let system = System::start(
        "library",
        Options {
            insecure: true,
            outside: vec![Outside {
                name: "bikes".into(),
                url: format!("http://127.0.0.1:{port}"),
                database_url: bikes_db.clone(),
                definition: ("ride.v1.yaml".into(), RIDE.into()),
            }],
            ..Options::default()
        },
    )
    .await?;

    // The example, as its README line runs it.
    let log = std::fs::File::create(system.log_of("bikes"))?;
    let _bikes = Example(
        std::process::Command::new(bin_dir()?.join("examples").join("bikes"))
            .env("SAGAFLOW_INSECURE", "true")
            .env("SAGAFLOW_BIKES_DATABASE_URL", &bikes_db)
            .env("SAGAFLOW_BIKES_LISTEN", format!("127.0.0.1:{port}"))
            .env("SAGAFLOW_BIKES_HTTP_LISTEN", "off")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let db = sagaflow_common::db::connect(&bikes_db).await?;
    wait_for("the example to migrate", WAIT, || async {
        Ok(db
            .query_opt("SELECT out FROM fleet", &[])
            .await
            .ok()
            .flatten()
            .map(|_| ()))
    })
    .await?;

    let client = system.client().await?;
    let start = |rider: &'static str, customer: &'static str| {
        let mut client = client.clone();
        async move {
            Ok::<String, anyhow::Error>(
                client
                    .start_saga(StartSagaRequest {
                        saga_type: "ride".into(),
                        input: format!(r#"{{"rider": "{rider}", "customer_id": "{customer}"}}"#),
                        idempotency_key: format!("ride-{rider}"),
                    })
                    .await?
                    .into_inner()
                    .saga_id,
            )
        }
    };

    // Cannot pay: the bike comes back.
    let broke = start("broke", "cust-broke").await?;
    let ended = system
        .wait_terminal(std::slice::from_ref(&broke), WAIT)
        .await?;
    assert_eq!(
        ended[0].state,
        SagaState::Compensated as i32,
        "{:?}",
        ended[0]
    );
    assert!(
        ended[0].reason.contains("credit_limit_exceeded"),
        "{}",
        ended[0].reason
    );
    let out: i32 = db.query_one("SELECT out FROM fleet", &[]).await?.get(0);
    assert_eq!(out, 0, "the bike was given back");

    // Four riders, three bikes.
    let mut ids = Vec::new();
    for rider in ["r1", "r2", "r3", "r4"] {
        ids.push(start(rider, "cust-alice").await?);
    }
    let ended: Vec<Saga> = system.wait_terminal(&ids, WAIT).await?;
    let completed = ended
        .iter()
        .filter(|s| s.state == SagaState::Completed as i32)
        .count();
    assert_eq!(completed, 3, "{ended:?}");
    let refused: Vec<&Saga> = ended
        .iter()
        .filter(|s| s.state == SagaState::Compensated as i32)
        .collect();
    assert_eq!(refused.len(), 1, "{ended:?}");
    assert!(
        refused[0].reason.contains("no_bikes"),
        "{}",
        refused[0].reason
    );
    let out: i32 = db.query_one("SELECT out FROM fleet", &[]).await?.get(0);
    let rented: i64 = db
        .query_one("SELECT count(*) FROM rentals WHERE status = 'RENTED'", &[])
        .await?
        .get(0);
    assert_eq!((out, rented), (3, 3));
    // The fare the example output was charged.
    let payments = sagaflow_common::db::connect(&system.dbs.payment).await?;
    let charged: i64 = payments
        .query_one(
            "SELECT count(*) FROM payments WHERE status = 'CHARGED' AND amount_cents = 500",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(charged, 3);

    let reconciled = reconcile::run(&system, &[]).await?;
    assert!(reconciled.wrong.is_empty(), "{:?}", reconciled.wrong);
    assert_eq!(reconciled.finished, 5, "{:?}", reconciled.lines);
    Ok(())
}
