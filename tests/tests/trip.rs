//! The trip saga, end to end: the shipped `trip.v1.yaml` run by the
//! orchestrator against the flight, hotel, car and trip participants (built
//! on the participant library, each over its own database, served over
//! mutual TLS) and the unchanged payment participant, whose input the
//! definition maps. Every outcome also travels as an event through the
//! relays and Pub/Sub.
//!
//! Per saga it checks what each participant's tables say against the
//! saga's end: a completed trip holds one seat, one room and one car, is
//! charged once and has its itinerary and one notice; a compensated one
//! holds nothing and is charged nothing. Then, per resource, units taken
//! equal reservations held, and the operator's reconciliation finds every
//! participant's inbox in agreement with the orchestrator's record.

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_protos::orchestrator::v1::{Saga, SagaState, StartSagaRequest};
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::{reconcile, trips};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(90);

/// One trip to book.
struct Trip {
    traveller: &'static str,
    customer: &'static str,
    flight: &'static str,
    hotel: &'static str,
    car: &'static str,
}

const fn trip(
    traveller: &'static str,
    customer: &'static str,
    flight: &'static str,
    hotel: &'static str,
    car: &'static str,
) -> Trip {
    Trip {
        traveller,
        customer,
        flight,
        hotel,
        car,
    }
}

fn input(t: &Trip) -> String {
    trips::input(t.traveller, t.customer, t.flight, t.hotel, t.car)
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    sagaflow_common::db::connect(url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_book_everything_or_nothing_and_reconcile() -> anyhow::Result<()> {
    let system = System::start(
        "trip",
        Options {
            trip: true,
            ..Options::default()
        },
    )
    .await?;
    let mut client = system.client().await?;

    // SF-SMALL has 3 seats: of the five trips on it, three fly.
    let trips = [
        trip("ann", "cust-alice", "SF-100", "H-HARBOUR", "AIRPORT"),
        trip("ben", "cust-alice", "SF-FULL", "H-PARK", "CENTRE"),
        trip("cat", "cust-broke", "SF-200", "H-PARK", "AIRPORT"),
        trip("trav-blocked", "cust-alice", "SF-100", "H-PARK", "CENTRE"),
        trip("dan", "cust-alice", "SF-100", "H-FULL", "NONE"),
        trip("s1", "cust-alice", "SF-SMALL", "H-PARK", "CENTRE"),
        trip("s2", "cust-alice", "SF-SMALL", "H-PARK", "CENTRE"),
        trip("s3", "cust-alice", "SF-SMALL", "H-PARK", "CENTRE"),
        trip("s4", "cust-alice", "SF-SMALL", "H-PARK", "CENTRE"),
        trip("s5", "cust-alice", "SF-SMALL", "H-PARK", "CENTRE"),
    ];
    let mut ids = Vec::new();
    for t in &trips {
        let started = client
            .start_saga(StartSagaRequest {
                saga_type: "trip".into(),
                input: input(t),
                idempotency_key: format!("trip-{}", t.traveller),
            })
            .await?
            .into_inner();
        assert!(started.created);
        ids.push(started.saga_id);
    }
    let ended: Vec<Saga> = system.wait_terminal(&ids, WAIT).await?;
    let by_name: HashMap<&str, &Saga> = trips
        .iter()
        .map(|t| t.traveller)
        .zip(ended.iter())
        .collect();
    let state = |who: &str| SagaState::try_from(by_name[who].state).unwrap();
    let reason = |who: &str| by_name[who].reason.clone();

    // The shapes of the end.
    assert_eq!(state("ann"), SagaState::Completed, "{:?}", by_name["ann"]);
    for (who, why) in [
        ("ben", "no_seats: SF-FULL"),
        ("cat", "credit_limit_exceeded"),
        ("trav-blocked", "traveller_blocked: trav-blocked"),
        ("dan", "no_"),
    ] {
        assert_eq!(
            state(who),
            SagaState::Compensated,
            "{who}: {:?}",
            by_name[who]
        );
        assert!(reason(who).contains(why), "{who}: {}", reason(who));
    }
    let small: Vec<SagaState> = ["s1", "s2", "s3", "s4", "s5"].map(state).to_vec();
    assert_eq!(
        small.iter().filter(|s| **s == SagaState::Completed).count(),
        3,
        "{small:?}"
    );
    assert_eq!(
        small
            .iter()
            .filter(|s| **s == SagaState::Compensated)
            .count(),
        2,
        "{small:?}"
    );

    // Ann's outputs reached the itinerary and the notice.
    let ann = by_name["ann"];
    let output = |step: usize| -> serde_json::Value {
        serde_json::from_str(&ann.steps[step].output_json).unwrap_or_default()
    };
    let seat = output(0)["seat"].as_str().unwrap_or_default().to_owned();
    let itinerary = output(4)["itinerary"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(seat.starts_with("SF-100/"), "{seat}");
    assert!(itinerary.starts_with("IT-"), "{itinerary}");

    // Per saga: what each participant holds matches the saga's end; per
    // resource: units taken equal reservations held.
    let report = trips::check(&system, &ended).await?;
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.sagas, trips.len());
    let flight = connect(
        &system
            .env_value("SAGAFLOW_FLIGHT_DATABASE_URL")
            .unwrap_or_default(),
    )
    .await?;
    let desk = connect(
        &system
            .env_value("SAGAFLOW_TRIP_DATABASE_URL")
            .unwrap_or_default(),
    )
    .await?;
    let noticed: i64 = desk
        .query_one(
            "SELECT count(*) FROM notices WHERE itinerary = $1",
            &[&itinerary],
        )
        .await?
        .get(0);
    assert_eq!(noticed, 1, "ann's notice names her itinerary");
    let small_taken: i32 = flight
        .query_one("SELECT taken FROM resources WHERE id = 'SF-SMALL'", &[])
        .await?
        .get(0);
    assert_eq!(small_taken, 3);

    // The operator's reconciliation covers every trip: each participant's
    // inbox agrees with the orchestrator's record.
    let reconciled = reconcile::run(&system, &[]).await?;
    assert!(
        reconciled.wrong.is_empty(),
        "mismatches: {:?}",
        reconciled.wrong
    );
    assert_eq!(reconciled.finished, trips.len(), "{:?}", reconciled.lines);
    Ok(())
}
