//! A fresh set of service databases per test run, named by a UUID.

use sagaflow_common::{db, testkit};

/// The default databases (the services' own defaults, and the demo's).
pub const DEFAULT_NAMES: [&str; 4] = [
    "sagaflow_orchestrator",
    "sagaflow_order",
    "sagaflow_payment",
    "sagaflow_inventory",
];

/// The trip participants' default databases (a system started with
/// `Options::trip` on the default databases).
pub const TRIP_NAMES: [&str; 4] = [
    "sagaflow_flight",
    "sagaflow_hotel",
    "sagaflow_car",
    "sagaflow_trip",
];

/// The four databases of one system. Dropped (best effort) on drop.
pub struct Databases {
    pub orchestrator: String,
    pub order: String,
    pub payment: String,
    pub inventory: String,
    names: Vec<String>,
    /// The databases [`Databases::add`] made: (service, url).
    added: Vec<(String, String)>,
    /// `sf_<prefix>_<uuid>`: what [`Databases::add`] names a database by.
    stem: String,
    keep: bool,
}

impl Databases {
    /// Create `sf_<prefix>_<uuid>_{orchestrator,order,payment,inventory}`.
    pub async fn create(prefix: &str) -> anyhow::Result<Databases> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let base = testkit::server_url();
        let name = |svc: &str| format!("sf_{prefix}_{}_{svc}", &id[..12]);
        let names: Vec<String> = ["orchestrator", "order", "payment", "inventory"]
            .iter()
            .map(|s| name(s))
            .collect();
        for n in &names {
            db::ensure_database(&format!("{base}/{n}")).await?;
        }
        let url = |i: usize| format!("{base}/{}", names[i]);
        Ok(Databases {
            orchestrator: url(0),
            order: url(1),
            payment: url(2),
            inventory: url(3),
            names,
            added: Vec::new(),
            stem: format!("sf_{prefix}_{}", &id[..12]),
            keep: std::env::var_os("SAGAFLOW_KEEP_DATABASES").is_some(),
        })
    }

    /// The default databases (`sagaflow_orchestrator`, `sagaflow_order`,
    /// `sagaflow_payment`, `sagaflow_inventory`), created if missing and kept.
    pub async fn defaults() -> anyhow::Result<Databases> {
        let base = testkit::server_url();
        let names: Vec<String> = DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect();
        for n in &names {
            db::ensure_database(&format!("{base}/{n}")).await?;
        }
        let url = |i: usize| format!("{base}/{}", names[i]);
        Ok(Databases {
            orchestrator: url(0),
            order: url(1),
            payment: url(2),
            inventory: url(3),
            names,
            added: Vec::new(),
            stem: "sagaflow".to_owned(),
            keep: true,
        })
    }

    /// One more database of this set, for service `svc`
    /// (`sf_<prefix>_<uuid>_<svc>`, or `sagaflow_<svc>` for the defaults),
    /// created if missing and dropped with the others.
    pub async fn add(&mut self, svc: &str) -> anyhow::Result<String> {
        let name = format!("{}_{svc}", self.stem);
        let url = format!("{}/{name}", testkit::server_url());
        db::ensure_database(&url).await?;
        self.names.push(name);
        self.added.push((svc.to_owned(), url.clone()));
        Ok(url)
    }

    /// The databases [`add`](Self::add) made, as (service, url).
    pub fn added(&self) -> impl Iterator<Item = (&str, &str)> {
        self.added.iter().map(|(s, u)| (s.as_str(), u.as_str()))
    }

    /// Keep the databases after the run (the demo does, for inspection).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        if !self.keep {
            testkit::drop_now(std::mem::take(&mut self.names));
        }
    }
}
