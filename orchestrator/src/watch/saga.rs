//! `WatchSaga`: one saga's view and history, then every entry as it
//! commits.
//!
//! A saga's history seqs are 1, 2, 3, ... (its row's `version`), written in
//! the same statement as the row under the row's lock, so "the entries after
//! seq N" is an exact resume point: a client that reconnects with the last
//! seq it saw gets the rest with no gap and no duplicate, from any instance.
//! Each read is one statement (one snapshot): the view sent with entries is
//! the saga as of the last of them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use sagaflow_protos::orchestrator::v1 as pb;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use super::{Hub, Outgoing, Settings, Stop, buffer, resume};
use crate::saga::Status as SagaStatus;
use crate::store;
use crate::views::{COLUMNS, saga_of, state_of, ts};

/// Entries per message at most (a long history is sent in several).
const CHUNK: usize = 500;

/// One read: the saga as of its last entry, the entries after a seq, and
/// the oldest entry retention kept.
#[derive(Debug)]
pub struct Read {
    pub saga: pb::Saga,
    pub status: Option<SagaStatus>,
    /// The saga's last seq.
    pub version: u64,
    /// The oldest history seq still stored (`None`: all were deleted).
    pub oldest: Option<u64>,
    pub entries: Vec<pb::HistoryEntry>,
}

#[derive(Deserialize)]
struct Entry {
    seq: i64,
    at: i64,
    kind: String,
    status: String,
    detail: String,
}

/// The saga and its entries after `after`, in one snapshot; `None` for an
/// unknown saga.
pub async fn read(pool: &Pool, saga_id: Uuid, after: u64) -> Result<Option<Read>, store::Error> {
    let client = pool.get().await?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, version,
                    (SELECT min(seq) FROM saga_history h WHERE h.saga_id = $1),
                    (SELECT coalesce(json_agg(json_build_object(
                                'seq', h.seq,
                                'at', (extract(epoch FROM h.at) * 1000000)::bigint,
                                'kind', h.kind, 'status', h.status, 'detail', h.detail)
                             ORDER BY h.seq), '[]'::json)
                       FROM saga_history h WHERE h.saga_id = $1 AND h.seq > $2)
             FROM sagas WHERE saga_id = $1"
        ))
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&saga_id, &after]).await? else {
        return Ok(None);
    };
    let saga = saga_of(&row);
    let status = SagaStatus::parse(row.get(10));
    let version = row.get::<_, i64>(11).max(0) as u64;
    let oldest = row.get::<_, Option<i64>>(12).map(|s| s.max(0) as u64);
    let entries: Vec<Entry> =
        serde_json::from_value(row.get(13)).map_err(|e| store::Error::Corrupt {
            saga_id,
            reason: format!("its history cannot be read: {e}"),
        })?;
    let entries = entries
        .into_iter()
        .map(|e| pb::HistoryEntry {
            seq: e.seq.max(0) as u64,
            at: Some(ts(
                DateTime::<Utc>::from_timestamp_micros(e.at).unwrap_or_default()
            )),
            kind: e.kind,
            state: SagaStatus::parse(&e.status)
                .map(state_of)
                .unwrap_or_default() as i32,
            detail: e.detail,
        })
        .collect();
    Ok(Some(Read {
        saga,
        status,
        version,
        oldest,
        entries,
    }))
}

/// Where a watch starts: `Err` when `after_seq` is past the saga's end.
/// Returns the seq the first entries really follow and, when retention
/// deleted some of the requested ones, the seq they start at instead.
pub fn start(after_seq: u64, read: &Read) -> Result<Option<u64>, Status> {
    if after_seq > read.version {
        return Err(views_invalid(format!(
            "{after_seq} is past the saga's last history entry ({})",
            read.version
        )));
    }
    let first_kept = read.oldest.unwrap_or(read.version + 1);
    Ok((after_seq + 1 < first_kept).then_some(first_kept))
}

fn views_invalid(reason: String) -> Status {
    crate::api::invalid("after_seq", &reason)
}

/// Whether the stream ends once everything up to `read` is sent: the saga is
/// COMPLETED or COMPENSATED (nothing can change it any more).
pub fn ends(read: &Read) -> bool {
    matches!(
        read.status,
        Some(SagaStatus::Completed | SagaStatus::Compensated)
    )
}

