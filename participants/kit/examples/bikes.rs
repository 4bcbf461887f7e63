//! A participant that rents out bikes from a small fleet, written with the
//! participant library: two step functions and a table; the library does
//! the inbox, the outbox, repeats, tombstones, tracing, TLS, metrics and
//! health.
//!
//! ```text
//! SAGAFLOW_INSECURE=true cargo run -p sagaflow-participant-kit --example bikes
//! ```
//!
//! It serves `/example.v1.Bikes/Rent` (input `{"rider": "…"}`; output
//! `{"bike": "B-<n>", "fare": 500}`, refused `no_bikes` when the fleet of
//! three is out) and
//! `/example.v1.Bikes/GiveBack`, on `SAGAFLOW_BIKES_LISTEN`
//! (127.0.0.1:50070) with its database at `SAGAFLOW_BIKES_DATABASE_URL`
//! (`sagaflow_bikes` on the local server, created if missing). A saga
//! definition names it as participant `bikes`; the orchestrator finds it at
//! `SAGAFLOW_PARTICIPANT_BIKES_URL`, and an outbox relay publishes its
//! events (add its database to `SAGAFLOW_RELAY_DATABASE_URLS`).

use futures::FutureExt as _;
use sagaflow_participant_kit::{
    COMPENSATED_BEFORE_ACTION, Command, Config, Decision, Defaults, Error, Migration, Participant,
    Tx, serve,
};
use serde_json::json;

/// The fleet (one row) and one rental row per saga. A `RETURNED` row with
/// no rider is the tombstone of a give-back that came first.
const FLEET: Migration = Migration {
    version: 100,
    name: "fleet and rentals",
    sql: r#"
CREATE TABLE fleet (size integer NOT NULL, out integer NOT NULL CHECK (out BETWEEN 0 AND size));
INSERT INTO fleet VALUES (3, 0);
CREATE TABLE rentals (
    saga_id uuid PRIMARY KEY,
    rider   text,
    bike    text,
    status  text NOT NULL CHECK (status IN ('RENTED', 'RETURNED'))
);
"#,
};

/// What a ride costs, in cents.
const FARE_CENTS: i64 = 500;

async fn rent(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let rider = cmd.required_text("rider")?;
    // The fleet row is the lock: one rental decides at a time.
    let (size, out): (i32, i32) = tx
        .query_one("SELECT size, out FROM fleet FOR UPDATE", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    if out >= size {
        return Ok(Decision::refused("no_bikes", json!({ "size": size })));
    }
    let bike = format!("B-{}", out + 1);
    let inserted = tx
        .execute(
            "INSERT INTO rentals VALUES ($1, $2, $3, 'RENTED') ON CONFLICT DO NOTHING",
            &[&cmd.saga_id, &rider, &bike],
        )
        .await?;
    if inserted == 0 {
        // The give-back came first and left its tombstone.
        return Ok(Decision::refused(COMPENSATED_BEFORE_ACTION, json!({})));
    }
    tx.execute("UPDATE fleet SET out = out + 1", &[]).await?;
    // What later steps may use: the bike, and the fare to charge.
    Ok(Decision::succeeded(json!({ "rider": rider }))
        .with_output(json!({ "bike": bike, "fare": FARE_CENTS })))
}

async fn give_back(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    // A tombstone when it comes first; else the bike comes back once.
    let tombstone = tx
        .execute(
            "INSERT INTO rentals VALUES ($1, NULL, NULL, 'RETURNED') ON CONFLICT DO NOTHING",
            &[&cmd.saga_id],
        )
        .await?;
    if tombstone == 1 {
        return Ok(Decision::succeeded(json!({ "tombstone": true })));
    }
    let returned = tx
        .execute(
            "UPDATE rentals SET status = 'RETURNED' WHERE saga_id = $1 AND status = 'RENTED'",
            &[&cmd.saga_id],
        )
        .await?;
    if returned == 1 {
        tx.execute("UPDATE fleet SET out = out - 1", &[]).await?;
    }
    Ok(Decision::succeeded(json!({ "returned": returned == 1 })))
}

/// The participant, as the library serves it.
pub fn bikes() -> Participant {
    Participant::new("bikes", "example.v1.Bikes")
        .migration(FLEET)
        .action("Rent", |tx, cmd| rent(tx, cmd).boxed())
        .compensation("GiveBack", |tx, cmd| give_back(tx, cmd).boxed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = sagaflow_common::telemetry::init("bikes")?;
    let config = Config::from_env("bikes", &Defaults::local("bikes", 50070, 8090))?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    serve(
        bikes(),
        config,
        listener,
        sagaflow_common::shutdown::on_signal(),
    )
    .await
}
