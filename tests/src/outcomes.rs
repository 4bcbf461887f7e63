//! Where each saga ended, against where a run without faults ends it.
//!
//! A saga whose history shows no fault path — no action given up on
//! (`step_timed_out`), no cancel, no operator retry — must end exactly as a
//! clean run ends it. The others may legitimately end otherwise (an order
//! whose payment outcome stayed unknown is compensated); they are counted,
//! by (clean outcome → actual), and still may never do the impossible: a
//! refused order never completes, and no saga stays paused.

use std::collections::BTreeMap;

use sagaflow_common::db;
use uuid::Uuid;

use crate::orders::Expect;

/// History kinds after which a saga may end otherwise than a clean run.
pub const FAULT_PATHS: &[&str] = &["step_timed_out", "cancel_requested", "retry_requested"];

#[derive(Debug, Default)]
pub struct Outcomes {
    /// Sagas with no fault path in their history: they ended exactly as a
    /// clean run ends them, or they are in `wrong`.
    pub exact: usize,
    /// Sagas with a fault path, by "clean → actual" outcome.
    pub affected: BTreeMap<String, usize>,
    /// Sagas that ended where they never may.
    pub wrong: Vec<String>,
}

impl Outcomes {
    pub fn affected_total(&self) -> usize {
        self.affected.values().sum()
    }
}

impl std::fmt::Display for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outcomes: exact={} affected={} {:?} wrong={}",
            self.exact,
            self.affected_total(),
            self.affected,
            self.wrong.len()
        )
    }
}

/// The outcome a run without faults gives.
pub fn clean(expect: Expect) -> &'static str {
    match expect {
        Expect::Completed => "COMPLETED",
        Expect::PaymentRefused | Expect::StockShort | Expect::Refused => "COMPENSATED",
    }
}

/// Classify `sagas` (id, expected outcome) from the orchestrator's database.
pub async fn classify(
    orchestrator_url: &str,
    sagas: &[(Uuid, Expect)],
) -> anyhow::Result<Outcomes> {
    let c = db::connect(orchestrator_url).await?;
    let ids: Vec<Uuid> = sagas.iter().map(|s| s.0).collect();
    let paths: Vec<&str> = FAULT_PATHS.to_vec();
    let rows = c
        .query(
            "SELECT s.saga_id, s.status,
                    EXISTS (SELECT 1 FROM saga_history h
                            WHERE h.saga_id = s.saga_id AND h.kind = ANY($2))
             FROM sagas s WHERE s.saga_id = ANY($1)",
            &[&ids, &paths],
        )
        .await?;
    let found: BTreeMap<Uuid, (String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut o = Outcomes::default();
    for (id, expect) in sagas {
        let clean = clean(*expect);
        let Some((status, faulted)) = found.get(id) else {
            o.wrong.push(format!("{id}: no such saga"));
            continue;
        };
        let finished = matches!(status.as_str(), "COMPLETED" | "COMPENSATED");
        if !faulted {
            if status == clean {
                o.exact += 1;
            } else {
                o.wrong.push(format!(
                    "{id}: {expect:?} without a fault path, but {status}"
                ));
            }
            continue;
        }
        *o.affected.entry(format!("{clean}→{status}")).or_default() += 1;
        if !finished || (clean == "COMPENSATED" && status == "COMPLETED") {
            o.wrong.push(format!("{id}: {expect:?} but {status}"));
        }
    }
    Ok(o)
}