/// The messages for one read: the saga with the entries, in chunks.
pub fn messages(read: Read, first: bool, pruned_before: Option<u64>) -> Vec<pb::WatchSagaResponse> {
    if read.entries.is_empty() {
        return if first {
            vec![pb::WatchSagaResponse {
                saga: Some(read.saga),
                entries: Vec::new(),
                pruned_before_seq: pruned_before.unwrap_or_default(),
            }]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    let mut entries = read.entries;
    while !entries.is_empty() {
        let rest = entries.split_off(entries.len().min(CHUNK));
        out.push(pb::WatchSagaResponse {
            saga: Some(read.saga.clone()),
            entries,
            pruned_before_seq: if first && out.is_empty() {
                pruned_before.unwrap_or_default()
            } else {
                0
            },
        });
        entries = rest;
    }
    out
}

/// Start watching: the first read happens here, so an unknown saga or a bad
/// `after_seq` is the call's status; the rest runs on a task.
pub async fn watch(
    pool: Pool,
    hub: Arc<Hub>,
    settings: Settings,
    shutdown: CancellationToken,
    saga_id: Uuid,
    after_seq: u64,
) -> Result<Outgoing<pb::WatchSagaResponse>, Status> {
    // Registered before the first read: a change committed in between
    // wakes us.
    let mut wakeups = hub.register(Some(saga_id));
    let Some(first) = read(&pool, saga_id, after_seq).await? else {
        return Err(Status::not_found(format!("saga_id: no saga {saga_id}")));
    };
    let pruned = start(after_seq, &first)?;
    let (sink, stream) = buffer(settings.buffer);
    tokio::spawn(async move {
        let mut last = after_seq;
        let mut next = Some(first);
        let mut is_first = true;
        loop {
            let current = match next.take() {
                Some(r) => r,
                None => match read(&pool, saga_id, last).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        sink.end(Status::not_found(format!("saga_id: no saga {saga_id}")));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(saga.id = %saga_id, error = %e, "watch: read failed");
                        sink.end(resume(
                            "the orchestrator could not read the saga",
                            &format!("after_seq={last}"),
                        ));
                        return;
                    }
                },
            };
            let done = ends(&current);
            let sent_to = current.entries.last().map(|e| e.seq);
            for message in messages(current, is_first, pruned.filter(|_| is_first)) {
                match sink.send(message) {
                    Ok(()) => {}
                    Err(Stop::Gone) => return,
                    Err(Stop::Full) => {
                        tracing::debug!(saga.id = %saga_id, "watch: watcher too slow; ended");
                        sink.end(resume(
                            "the watcher fell behind (its buffer is full)",
                            "after_seq = the last seq received",
                        ));
                        return;
                    }
                }
            }
            is_first = false;
            if let Some(seq) = sent_to {
                last = seq;
            }
            if done {
                return;
            }
            tokio::select! {
                w = wakeups.next() => if w.is_none() { return },
                () = sink.closed() => return,
                () = shutdown.cancelled() => {
                    sink.end(resume(
                        "the orchestrator is shutting down",
                        &format!("after_seq={last}"),
                    ));
                    return;
                }
            }
        }
    });
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_of(version: u64, oldest: Option<u64>, entries: &[u64], status: SagaStatus) -> Read {
        Read {
            saga: pb::Saga::default(),
            status: Some(status),
            version,
            oldest,
            entries: entries
                .iter()
                .map(|&seq| pb::HistoryEntry {
                    seq,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_resume_point_past_the_end_is_refused_naming_the_field() {
        let r = read_of(4, Some(1), &[], SagaStatus::Running);
        let e = start(5, &r).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("after_seq:"), "{}", e.message());
        assert_eq!(start(4, &r).ok(), Some(None));
        assert_eq!(start(0, &r).ok(), Some(None));
    }

    #[test]
    fn pruned_history_is_reported_with_the_oldest_entry_kept() {
        // Entries 1..=3 deleted, 4..=6 kept.
        let r = read_of(6, Some(4), &[4, 5, 6], SagaStatus::Completed);
        assert_eq!(start(0, &r).ok(), Some(Some(4)));
        assert_eq!(start(2, &r).ok(), Some(Some(4)));
        assert_eq!(start(3, &r).ok(), Some(None), "3 was seen: nothing missing");
        // Everything deleted.
        let r = read_of(6, None, &[], SagaStatus::Completed);
        assert_eq!(start(0, &r).ok(), Some(Some(7)));
        assert_eq!(start(6, &r).ok(), Some(None));
    }

    #[test]
    fn the_first_message_always_goes_later_ones_only_with_entries() {
        let r = read_of(3, Some(1), &[], SagaStatus::Running);
        assert_eq!(messages(r, true, None).len(), 1);
        let r = read_of(3, Some(1), &[], SagaStatus::Running);
        assert!(messages(r, false, None).is_empty());
    }

    #[test]
    fn a_long_history_is_chunked_in_order_with_the_pruned_mark_on_the_first() {
        let seqs: Vec<u64> = (10..10 + 1_201).collect();
        let r = read_of(1_210, Some(10), &seqs, SagaStatus::Running);
        let out = messages(r, true, Some(10));
        assert_eq!(out.len(), 3);
        let all: Vec<u64> = out
            .iter()
            .flat_map(|m| m.entries.iter().map(|e| e.seq))
            .collect();
        assert_eq!(all, seqs);
        assert_eq!(out[0].pruned_before_seq, 10);
        assert!(out[1..].iter().all(|m| m.pruned_before_seq == 0));
        assert!(out.iter().all(|m| m.saga.is_some()));
    }

    #[test]
    fn only_completed_and_compensated_end_the_stream() {
        for s in SagaStatus::ALL {
            let r = read_of(1, Some(1), &[], s);
            assert_eq!(
                ends(&r),
                matches!(s, SagaStatus::Completed | SagaStatus::Compensated),
                "{s:?}"
            );
        }
    }
}
