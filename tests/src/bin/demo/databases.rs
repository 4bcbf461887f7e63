//! The demo's databases: `sagaflow_orchestrator`, `sagaflow_order`,
//! `sagaflow_payment`, `sagaflow_inventory`, and the trip saga's
//! `sagaflow_flight`, `sagaflow_hotel`, `sagaflow_car`, `sagaflow_trip`
//! (the services' defaults).
//! Kept after a run so the sagas and the business rows can be looked at;
//! `--drop-databases` drops them at the end, `sagaflow-demo clean` at any
//! time.

use sagaflow_common::{db, testkit};
use sagaflow_tests::databases::{DEFAULT_NAMES, TRIP_NAMES};

/// The Postgres server, without a password, for messages.
pub fn server() -> String {
    db::redact(&testkit::server_url())
}

async fn admin() -> anyhow::Result<tokio_postgres::Client> {
    db::connect(&format!("{}/postgres", testkit::server_url())).await
}

/// Those of the demo's databases that exist now.
pub async fn existing() -> anyhow::Result<Vec<&'static str>> {
    let admin = admin().await?;
    let mut found = Vec::new();
    for name in DEFAULT_NAMES.into_iter().chain(TRIP_NAMES) {
        let row = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?;
        if row.is_some() {
            found.push(name);
        }
    }
    Ok(found)
}

/// Drop the demo's databases (closing anything still connected to them);
/// returns those that existed.
pub async fn drop_all() -> anyhow::Result<Vec<&'static str>> {
    let there = existing().await?;
    let admin = admin().await?;
    for name in &there {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
    }
    Ok(there)
}
