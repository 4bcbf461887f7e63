//! Trips: sample trip sagas, and the trip saga's invariants across the
//! flight, hotel, car, itinerary and payment databases, saga by saga.

use std::collections::HashMap;

use sagaflow_common::db;
use sagaflow_protos::orchestrator::v1::{Saga, SagaState, StartSagaRequest};

use crate::orders::Expect;
use crate::system::System;

/// What a sample trip costs, in cents.
pub const PRICE_CENTS: i64 = 25_000;

/// The saga type's input for one trip.
pub fn input(traveller: &str, customer: &str, flight: &str, hotel: &str, car: &str) -> String {
    serde_json::json!({
        "traveller": traveller,
        "customer_id": customer,
        "flight": flight,
        "hotel": hotel,
        "car_location": car,
        "amount_cents": PRICE_CENTS,
    })
    .to_string()
}

/// The `i`-th trip of a mixed batch (idempotency keys start with `key`):
/// mostly trips that go through, one in six on a full flight, one in six
/// for a customer who cannot pay, one in six for a traveller the itinerary
/// desk refuses at the pivot.
pub fn mixed(key: &str, i: usize) -> (StartSagaRequest, Expect) {
    let traveller = format!("traveller-{i}");
    let (input, expect) = match i % 6 {
        1 => (
            input(&traveller, "cust-alice", "SF-FULL", "H-PARK", "CENTRE"),
            Expect::Refused,
        ),
        3 => (
            input(&traveller, "cust-broke", "SF-200", "H-PARK", "AIRPORT"),
            Expect::PaymentRefused,
        ),
        5 => (
            input(
                "trav-blocked",
                "cust-alice",
                "SF-100",
                "H-HARBOUR",
                "CENTRE",
            ),
            Expect::Refused,
        ),
        _ => (
            input(&traveller, "cust-alice", "SF-100", "H-HARBOUR", "AIRPORT"),
            Expect::Completed,
        ),
    };
    (
        StartSagaRequest {
            saga_type: "trip".into(),
            input,
            idempotency_key: format!("{key}-trip-{i}"),
        },
        expect,
    )
}

/// What the trip invariants found.
#[derive(Debug, Default)]
pub struct Report {
    /// Trip sagas checked.
    pub sagas: usize,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// [`check`] over every trip saga the orchestrator holds (read from its
/// database; sagas not ended are skipped).
pub async fn check_all(system: &System) -> anyhow::Result<Report> {
    let orchestrator = db::connect(&system.dbs.orchestrator).await?;
    let sagas: Vec<Saga> = orchestrator
        .query(
            "SELECT saga_id, status, input FROM sagas WHERE saga_type = 'trip'",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            let id: uuid::Uuid = row.get(0);
            let state = match row.get::<_, String>(1).as_str() {
                "COMPLETED" => SagaState::Completed,
                "COMPENSATED" => SagaState::Compensated,
                _ => SagaState::Unspecified,
            };
            Saga {
                saga_id: id.to_string(),
                saga_type: "trip".into(),
                state: state as i32,
                // Stored as canonical JSON text.
                input_json: String::from_utf8_lossy(row.get::<_, &[u8]>(2)).into_owned(),
                ..Saga::default()
            }
        })
        .collect();
    check(system, &sagas).await
}

