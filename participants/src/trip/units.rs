//! Flight, hotel and car rental: three participants of one shape. Each has
//! its own database with a fixed stock of units (seats on a flight, rooms
//! in a hotel, cars at a location) and one reservation row per saga.
//!
//! | RPC       | kind         | effect |
//! |-----------|--------------|--------|
//! | `Reserve` | action       | input `{traveller, <what>}`: one unit taken, `RESERVED`, output `{"<unit>": "<what>/<n>"}`; refused `<none_left>: <what>` (recorded `REFUSED`) or `unknown_<what>: <what>`; refused `compensated_before_action` after a release's tombstone |
//! | `Release` | compensation | `RESERVED` → `RELEASED`, the unit given back; absent → `VOIDED` tombstone; otherwise a no-op |
//!
//! A unit is taken and given back in the same transaction as the
//! reservation row changes, so `taken` always equals the number of
//! `RESERVED` rows of that resource.

use futures::FutureExt as _;
use sagaflow_participant_kit::{
    COMPENSATED_BEFORE_ACTION, Command, Decision, Error, Migration, Participant, Tx,
};
use serde_json::json;

/// One of the three: its names and its seed stock.
#[derive(Debug)]
pub struct Units {
    /// The participant's name (`flight`).
    pub name: &'static str,
    /// Its gRPC service (`sagaflow.trip.v1.FlightService`).
    pub service: &'static str,
    /// The input field naming the resource (`flight`).
    pub what: &'static str,
    /// The output field naming the unit (`seat`).
    pub unit: &'static str,
    /// The refusal code when none is left (`no_seats`).
    pub none_left: &'static str,
    /// The seed resources and their capacity.
    pub seeds: Migration,
}

/// The schema every one of the three has.
const TABLES: Migration = Migration {
    version: 100,
    name: "resources and reservations",
    sql: r#"
CREATE TABLE resources (
    id       text PRIMARY KEY,
    capacity integer NOT NULL CHECK (capacity >= 0),
    taken    integer NOT NULL DEFAULT 0 CHECK (taken >= 0 AND taken <= capacity)
);
CREATE TABLE reservations (
    saga_id     uuid PRIMARY KEY,
    resource    text,
    traveller   text,
    unit        text,
    status      text NOT NULL CHECK (status IN ('RESERVED', 'REFUSED', 'RELEASED', 'VOIDED')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'VOIDED' OR resource IS NOT NULL)
);
"#,
};

pub static FLIGHT: Units = Units {
    name: "flight",
    service: "sagaflow.trip.v1.FlightService",
    what: "flight",
    unit: "seat",
    none_left: "no_seats",
    seeds: Migration {
        version: 101,
        name: "seed flights",
        sql: r#"
INSERT INTO resources (id, capacity) VALUES
    ('SF-100', 1000000),
    ('SF-200', 1000000),
    ('SF-SMALL', 3),
    ('SF-FULL', 0)
ON CONFLICT (id) DO NOTHING;
"#,
    },
};

pub static HOTEL: Units = Units {
    name: "hotel",
    service: "sagaflow.trip.v1.HotelService",
    what: "hotel",
    unit: "room",
    none_left: "no_rooms",
    seeds: Migration {
        version: 101,
        name: "seed hotels",
        sql: r#"
INSERT INTO resources (id, capacity) VALUES
    ('H-HARBOUR', 1000000),
    ('H-PARK', 1000000),
    ('H-SMALL', 3),
    ('H-FULL', 0)
ON CONFLICT (id) DO NOTHING;
"#,
    },
};

pub static CAR: Units = Units {
    name: "car",
    service: "sagaflow.trip.v1.CarService",
    what: "location",
    unit: "car",
    none_left: "no_cars",
    seeds: Migration {
        version: 101,
        name: "seed car locations",
        sql: r#"
INSERT INTO resources (id, capacity) VALUES
    ('AIRPORT', 1000000),
    ('CENTRE', 1000000),
    ('SMALL', 3),
    ('NONE', 0)
ON CONFLICT (id) DO NOTHING;
"#,
    },
};

impl Units {
    /// The participant: its tables, its seeds, `Reserve` and `Release`.
    pub fn participant(&'static self) -> Participant {
        Participant::new(self.name, self.service)
            .migration(TABLES)
            .migration(self.seeds)
            .action("Reserve", move |tx, cmd| reserve(self, tx, cmd).boxed())
            .compensation("Release", move |tx, cmd| release(self, tx, cmd).boxed())
    }
}

