//! After-the-fact checks on the databases of a system that went through
//! crashes: where every saga ended, and whether anything happened twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use sagaflow_common::db;

use crate::databases::Databases;

/// What the databases say about a run.
#[derive(Debug, Default)]
pub struct Audit {
    /// Sagas by `sagas.status`.
    pub by_status: BTreeMap<String, i64>,
    /// Forward transitions recorded twice for one saga (same history kind
    /// and detail; re-sends excluded): the saga advanced twice.
    pub double_applied: Vec<String>,
    /// Sagas whose history sequence has a gap or does not start at 1.
    pub history_gaps: Vec<String>,
    /// A participant handled two commands for one (saga, step, kind): a step
    /// ran twice (command ids are derived from those three).
    pub repeated_steps: Vec<String>,
    /// Events applied (`processed_events` rows).
    pub processed_events: i64,
    /// Outbox rows across the participants, and distinct event ids among
    /// them: the difference is events re-emitted for repeated commands.
    pub outbox_rows: i64,
    pub outbox_events: i64,
}

impl Audit {
    /// Sagas that advanced twice or ran a step twice (each counted once).
    pub fn double_applied_sagas(&self) -> usize {
        let id = |s: &String| s.split(':').next().unwrap_or_default().to_owned();
        self.double_applied
            .iter()
            .chain(&self.repeated_steps)
            .map(id)
            .collect::<HashSet<_>>()
            .len()
    }

    pub fn count(&self, status: &str) -> i64 {
        self.by_status.get(status).copied().unwrap_or(0)
    }

    pub fn total(&self) -> i64 {
        self.by_status.values().sum()
    }

    /// Sagas in RUNNING or COMPENSATING.
    pub fn in_flight(&self) -> i64 {
        self.count("RUNNING") + self.count("COMPENSATING")
    }
}

/// History kinds that may legitimately repeat within one saga.
const REPEATABLE: &[&str] = &["resent"];

/// Read the four databases of `dbs`.
pub async fn audit(dbs: &Databases) -> anyhow::Result<Audit> {
    let mut a = Audit::default();
    let o = db::connect(&dbs.orchestrator).await?;
    for r in o
        .query("SELECT status, count(*) FROM sagas GROUP BY 1", &[])
        .await?
    {
        a.by_status.insert(r.get(0), r.get(1));
    }
    let rows = o
        .query(
            "SELECT saga_id, seq, kind, detail FROM saga_history ORDER BY saga_id, seq",
            &[],
        )
        .await?;
    let mut seen: HashMap<(uuid::Uuid, String, String), i64> = HashMap::new();
    let mut last: Option<(uuid::Uuid, i64)> = None;
    for r in &rows {
        let (id, seq, kind, detail): (uuid::Uuid, i64, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let expected = match last {
            Some((lid, lseq)) if lid == id => lseq + 1,
            _ => 1,
        };
        if seq != expected {
            a.history_gaps
                .push(format!("{id}: seq {seq} where {expected} was expected"));
        }
        last = Some((id, seq));
        if REPEATABLE.contains(&kind.as_str()) {
            continue;
        }
        if let Some(first) = seen.insert((id, kind.clone(), detail.clone()), seq) {
            a.double_applied.push(format!(
                "{id}: {kind} \"{detail}\" at seq {first} and {seq}"
            ));
        }
    }
    a.processed_events = o
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await?
        .get(0);

    for (name, url) in [
        ("order", &dbs.order),
        ("payment", &dbs.payment),
        ("inventory", &dbs.inventory),
    ] {
        let p = db::connect(url).await?;
        for r in p
            .query(
                "SELECT saga_id, step, kind, count(*) FROM inbox GROUP BY 1, 2, 3 HAVING count(*) > 1",
                &[],
            )
            .await?
        {
            let (id, step, kind, n): (uuid::Uuid, i32, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            a.repeated_steps
                .push(format!("{id}: {name} ran the {kind} of step {step} {n} times"));
        }
        let r = p
            .query_one("SELECT count(*), count(DISTINCT event_id) FROM outbox", &[])
            .await?;
        a.outbox_rows += r.get::<_, i64>(0);
        a.outbox_events += r.get::<_, i64>(1);
    }
    Ok(a)
}

/// The status of each saga in `ids` (absent ids are missing from the map).
pub async fn statuses(
    orchestrator_url: &str,
    ids: &[uuid::Uuid],
) -> anyhow::Result<HashMap<uuid::Uuid, String>> {
    let o = db::connect(orchestrator_url).await?;
    let rows = o
        .query(
            "SELECT saga_id, status FROM sagas WHERE saga_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// How many of `ids` are not yet in a terminal state (missing ones count).
pub async fn not_terminal(orchestrator_url: &str, ids: &[uuid::Uuid]) -> anyhow::Result<usize> {
    let s = statuses(orchestrator_url, ids).await?;
    Ok(ids
        .iter()
        .filter(|id| {
            !matches!(
                s.get(id).map(String::as_str),
                Some("COMPLETED" | "COMPENSATED" | "COMPENSATION_FAILED")
            )
        })
        .count())
}

/// Wait (up to `bound`) until every one of `ids` is terminal, reading the
/// orchestrator's database.
pub async fn wait_all_terminal(
    orchestrator_url: &str,
    ids: &[uuid::Uuid],
    bound: std::time::Duration,
) -> anyhow::Result<()> {
    crate::wait_for(
        &format!("{} sagas to reach a terminal state", ids.len()),
        bound,
        || async move { Ok((not_terminal(orchestrator_url, ids).await? == 0).then_some(())) },
    )
    .await
}

/// Lines of `path` containing `needle` (0 when the file is missing).
pub fn count_in_log(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}