/// Check each ended trip saga in `sagas` (others are skipped) against the
/// participants' tables, and each resource's count:
/// - a completed trip holds its seat, room and car (`RESERVED`), is charged
///   once the amount its input names (`input_json`), has its itinerary
///   naming those units, and one notice at least;
/// - a compensated trip holds none of them, is not charged, and has no
///   itinerary and no notice;
/// - per flight, hotel and car location, units taken equal reservations
///   held, never more than its capacity.
pub async fn check(system: &System, sagas: &[Saga]) -> anyhow::Result<Report> {
    let url = |name: &str| {
        system
            .env_value(&format!("SAGAFLOW_{}_DATABASE_URL", name.to_uppercase()))
            .ok_or_else(|| anyhow::anyhow!("the system runs no {name} participant"))
    };
    let units = [
        ("flight", db::connect(&url("flight")?).await?),
        ("hotel", db::connect(&url("hotel")?).await?),
        ("car", db::connect(&url("car")?).await?),
    ];
    let desk = db::connect(&url("trip")?).await?;
    let payment = db::connect(&system.dbs.payment).await?;
    let mut r = Report::default();
    let mut held: HashMap<&str, HashMap<uuid::Uuid, (String, Option<String>)>> = HashMap::new();
    for (name, db) in &units {
        let rows = db
            .query("SELECT saga_id, status, unit FROM reservations", &[])
            .await?;
        held.insert(
            name,
            rows.iter()
                .map(|row| (row.get(0), (row.get(1), row.get(2))))
                .collect(),
        );
    }
    for saga in sagas.iter().filter(|s| s.saga_type == "trip") {
        let id: uuid::Uuid = saga.saga_id.parse()?;
        let state = SagaState::try_from(saga.state).unwrap_or_default();
        let holds: Vec<Option<&(String, Option<String>)>> = ["flight", "hotel", "car"]
            .map(|n| held[n].get(&id))
            .to_vec();
        // A refund that came before its charge left a tombstone (VOIDED,
        // no amount).
        let charged: Option<(String, Option<i64>)> = payment
            .query_opt(
                "SELECT status, amount_cents FROM payments WHERE saga_id = $1",
                &[&id],
            )
            .await?
            .map(|row| (row.get(0), row.get(1)));
        let itinerary: Option<(String, String, String)> = desk
            .query_opt(
                "SELECT seat, room, car FROM itineraries WHERE saga_id = $1",
                &[&id],
            )
            .await?
            .map(|row| (row.get(0), row.get(1), row.get(2)));
        let notices: i64 = desk
            .query_one("SELECT count(*) FROM notices WHERE saga_id = $1", &[&id])
            .await?
            .get(0);
        let mut wrong = |what: String| r.violations.push(format!("trip {id}: {what}"));
        match state {
            SagaState::Completed => {
                let units: Vec<Option<String>> = holds
                    .iter()
                    .map(|h| match h {
                        Some((status, unit)) if status == "RESERVED" => unit.clone(),
                        _ => None,
                    })
                    .collect();
                if units.iter().any(Option::is_none) {
                    wrong(format!("completed but holds {holds:?}"));
                }
                let price: Option<i64> =
                    serde_json::from_str::<serde_json::Value>(&saga.input_json)
                        .ok()
                        .and_then(|input| input["amount_cents"].as_i64());
                if charged != Some(("CHARGED".to_owned(), price)) || price.is_none() {
                    wrong(format!(
                        "completed but its payment is {charged:?}, not CHARGED {price:?} as its input says"
                    ));
                }
                match &itinerary {
                    Some((seat, room, car))
                        if [Some(seat), Some(room), Some(car)]
                            == [units[0].as_ref(), units[1].as_ref(), units[2].as_ref()] => {}
                    other => wrong(format!(
                        "completed, itinerary {other:?} does not name {units:?}"
                    )),
                }
                if notices < 1 {
                    wrong("completed without a notice".into());
                }
            }
            SagaState::Compensated => {
                if holds
                    .iter()
                    .any(|h| h.is_some_and(|(status, _)| status == "RESERVED"))
                {
                    wrong(format!("compensated but still holds {holds:?}"));
                }
                if charged.as_ref().is_some_and(|c| c.0 == "CHARGED") {
                    wrong("compensated but charged".into());
                }
                if itinerary.is_some() || notices > 0 {
                    wrong("compensated but has an itinerary or a notice".into());
                }
            }
            _ => continue,
        }
        r.sagas += 1;
    }
    for (name, db) in &units {
        let rows = db
            .query(
                "SELECT r.id, r.taken, r.capacity,
                        count(v.saga_id) FILTER (WHERE v.status = 'RESERVED')
                 FROM resources r LEFT JOIN reservations v ON v.resource = r.id
                 GROUP BY r.id, r.taken, r.capacity",
                &[],
            )
            .await?;
        for row in rows {
            let (id, taken, capacity, held): (String, i32, i32, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if i64::from(taken) != held || taken > capacity {
                r.violations.push(format!(
                    "{name} {id}: {taken} taken of {capacity}, {held} reservations held"
                ));
            }
        }
    }
    Ok(r)
}
