//! `CommandLog`: what this participant did for a saga, read from its inbox.
//!
//! The orchestrator records what it believes each step's outcome was; the
//! participant's inbox records what it actually decided, command by command.
//! Serving the inbox read-only lets an operator compare the two for any saga
//! type (`sagaflow-orchestrator reconcile`) without database access to the
//! participant. Every participant serves it next to its step service, over
//! the same listener (and so with the same transport security). The answer
//! says since when the inbox remembers (its retention), so a reader can tell
//! a command never received from one forgotten.

use std::time::{Duration, SystemTime};

use prost::Message as _;
use sagaflow_protos::events::v1::{CommandKind, EventEnvelope, Outcome};
use sagaflow_protos::participant::v1::command_log_server::{CommandLog, CommandLogServer};
use sagaflow_protos::participant::v1::{
    CommandOutcome, ListCommandOutcomesRequest, ListCommandOutcomesResponse,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;

/// Most commands listed for one saga: a saga sends each participant a few
/// commands per step (operator retries add one each); far more means
/// something else is wrong, and the answer stays bounded.
pub const MAX_COMMANDS: i64 = 1000;

/// The read-only inbox service; cheap to clone.
#[derive(Clone)]
pub struct InboxLog {
    pool: deadpool_postgres::Pool,
    /// How long inbox rows are kept ([`crate::retention`]): a reader must
    /// know what may have been forgotten.
    retention: Duration,
}

impl InboxLog {
    pub fn new(pool: deadpool_postgres::Pool, retention: Duration) -> Self {
        Self { pool, retention }
    }

    /// The tonic service.
    pub fn into_server(self) -> CommandLogServer<Self> {
        CommandLogServer::new(self)
    }

    async fn list(&self, saga_id: Uuid) -> Result<Vec<CommandOutcome>, Error> {
        let client = self.pool.get().await?;
        // Rows without an outcome are claims of a transaction still running
        // (never visible to others, but say so rather than rely on it).
        let select = client
            .prepare_cached(
                "SELECT command_id, step, kind, outcome, reason, event_id, envelope, received_at
                 FROM inbox WHERE saga_id = $1 AND outcome IS NOT NULL
                 ORDER BY received_at, command_id LIMIT $2",
            )
            .await?;
        let rows = client.query(&select, &[&saga_id, &MAX_COMMANDS]).await?;
        rows.iter()
            .map(|row| {
                let command_id: Uuid = row.get(0);
                let step: i32 = row.get(1);
                let kind: String = row.get(2);
                let outcome: String = row.get(3);
                let event_id: Option<Uuid> = row.get(5);
                let envelope: Option<Vec<u8>> = row.get(6);
                let received_at: SystemTime = row.get(7);
                // The step name lives in the stored event only.
                let step_name = envelope
                    .as_deref()
                    .and_then(|e| EventEnvelope::decode(e).ok())
                    .map(|e| e.step_name)
                    .unwrap_or_default();
                let mut out = CommandOutcome {
                    command_id: command_id.to_string(),
                    step: step.unsigned_abs(),
                    step_name,
                    reason: row.get::<_, Option<String>>(4).unwrap_or_default(),
                    event_id: event_id.map(|e| e.to_string()).unwrap_or_default(),
                    received_at: Some(received_at.into()),
                    ..CommandOutcome::default()
                };
                out.set_kind(match kind.as_str() {
                    "action" => CommandKind::Action,
                    "compensation" => CommandKind::Compensation,
                    _ => CommandKind::Unspecified,
                });
                out.set_outcome(match outcome.as_str() {
                    "SUCCEEDED" => Outcome::Succeeded,
                    "REFUSED" => Outcome::Refused,
                    _ => Outcome::Unspecified,
                });
                Ok(out)
            })
            .collect()
    }
}

/// The saga id of a request: a UUID, or INVALID_ARGUMENT naming the field.
fn saga_id_of(raw: &str) -> Result<Uuid, Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::invalid("saga_id", "required"));
    }
    Uuid::parse_str(raw).map_err(|_| {
        // Never echo unbounded input.
        let shown: String = raw.chars().take(40).collect();
        Error::invalid("saga_id", format!("not a UUID: {shown:?}"))
    })
}

#[tonic::async_trait]
impl CommandLog for InboxLog {
    async fn list_command_outcomes(
        &self,
        request: Request<ListCommandOutcomesRequest>,
    ) -> Result<Response<ListCommandOutcomesResponse>, Status> {
        let saga_id = saga_id_of(&request.into_inner().saga_id)?;
        let forgotten_before = SystemTime::now()
            .checked_sub(self.retention)
            .map(Into::into);
        let commands = self.list(saga_id).await?;
        Ok(Response::new(ListCommandOutcomesResponse {
            commands,
            forgotten_before,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saga_id_must_be_a_uuid_and_the_error_names_the_field() {
        let id = Uuid::now_v7();
        assert_eq!(saga_id_of(&format!(" {id} ")).unwrap(), id);
        for (raw, problem) in [
            ("", "saga_id: required"),
            ("  ", "saga_id: required"),
            ("not-a-uuid", "saga_id: not a UUID: \"not-a-uuid\""),
        ] {
            let status = Status::from(saga_id_of(raw).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{raw:?}");
            assert_eq!(status.message(), problem);
        }
        let long = "x".repeat(10_000);
        let status = Status::from(saga_id_of(&long).unwrap_err());
        assert!(status.message().len() < 80, "{}", status.message());
    }
}
