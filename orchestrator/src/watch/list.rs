//! `WatchSagas`: a list view kept live.
//!
//! The stream starts with a snapshot (counts by state, the newest sagas
//! matching the filter) and goes on with every saga created and every state
//! change. Its cursor is a Postgres snapshot (`xmin:xmax:xip`), not a
//! sequence number: sequence numbers (and transaction ids) are handed out in
//! one order and committed in another, so "everything after seq N" can skip a
//! change that commits late with a smaller N. Each history row records the
//! transaction that wrote it (`saga_history.txid`); a read in snapshot S
//! after cursor C returns exactly the rows visible in S and not in C, and S
//! becomes the next cursor. Every committed change lands in exactly one such
//! difference: none skipped, none sent twice, so a client may keep counts by
//! applying each change's `previous_state -> state`.
//!
//! Several changes of one saga in one read are folded into one (first
//! previous state, last state). A change where neither state is in the filter
//! carries only the saga's id, type and state (it still moves the counts). A
//! read that finds more than [`MAX_CHANGES`] changes, or a cursor older than
//! the history retention (whose rows may be gone), answers with a fresh
//! snapshot flagged `reset`.

use std::collections::BTreeSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use sagaflow_protos::orchestrator::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{Hub, Outgoing, Settings, Stop, buffer, resume};
use crate::saga::Status as SagaStatus;
use crate::store;
use crate::views::{COLUMNS, saga_of, state_of, status_of};

/// Changes one read may return before the client is sent a snapshot instead.
pub const MAX_CHANGES: usize = 5_000;

/// The stored column of history rows' transaction ids (version 80).
pub const MIGRATIONS: &[sagaflow_common::db::Migration] = &[sagaflow_common::db::Migration {
    version: 80,
    name: "history transaction ids",
    sql: r#"
ALTER TABLE saga_history ADD COLUMN txid xid8;
ALTER TABLE saga_history ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX saga_history_txid_idx ON saga_history (txid);
"#,
}];

/// A Postgres snapshot: transactions below `xmin` are finished, those at or
/// above `xmax` had not started, those in `xip` were in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// When it was taken (database clock, ms since the epoch).
    pub at_ms: i64,
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("1.{}.{}", self.at_ms, self.snapshot())
    }

    /// The `pg_snapshot` text.
    pub fn snapshot(&self) -> String {
        let xip: Vec<String> = self.xip.iter().map(u64::to_string).collect();
        format!("{}:{}:{}", self.xmin, self.xmax, xip.join(","))
    }

    /// From a `pg_snapshot`'s text and the time it was taken.
    pub fn from_snapshot(at_ms: i64, text: &str) -> Option<Cursor> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip_text = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let xip = if xip_text.is_empty() {
            Vec::new()
        } else {
            xip_text
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?
        };
        let c = Cursor {
            at_ms,
            xmin,
            xmax,
            xip,
        };
        c.is_valid().then_some(c)
    }

    /// `None` unless `s` is a cursor [`encode`](Self::encode) could have made.
    pub fn decode(s: &str) -> Option<Cursor> {
        if s.len() > 16_384 {
            return None;
        }
        let rest = s.strip_prefix("1.")?;
        let (at, snap) = rest.split_once('.')?;
        let at_ms: i64 = at.parse().ok()?;
        if !(0..=crate::saga::LATEST).contains(&at_ms) {
            return None;
        }
        Cursor::from_snapshot(at_ms, snap)
    }

    /// Postgres's rules: xmin <= xip < xmax, ascending, no repeats; ids
    /// within the 63-bit range.
    fn is_valid(&self) -> bool {
        self.xmin <= self.xmax
            && self.xmax <= i64::MAX as u64
            && self.xip.len() <= 10_000
            && self.xip.windows(2).all(|w| w[0] < w[1])
            && self.xip.iter().all(|x| (self.xmin..self.xmax).contains(x))
    }
}

/// A list watcher's filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty: every state.
    pub states: BTreeSet<SagaStatus>,
    /// Empty: every type.
    pub saga_type: String,
    pub snapshot_size: u32,
}

