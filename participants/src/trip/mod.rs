//! The trip-booking saga's participants, built on the participant library:
//! [`units`] (flight, hotel and car rental, one shape) and the itinerary
//! desk here (`trip`), which confirms the itinerary — the saga's pivot —
//! and then tells the traveller (a forward-only step).
//!
//! | RPC               | kind    | effect |
//! |-------------------|---------|--------|
//! | `ConfirmTrip`     | action (pivot, never undone) | input `{traveller, seat, room, car}`: records the itinerary, output `{"itinerary": "IT-<saga id>"}`; refused `traveller_blocked: <traveller>` for a traveller in `blocked_travellers`, `incomplete: <field>` when a reservation is missing |
//! | `NotifyTraveller` | action (forward-only) | input `{traveller, itinerary}`: records one notice per command; refused `mailbox_closed: <traveller>` while the traveller is in `closed_mailboxes` |
//!
//! The saga itself is the file `trip.v1.yaml` next to this module: the
//! orchestrator runs it with no code of its own for trips.
//!
//! Seed data: `blocked_travellers` holds `trav-blocked`;
//! `closed_mailboxes` is empty. See [`units`] for the flights, hotels and
//! car locations.

pub mod units;

use futures::FutureExt as _;
use sagaflow_participant_kit::{Command, Decision, Error, Migration, Participant, Tx};
use serde_json::json;

/// The trip definition file, as shipped.
pub const DEFINITION: &str = include_str!("trip.v1.yaml");

const TABLES: Migration = Migration {
    version: 100,
    name: "itineraries and notices",
    sql: r#"
CREATE TABLE itineraries (
    saga_id    uuid PRIMARY KEY,
    traveller  text NOT NULL,
    seat       text NOT NULL,
    room       text NOT NULL,
    car        text NOT NULL,
    itinerary  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE notices (
    command_id uuid PRIMARY KEY,
    saga_id    uuid NOT NULL,
    traveller  text NOT NULL,
    itinerary  text,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE blocked_travellers (traveller text PRIMARY KEY);
CREATE TABLE closed_mailboxes (traveller text PRIMARY KEY);
INSERT INTO blocked_travellers VALUES ('trav-blocked');
"#,
};

/// The itinerary desk.
pub fn participant() -> Participant {
    Participant::new("trip", "sagaflow.trip.v1.TripService")
        .migration(TABLES)
        .action("ConfirmTrip", |tx, cmd| confirm(tx, cmd).boxed())
        .action("NotifyTraveller", |tx, cmd| notify(tx, cmd).boxed())
}

async fn confirm(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let traveller = cmd.required_text("traveller")?;
    let mut parts = Vec::new();
    for field in ["seat", "room", "car"] {
        match cmd.text(field)? {
            Some(v) => parts.push(v),
            None => {
                return Ok(Decision::refused(format!("incomplete: {field}"), json!({})));
            }
        }
    }
    let blocked = tx
        .query_opt(
            "SELECT 1 FROM blocked_travellers WHERE traveller = $1",
            &[&traveller],
        )
        .await?
        .is_some();
    if blocked {
        return Ok(Decision::refused(
            format!("traveller_blocked: {traveller}"),
            json!({}),
        ));
    }
    // The whole id: a v7 id begins with its time, shared by sagas of one
    // millisecond.
    let itinerary = format!("IT-{}", cmd.saga_id.simple());
    tx.execute(
        "INSERT INTO itineraries (saga_id, traveller, seat, room, car, itinerary)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (saga_id) DO NOTHING",
        &[
            &cmd.saga_id,
            &traveller,
            &parts[0],
            &parts[1],
            &parts[2],
            &itinerary,
        ],
    )
    .await?;
    Ok(
        Decision::succeeded(json!({ "seat": parts[0], "room": parts[1], "car": parts[2] }))
            .with_output(json!({ "itinerary": itinerary })),
    )
}

async fn notify(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let traveller = cmd.required_text("traveller")?;
    let itinerary = cmd.text("itinerary")?;
    let closed = tx
        .query_opt(
            "SELECT 1 FROM closed_mailboxes WHERE traveller = $1",
            &[&traveller],
        )
        .await?
        .is_some();
    if closed {
        return Ok(Decision::refused(
            format!("mailbox_closed: {traveller}"),
            json!({}),
        ));
    }
    tx.execute(
        "INSERT INTO notices (command_id, saga_id, traveller, itinerary) VALUES ($1, $2, $3, $4)",
        &[&cmd.command_id, &cmd.saga_id, &traveller, &itinerary],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "notified": traveller })))
}
