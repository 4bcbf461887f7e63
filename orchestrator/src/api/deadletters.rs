//! The operator's dead-letter RPCs, `ListDeadLetters` and
//! `RedriveDeadLetters`, over [`crate::deadletter`].
//!
//! They replace writing to the database by hand: an operator token is
//! checked before they run ([`crate::auth`]), ids are validated like every
//! other field, and a re-drive of an unknown id re-drives nothing.

use sagaflow_protos::orchestrator::v1 as pb;
use tonic::{Response, Status};

use super::status::storage;
use super::{Api, invalid};
use crate::deadletter;

/// Most ids one `RedriveDeadLetters` call may name.
const MAX_IDS: usize = 1000;

/// `limit`: 1..=500, 0 meaning 50.
pub fn limit_of(raw: u32) -> Result<i64, Status> {
    match raw {
        0 => Ok(50),
        n @ 1..=500 => Ok(i64::from(n)),
        n => Err(invalid("limit", format!("must be 1..500, got {n}"))),
    }
}

/// The ids to re-drive, or `None` for every one not re-driven yet.
pub fn selection_of(req: &pb::RedriveDeadLettersRequest) -> Result<Option<Vec<i64>>, Status> {
    match (req.ids.is_empty(), req.all_pending) {
        (true, false) => Err(invalid("ids", "give dead letter ids, or set all_pending")),
        (false, true) => Err(invalid("ids", "give ids or set all_pending, not both")),
        (true, true) => Ok(None),
        (false, false) => {
            if req.ids.len() > MAX_IDS {
                return Err(invalid("ids", format!("at most {MAX_IDS} ids")));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, id) in req.ids.iter().enumerate() {
                if *id <= 0 {
                    return Err(invalid(
                        format!("ids[{i}]"),
                        format!("must be positive, got {id}"),
                    ));
                }
                if !seen.insert(*id) {
                    return Err(invalid(format!("ids[{i}]"), format!("{id} appears twice")));
                }
            }
            Ok(Some(req.ids.clone()))
        }
    }
}

fn view(d: deadletter::DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        id: d.id,
        event_id: d.event_id.unwrap_or_default(),
        saga_id: d.saga_id.unwrap_or_default(),
        reason: d.reason,
        dead_at: Some(crate::views::ts(d.dead_at)),
        redriven_at: d.redriven_at.map(crate::views::ts),
        data_bytes: d.data_len as u64,
    }
}

impl Api {
    pub(super) async fn list_letters(
        &self,
        req: pb::ListDeadLettersRequest,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let limit = limit_of(req.limit)?;
        let (total, letters) = deadletter::list(self.driver.pool(), limit)
            .await
            .map_err(storage)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            total,
            dead_letters: letters.into_iter().map(view).collect(),
        }))
    }

    pub(super) async fn redrive_letters(
        &self,
        req: pb::RedriveDeadLettersRequest,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let ids = selection_of(&req)?;
        if let Some(ids) = &ids {
            let unknown = deadletter::unknown(self.driver.pool(), ids)
                .await
                .map_err(storage)?;
            if let Some(id) = unknown.first() {
                let i = ids.iter().position(|x| x == id).unwrap_or_default();
                return Err(Status::not_found(format!("ids[{i}]: no dead letter {id}")));
            }
        }
        let redriven = deadletter::redrive(self.driver.pool(), &self.redrive, ids.as_deref())
            .await
            .map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "re-driving dead letters failed");
                Status::unavailable(format!(
                    "re-driving dead letters failed: {e}; a repeat is harmless"
                ))
            })?;
        tracing::info!(redriven, topic = %self.events_topic, "dead letters re-driven");
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redriven: redriven as u32,
            topic: self.events_topic.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(r: Result<impl std::fmt::Debug, Status>, field: &str) {
        let e = r.expect_err("must be refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }

    fn redrive(ids: Vec<i64>, all_pending: bool) -> pb::RedriveDeadLettersRequest {
        pb::RedriveDeadLettersRequest { ids, all_pending }
    }

    #[test]
    fn a_redrive_names_ids_or_all_pending_never_neither_or_both() {
        assert_eq!(selection_of(&redrive(vec![], true)).unwrap(), None);
        assert_eq!(
            selection_of(&redrive(vec![7, 9], false)).unwrap(),
            Some(vec![7, 9])
        );
        named(selection_of(&redrive(vec![], false)), "ids");
        named(selection_of(&redrive(vec![7], true)), "ids");
    }

    #[test]
    fn bad_ids_are_named_by_position() {
        named(selection_of(&redrive(vec![7, 0], false)), "ids[1]");
        named(selection_of(&redrive(vec![7, -3], false)), "ids[1]");
        named(selection_of(&redrive(vec![7, 8, 7], false)), "ids[2]");
        named(selection_of(&redrive((1..=1001).collect(), false)), "ids");
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit_of(0).unwrap(), 50);
        assert_eq!(limit_of(500).unwrap(), 500);
        named(limit_of(501), "limit");
    }
}
