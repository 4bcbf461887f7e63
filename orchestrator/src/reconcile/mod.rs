//! `sagaflow reconcile`: compare, saga by saga, what the
//! orchestrator recorded with what each participant says it did.
//!
//! The orchestrator's `steps` say what it believes each step's outcome was;
//! each participant's inbox says what it decided, command by command, and
//! serves it read-only (`CommandLog.ListCommandOutcomes`). For every finished
//! saga (`COMPLETED`, `COMPENSATED`, `COMPENSATION_FAILED`) the two must agree
//! as `expect.rs` lays out; sagas still in flight are skipped and counted. It
//! works for any saga type: it needs only the definition (step participants,
//! which steps can be undone) and the command ids the engine derives. Sagas
//! older than a participant's inbox retention are skipped and counted too:
//! their commands may be forgotten there.
//!
//! Read-only on a live system: it reads the orchestrator's database and calls
//! the participants through the orchestrator's own participant channels
//! (same endpoints and transport settings as the commands). A saga that
//! changes while it is being compared (an operator's retry) is compared
//! again.

mod expect;
mod listing;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use futures::StreamExt as _;
use uuid::Uuid;

pub use expect::{Decided, Record, SagaCheck, StepCheck, compare};

use crate::participants::GrpcParticipants;
use crate::saga::{SagaState, Status};
use crate::{Config, definitions};

/// Sagas compared at once (each asks every participant of its type).
const CONCURRENCY: usize = 16;
/// Sagas read per page.
const PAGE: i64 = 200;
/// Sagas created less than this after a participant's retention horizon are
/// not compared either: a sweep may run while they are.
const FORGET_MARGIN: Duration = Duration::from_secs(600);

/// What a run found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Finished sagas compared.
    pub finished: usize,
    /// Of those, sagas with at least one mismatch.
    pub mismatched: usize,
    /// Sagas skipped because they are not finished.
    pub in_flight: usize,
    /// Sagas skipped because they are older than a participant's inbox
    /// retention (their commands may be forgotten there).
    pub forgotten: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reconcile: finished={} mismatched={} in_flight={} forgotten={}",
            self.finished, self.mismatched, self.in_flight, self.forgotten
        )
    }
}

/// Compare every finished saga, or only `ids` (then every step is printed,
/// agreeing or not). `emit` receives one line per mismatch (`MISMATCH saga=…`)
/// or, for `ids`, per step (`ok saga=…` / `MISMATCH saga=…`).
pub async fn run(
    config: &Config,
    ids: &[Uuid],
    mut emit: impl FnMut(String),
) -> anyhow::Result<Summary> {
    let pool = sagaflow_common::db::pool(&config.database_url, 4)?;
    // Every version any instance stored (each stores what it runs), so a
    // saga type defined only by a file is compared like the built-in one.
    let stored = definitions::stored::list(&pool, None).await?;
    definitions::add_to_registry(stored.into_iter().map(|s| s.definition).collect());
    let tls = match &config.security {
        crate::Security::Secure(secured) => Some(&secured.participants_tls),
        crate::Security::Insecure => None,
    };
    let participants = GrpcParticipants::new(&config.participants, config.command_timeout, tls)?;
    let mut summary = Summary::default();
    if !ids.is_empty() {
        compare_all(
            &pool,
            &participants,
            ids.to_vec(),
            true,
            &mut summary,
            &mut emit,
        )
        .await?;
        return Ok(summary);
    }
    let mut after = Uuid::nil();
    loop {
        let page = page_after(&pool, after).await?;
        let Some(&last) = page.last() else {
            return Ok(summary);
        };
        after = last;
        compare_all(&pool, &participants, page, false, &mut summary, &mut emit).await?;
    }
}

/// Compare `page`, adding to `summary`; `every_step`: emit agreeing steps too.
async fn compare_all(
    pool: &Pool,
    participants: &GrpcParticipants,
    page: Vec<Uuid>,
    every_step: bool,
    summary: &mut Summary,
    emit: &mut impl FnMut(String),
) -> anyhow::Result<()> {
    let checked: Vec<anyhow::Result<Checked>> = futures::stream::iter(page)
        .map(|id| check(pool, participants, id))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    for c in checked {
        match c? {
            Checked::InFlight => summary.in_flight += 1,
            Checked::Forgotten => summary.forgotten += 1,
            Checked::Finished { agrees, lines } => {
                summary.finished += 1;
                summary.mismatched += usize::from(!agrees);
                lines
                    .into_iter()
                    .filter(|(ok, _)| every_step || !ok)
                    .for_each(|(_, line)| emit(line));
            }
        }
    }
    Ok(())
}