impl Filter {
    /// From the request, with `INVALID_ARGUMENT` naming the field.
    pub fn of(req: &pb::WatchSagasRequest) -> Result<Filter, Status> {
        let invalid = crate::api::invalid;
        if req.states.len() > 16 {
            return Err(invalid("states", "at most 16 states"));
        }
        let mut states = BTreeSet::new();
        for (i, s) in req.states.iter().enumerate() {
            match status_of(*s) {
                Some(st) => {
                    states.insert(st);
                }
                None => {
                    return Err(invalid(
                        &format!("states[{i}]"),
                        &format!("{s} is not a saga state"),
                    ));
                }
            }
        }
        if req.saga_type.len() > 200 || req.saga_type.chars().any(char::is_control) {
            return Err(invalid(
                "saga_type",
                "at most 200 bytes, no control characters",
            ));
        }
        let snapshot_size = match req.snapshot_size {
            0 => 50,
            n @ 1..=500 => n,
            n => {
                return Err(invalid(
                    "snapshot_size",
                    &format!("must be 1..500, got {n}"),
                ));
            }
        };
        Ok(Filter {
            states,
            saga_type: req.saga_type.clone(),
            snapshot_size,
        })
    }

    pub fn matches(&self, status: SagaStatus) -> bool {
        self.states.is_empty() || self.states.contains(&status)
    }

    fn state_names(&self) -> Vec<&'static str> {
        self.states.iter().map(|s| s.as_str()).collect()
    }
}

/// The first message: counts, the newest sagas, and the cursor they are
/// as of.
pub async fn snapshot(
    pool: &Pool,
    filter: &Filter,
    reset: bool,
) -> Result<pb::WatchSagasResponse, store::Error> {
    let mut client = pool.get().await?;
    let (tx, now) = begin(&mut client).await?;
    let counts = tx
        .query(
            "SELECT status, count(*) FROM sagas
             WHERE ($1 = '' OR saga_type = $1) GROUP BY status",
            &[&filter.saga_type],
        )
        .await?;
    let limit = i64::from(filter.snapshot_size);
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM sagas
                 WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))
                   AND ($2 = '' OR saga_type = $2)
                 ORDER BY created_at DESC, saga_id DESC LIMIT $3"
            ),
            &[&filter.state_names(), &filter.saga_type, &limit],
        )
        .await?;
    tx.commit().await?;
    let cursor = now;
    let mut by_state: Vec<pb::StateCount> = SagaStatus::ALL
        .iter()
        .map(|s| pb::StateCount {
            state: state_of(*s) as i32,
            count: 0,
        })
        .collect();
    for r in &counts {
        if let Some(s) = SagaStatus::parse(r.get(0))
            && let Some(c) = by_state.iter_mut().find(|c| c.state == state_of(s) as i32)
        {
            c.count = r.get(1);
        }
    }
    Ok(pb::WatchSagasResponse {
        snapshot: Some(pb::SagasSnapshot {
            counts: by_state,
            sagas: rows.iter().map(summary).collect(),
            reset,
        }),
        changes: Vec::new(),
        cursor: cursor.encode(),
    })
}

/// A read-only transaction at one snapshot, and that snapshot as a cursor.
async fn begin(
    client: &mut deadpool_postgres::Object,
) -> Result<(deadpool_postgres::Transaction<'_>, Cursor), store::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let now = tx
        .query_one(
            "SELECT pg_current_snapshot()::text,
                    (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await?;
    let cursor = cursor_of(now.get(1), now.get(0))?;
    Ok((tx, cursor))
}

fn cursor_of(at_ms: i64, text: &str) -> Result<Cursor, store::Error> {
    Cursor::from_snapshot(at_ms, text).ok_or_else(|| store::Error::Corrupt {
        saga_id: uuid::Uuid::nil(),
        reason: format!("the database's snapshot {text:?} cannot be read"),
    })
}

/// A saga for a list: no steps, no history.
fn summary(row: &tokio_postgres::Row) -> pb::Saga {
    let mut saga = saga_of(row);
    saga.steps.clear();
    saga.history.clear();
    saga
}

/// What a read after a cursor found.
pub enum Since {
    Changes {
        changes: Vec<pb::SagaChange>,
        cursor: Cursor,
    },
    /// Too many to send as changes: send a snapshot instead.
    TooMany,
}

/// Every change committed after `cursor` and visible now.
pub async fn changes_since(
    pool: &Pool,
    filter: &Filter,
    cursor: &Cursor,
) -> Result<Since, store::Error> {
    let mut client = pool.get().await?;
    let (tx, now) = begin(&mut client).await?;
    let limit = (MAX_CHANGES + 1) as i64;
    let rows = tx
        .query(
            &format!(
                "WITH ch AS (
                     SELECT h.saga_id AS sid, h.seq AS hseq, h.status AS new_status,
                            p.status AS old_status
                     FROM saga_history h
                     LEFT JOIN saga_history p ON p.saga_id = h.saga_id AND p.seq = h.seq - 1
                     WHERE h.txid >= pg_snapshot_xmin($1::text::pg_snapshot)
                       AND NOT pg_visible_in_snapshot(h.txid, $1::text::pg_snapshot)
                       AND (p.status IS NULL OR p.status <> h.status)
                     LIMIT $3
                 )
                 SELECT {COLUMNS}, ch.hseq, ch.new_status, ch.old_status
                 FROM ch JOIN sagas ON sagas.saga_id = ch.sid
                 WHERE ($2 = '' OR saga_type = $2)
                 ORDER BY ch.sid, ch.hseq"
            ),
            &[&cursor.snapshot(), &filter.saga_type, &limit],
        )
        .await?;
    tx.commit().await?;
    if rows.len() > MAX_CHANGES {
        return Ok(Since::TooMany);
    }
    let next = now;
    Ok(Since::Changes {
        changes: fold(filter, &rows),
        cursor: next,
    })
}

/// One change per saga: from the state before its first row to its last.
fn fold(filter: &Filter, rows: &[tokio_postgres::Row]) -> Vec<pb::SagaChange> {
    let mut out: Vec<pb::SagaChange> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let id: uuid::Uuid = rows[i].get(0);
        let mut j = i;
        while j + 1 < rows.len() && rows[j + 1].get::<_, uuid::Uuid>(0) == id {
            j += 1;
        }
        let before = rows[i]
            .get::<_, Option<&str>>(13)
            .and_then(SagaStatus::parse);
        let last = &rows[j];
        let after = SagaStatus::parse(last.get(12));
        let seq = last.get::<_, i64>(11).max(0) as u64;
        if let Some(change) = change(filter, summary(last), before, after, seq) {
            out.push(change);
        }
        i = j + 1;
    }
    out
}