async fn reserve(units: &Units, tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let traveller = cmd.required_text("traveller")?;
    let what = cmd.required_text(units.what)?;
    if let Some(existing) = lock(tx, cmd).await? {
        return Ok(already_decided(units, existing));
    }
    // Take a unit if one is left: the resource row is the lock.
    let taken: Option<(i32, i32)> = tx
        .query_opt(
            "SELECT capacity, taken FROM resources WHERE id = $1 FOR UPDATE",
            &[&what],
        )
        .await?
        .map(|r| (r.get(0), r.get(1)));
    let (status, reason, unit) = match taken {
        None => (
            "REFUSED",
            Some(format!("unknown_{}: {what}", units.what)),
            None,
        ),
        Some((capacity, taken)) if taken >= capacity => (
            "REFUSED",
            Some(format!("{}: {what}", units.none_left)),
            None,
        ),
        Some((_, taken)) => ("RESERVED", None, Some(format!("{what}/{}", taken + 1))),
    };
    let inserted = tx
        .execute(
            "INSERT INTO reservations (saga_id, resource, traveller, unit, status, reason)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (saga_id) DO NOTHING",
            &[&cmd.saga_id, &what, &traveller, &unit, &status, &reason],
        )
        .await?;
    if inserted == 0 {
        // The release's tombstone (or another reservation of this saga)
        // got there first.
        let existing = lock(tx, cmd)
            .await?
            .ok_or_else(|| anyhow::anyhow!("reservation {} vanished", cmd.saga_id))?;
        return Ok(already_decided(units, existing));
    }
    let payload = json!({ "status": status, units.what: what });
    match (reason, unit) {
        (Some(reason), _) => Ok(Decision::refused(reason, payload)),
        (None, unit) => {
            tx.execute(
                "UPDATE resources SET taken = taken + 1 WHERE id = $1",
                &[&what],
            )
            .await?;
            Ok(Decision::succeeded(payload).with_output(json!({ units.unit: unit })))
        }
    }
}

async fn release(units: &Units, tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let tombstone = tx
        .execute(
            "INSERT INTO reservations (saga_id, status, reason)
             VALUES ($1, 'VOIDED', 'released_before_reserved') ON CONFLICT (saga_id) DO NOTHING",
            &[&cmd.saga_id],
        )
        .await?;
    if tombstone == 1 {
        return Ok(Decision::succeeded(
            json!({ "status": "VOIDED", "tombstone": true }),
        ));
    }
    let existing = lock(tx, cmd)
        .await?
        .ok_or_else(|| anyhow::anyhow!("reservation {} vanished", cmd.saga_id))?;
    if existing.status != "RESERVED" {
        return Ok(Decision::succeeded(
            json!({ "status": existing.status, "no_op": true }),
        ));
    }
    tx.execute(
        "UPDATE reservations SET status = 'RELEASED', updated_at = now() WHERE saga_id = $1",
        &[&cmd.saga_id],
    )
    .await?;
    tx.execute(
        "UPDATE resources SET taken = taken - 1 WHERE id = $1",
        &[&existing.resource],
    )
    .await?;
    Ok(Decision::succeeded(
        json!({ "status": "RELEASED", units.unit: existing.unit }),
    ))
}

struct Existing {
    status: String,
    reason: Option<String>,
    resource: Option<String>,
    unit: Option<String>,
}

async fn lock(tx: &Tx<'_>, cmd: &Command) -> Result<Option<Existing>, Error> {
    Ok(tx
        .query_opt(
            "SELECT status, reason, resource, unit FROM reservations WHERE saga_id = $1 FOR UPDATE",
            &[&cmd.saga_id],
        )
        .await?
        .map(|r| Existing {
            status: r.get(0),
            reason: r.get(1),
            resource: r.get(2),
            unit: r.get(3),
        }))
}

/// The answer to a reservation for a saga whose row already exists.
fn already_decided(units: &Units, existing: Existing) -> Decision {
    let payload = json!({ "status": existing.status, "existing": true });
    match existing.status.as_str() {
        "RESERVED" => {
            Decision::succeeded(payload).with_output(json!({ units.unit: existing.unit }))
        }
        "REFUSED" => Decision::refused(existing.reason.unwrap_or_default(), payload),
        // Released or voided: the saga was compensated; never "undo, then do".
        _ => Decision::refused(COMPENSATED_BEFORE_ACTION, payload),
    }
}