async fn page_after(pool: &Pool, after: Uuid) -> anyhow::Result<Vec<Uuid>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT saga_id FROM sagas WHERE saga_id > $1 ORDER BY saga_id LIMIT $2",
            &[&after, &PAGE],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

enum Checked {
    InFlight,
    /// Older than a participant's inbox retention.
    Forgotten,
    /// Lines: (agrees, text).
    Finished {
        agrees: bool,
        lines: Vec<(bool, String)>,
    },
}

/// One saga as stored.
struct Stored {
    saga_type: String,
    definition_version: u32,
    status: String,
    state: serde_json::Value,
    /// Bumped by every change: a saga that changed while compared is
    /// compared again.
    version: i64,
    created_at: SystemTime,
}

async fn load(pool: &Pool, id: Uuid) -> anyhow::Result<Stored> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT saga_type, definition_version, status, state, version, created_at
             FROM sagas WHERE saga_id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("saga {id}: not found"))?;
    Ok(Stored {
        saga_type: row.get(0),
        definition_version: row.get::<_, i32>(1) as u32,
        status: row.get(2),
        state: row.get(3),
        version: row.get(4),
        created_at: row.get(5),
    })
}

async fn check(pool: &Pool, participants: &GrpcParticipants, id: Uuid) -> anyhow::Result<Checked> {
    let mut saga = load(pool, id).await?;
    // Once more if the saga changed meanwhile (an operator's retry).
    for _ in 0..2 {
        let finished = Status::parse(&saga.status).filter(|s| s.is_terminal());
        let Some(_) = finished else {
            return Ok(Checked::InFlight);
        };
        let head = format!("saga={id} status={}", saga.status);
        let (saga_type, version) = (&saga.saga_type, saga.definition_version);
        let Some(def) = definitions::find(saga_type, version) else {
            return Ok(mismatch(format!(
                "MISMATCH {head}: no definition {saga_type} v{version} in this build"
            )));
        };
        let state: SagaState = match serde_json::from_value(saga.state.clone()) {
            Ok(s) => s,
            Err(e) => {
                return Ok(mismatch(format!(
                    "MISMATCH {head}: stored state unreadable: {e}"
                )));
            }
        };
        let keys: BTreeSet<&str> = def.steps.iter().map(|s| s.participant.as_str()).collect();
        let mut records = Vec::new();
        for key in keys {
            let (listed, forgotten_before) = listing::list(participants, key, id).await?;
            // Older than what the participant remembers: nothing to compare.
            if forgotten_before.is_some_and(|f| saga.created_at < f + FORGET_MARGIN) {
                return Ok(Checked::Forgotten);
            }
            records.extend(listed);
        }
        let again = load(pool, id).await?;
        if again.version != saga.version {
            saga = again;
            continue;
        }
        let compared = compare(&def, id, &state, &records);
        return Ok(Checked::Finished {
            agrees: compared.agrees(),
            lines: lines(&head, &compared),
        });
    }
    anyhow::bail!("saga {id} keeps changing while it is compared; run again")
}

fn mismatch(line: String) -> Checked {
    Checked::Finished {
        agrees: false,
        lines: vec![(false, line)],
    }
}

fn lines(head: &str, saga: &SagaCheck) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = saga
        .problems
        .iter()
        .map(|p| (false, format!("MISMATCH {head}: {p}")))
        .collect();
    for s in &saga.steps {
        let did: Vec<String> = s.records.iter().map(Record::describe).collect();
        let what = format!(
            "{head} step={} {} ({}): orchestrator {}; participant [{}]",
            s.step,
            s.name,
            s.participant,
            s.state.as_str(),
            did.join(", ")
        );
        if s.problems.is_empty() {
            out.push((true, format!("ok {what}")));
        } else {
            out.push((false, format!("MISMATCH {what}: {}", s.problems.join("; "))));
        }
    }
    out
}

/// The saga ids of the command line (`reconcile [SAGA_ID...]`).
pub fn parse_ids(args: &[&str]) -> anyhow::Result<Vec<Uuid>> {
    args.iter()
        .map(|a| {
            Uuid::parse_str(a).map_err(|_| {
                let shown: String = a.chars().take(40).collect();
                anyhow::anyhow!("not a saga id: {shown:?}")
            })
        })
        .collect()
}