/// The change to send for one saga, full or minimal by the filter.
pub fn change(
    filter: &Filter,
    saga: pb::Saga,
    before: Option<SagaStatus>,
    after: Option<SagaStatus>,
    seq: u64,
) -> Option<pb::SagaChange> {
    let after = after?;
    let matches = filter.matches(after);
    let was_in = before.is_some_and(|b| filter.matches(b));
    let saga = if matches || was_in {
        saga
    } else {
        pb::Saga {
            saga_id: saga.saga_id,
            saga_type: saga.saga_type,
            state: saga.state,
            ..Default::default()
        }
    };
    Some(pb::SagaChange {
        saga: Some(saga),
        previous_state: before.map(state_of).unwrap_or_default() as i32,
        matches,
        seq,
    })
}

/// Start watching: a bad filter or cursor is the call's status; the first
/// read happens here, the rest on a task.
pub async fn watch(
    pool: Pool,
    hub: Arc<Hub>,
    settings: Settings,
    shutdown: CancellationToken,
    req: pb::WatchSagasRequest,
) -> Result<Outgoing<pb::WatchSagasResponse>, Status> {
    let filter = Filter::of(&req)?;
    let resume_from = match req.cursor.as_str() {
        "" => None,
        c => Some(
            Cursor::decode(c)
                .ok_or_else(|| crate::api::invalid("cursor", "not a cursor this API returned"))?,
        ),
    };
    let mut wakeups = hub.register(None);
    let max_age_ms = i64::try_from(settings.cursor_max_age.as_millis()).unwrap_or(i64::MAX);
    let (first, mut cursor) = match resume_from {
        None => {
            let s = snapshot(&pool, &filter, false).await?;
            let c = Cursor::decode(&s.cursor).expect("a cursor just encoded");
            (s, c)
        }
        Some(c) => match changes_since(&pool, &filter, &c).await? {
            Since::Changes { changes, cursor } if cursor.at_ms - c.at_ms <= max_age_ms => (
                pb::WatchSagasResponse {
                    snapshot: None,
                    changes,
                    cursor: cursor.encode(),
                },
                cursor,
            ),
            _ => {
                let s = snapshot(&pool, &filter, true).await?;
                let c = Cursor::decode(&s.cursor).expect("a cursor just encoded");
                (s, c)
            }
        },
    };
    let (sink, stream) = buffer(settings.buffer);
    if sink.send(first).is_err() {
        return Ok(stream);
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                w = wakeups.next() => if w.is_none() { return },
                () = sink.closed() => return,
                () = shutdown.cancelled() => {
                    sink.end(resume(
                        "the orchestrator is shutting down",
                        "the last cursor received",
                    ));
                    return;
                }
            }
            let message = match changes_since(&pool, &filter, &cursor).await {
                Ok(Since::Changes {
                    changes,
                    cursor: next,
                }) => {
                    cursor = next;
                    if changes.is_empty() {
                        continue;
                    }
                    pb::WatchSagasResponse {
                        snapshot: None,
                        changes,
                        cursor: cursor.encode(),
                    }
                }
                Ok(Since::TooMany) => match snapshot(&pool, &filter, true).await {
                    Ok(s) => {
                        cursor = Cursor::decode(&s.cursor).expect("a cursor just encoded");
                        s
                    }
                    Err(e) => return fail(sink, e),
                },
                Err(e) => return fail(sink, e),
            };
            match sink.send(message) {
                Ok(()) => {}
                Err(Stop::Gone) => return,
                Err(Stop::Full) => {
                    sink.end(resume(
                        "the watcher fell behind (its buffer is full)",
                        "the last cursor received",
                    ));
                    return;
                }
            }
        }
    });
    Ok(stream)
}

