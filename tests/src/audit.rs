//! After-the-fact readings of a system's databases: where every saga ended,
//! which fault paths its history shows, and two structural checks (history
//! gap-free, no transition recorded twice). Whether business changes were
//! applied twice is for [`crate::checks`], saga by saga.

use std::collections::{BTreeMap, HashMap, HashSet};

use sagaflow_common::db;

use crate::databases::Databases;

/// What the databases say about a run.
#[derive(Debug, Default)]
pub struct Audit {
    /// Sagas by `sagas.status`.
    pub by_status: BTreeMap<String, i64>,
    /// History kind → (entries, distinct sagas): how often each path ran
    /// (`step_timed_out`: an action's outcome declared unknown;
    /// `compensation_failed`: a saga paused; `retry_requested`: an
    /// operator's retry; `step_overdue`: a pivot re-sent past its attempts).
    pub kinds: BTreeMap<String, (i64, i64)>,
    /// A transition that happens once per saga or step recorded twice (same
    /// kind and detail): the saga advanced twice.
    pub advanced_twice: Vec<String>,
    /// Sagas whose history sequence has a gap or does not start at 1.
    pub history_gaps: Vec<String>,
    /// Tombstones across the participants: a compensation that arrived
    /// before its action (a CANCELLED order or VOIDED payment or
    /// reservation with no business data).
    pub tombstones: i64,
    /// Events applied (`processed_events` rows).
    pub processed_events: i64,
    /// Outbox rows across the participants, and distinct event ids among
    /// them: the difference is events re-emitted for repeated commands.
    pub outbox_rows: i64,
    pub outbox_events: i64,
}

impl Audit {
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

    /// History entries of `kind`.
    pub fn entries(&self, kind: &str) -> i64 {
        self.kinds.get(kind).map_or(0, |k| k.0)
    }

    /// Sagas with at least one history entry of `kind`.
    pub fn sagas_with(&self, kind: &str) -> i64 {
        self.kinds.get(kind).map_or(0, |k| k.1)
    }
}

/// History kinds that happen at most once per saga, or once per step (their
/// detail names the step).
const ONCE: &[&str] = &[
    "placed",
    "started",
    "step_succeeded",
    "step_refused",
    "step_timed_out",
    "late_outcome",
    "cancel_requested",
    "step_compensated",
    "completed",
];

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
    let mut sagas_by_kind: HashMap<String, HashSet<uuid::Uuid>> = HashMap::new();
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
        a.kinds.entry(kind.clone()).or_default().0 += 1;
        sagas_by_kind.entry(kind.clone()).or_default().insert(id);
        if !ONCE.contains(&kind.as_str()) {
            continue;
        }
        if let Some(first) = seen.insert((id, kind.clone(), detail.clone()), seq) {
            a.advanced_twice.push(format!(
                "{id}: {kind} \"{detail}\" at seq {first} and {seq}"
            ));
        }
    }
    for (kind, sagas) in sagas_by_kind {
        a.kinds.entry(kind).or_default().1 = sagas.len() as i64;
    }
    a.processed_events = o
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await?
        .get(0);

    // Each participant's database with its tombstones (the trip desk
    // undoes nothing, so it has none).
    let mut participants: Vec<(&str, Option<&str>)> = vec![
        (
            &dbs.order,
            Some("SELECT count(*) FROM orders WHERE status = 'CANCELLED' AND customer_id IS NULL"),
        ),
        (
            &dbs.payment,
            Some("SELECT count(*) FROM payments WHERE status = 'VOIDED' AND customer_id IS NULL"),
        ),
        (
            &dbs.inventory,
            Some("SELECT count(*) FROM reservations WHERE status = 'VOIDED' AND items IS NULL"),
        ),
    ];
    for (svc, url) in dbs.added() {
        participants.push(match svc {
            "flight" | "hotel" | "car" => (
                url,
                Some("SELECT count(*) FROM reservations WHERE status = 'VOIDED' AND resource IS NULL"),
            ),
            _ => (url, None),
        });
    }
    for (url, tombstones) in participants {
        let p = db::connect(url).await?;
        if let Some(tombstones) = tombstones {
            a.tombstones += p.query_one(tombstones, &[]).await?.get::<_, i64>(0);
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