fn fail(sink: super::Sink<pb::WatchSagasResponse>, e: store::Error) {
    tracing::warn!(error = %e, "watch: list read failed");
    sink.end(resume(
        "the orchestrator could not read the sagas",
        "the last cursor received",
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            at_ms: 1_700_000_000_000,
            xmin: 100,
            xmax: 110,
            xip: vec![100, 104, 109],
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        assert_eq!(c.snapshot(), "100:110:100,104,109");
        let empty = Cursor {
            at_ms: 5,
            xmin: 7,
            xmax: 7,
            xip: vec![],
        };
        assert_eq!(Cursor::decode(&empty.encode()), Some(empty));
        for bad in [
            "",
            "garbage",
            "1.",
            "1.5",
            "2.5.1:2:",
            "1.5.1:2",
            "1.5.1:2::",
            "1.5.3:2:",                    // xmin > xmax
            "1.5.1:5:5",                   // xip at xmax
            "1.5.1:5:0",                   // xip below xmin
            "1.5.1:5:3,2",                 // not ascending
            "1.5.1:5:2,2",                 // repeated
            "1.-5.1:2:",                   // before 1970
            "1.5.1:99999999999999999999:", // beyond u64
            "1.5.1:18446744073709551615:", // beyond Postgres's 63 bits
            "1.5.1:2:\0",
            "1.5. 1:2:",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
        assert_eq!(Cursor::decode(&"1.5.1:2:".repeat(3000)), None);
    }

    #[test]
    fn filters_are_checked_field_by_field() {
        let ok = Filter::of(&pb::WatchSagasRequest::default()).unwrap();
        assert_eq!(ok.snapshot_size, 50);
        assert!(ok.matches(SagaStatus::Running));
        let e = Filter::of(&pb::WatchSagasRequest {
            states: vec![99],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message().starts_with("states[0]:"), "{}", e.message());
        let e = Filter::of(&pb::WatchSagasRequest {
            snapshot_size: 501,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message().starts_with("snapshot_size:"));
        let e = Filter::of(&pb::WatchSagasRequest {
            saga_type: "a\0b".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message().starts_with("saga_type:"));
    }

    #[test]
    fn a_change_is_full_when_it_enters_or_leaves_the_filter_minimal_otherwise() {
        let filter = Filter {
            states: [SagaStatus::CompensationFailed].into(),
            ..Default::default()
        };
        let saga = || pb::Saga {
            saga_id: "s".into(),
            saga_type: "order".into(),
            reason: "why".into(),
            ..Default::default()
        };
        let enter = change(
            &filter,
            saga(),
            Some(SagaStatus::Compensating),
            Some(SagaStatus::CompensationFailed),
            7,
        )
        .unwrap();
        assert!(enter.matches);
        assert_eq!(enter.saga.as_ref().unwrap().reason, "why");
        assert_eq!(enter.previous_state, pb::SagaState::Compensating as i32);
        let leave = change(
            &filter,
            saga(),
            Some(SagaStatus::CompensationFailed),
            Some(SagaStatus::Compensating),
            8,
        )
        .unwrap();
        assert!(!leave.matches);
        assert_eq!(leave.saga.as_ref().unwrap().reason, "why");
        let outside = change(&filter, saga(), None, Some(SagaStatus::Running), 1).unwrap();
        assert!(!outside.matches);
        assert_eq!(outside.previous_state, 0, "created");
        assert_eq!(outside.saga.as_ref().unwrap().reason, "");
        assert_eq!(outside.saga.as_ref().unwrap().saga_type, "order");
        assert!(change(&filter, saga(), None, None, 1).is_none());
    }
}
