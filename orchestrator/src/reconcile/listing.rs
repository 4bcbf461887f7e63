//! Asking a participant what it did for a saga (`CommandLog`), through the
//! orchestrator's own channel to it.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sagaflow_protos::events::v1::{CommandKind, Outcome};
use sagaflow_protos::participant::v1::ListCommandOutcomesRequest;
use sagaflow_protos::participant::v1::command_log_client::CommandLogClient;
use uuid::Uuid;

use super::{Decided, Record};
use crate::participants::GrpcParticipants;
use crate::saga::Kind;

/// What participant `key` recorded for saga `id`, and since when it
/// remembers (a few tries: a participant may be restarting).
pub(super) async fn list(
    participants: &GrpcParticipants,
    key: &str,
    id: Uuid,
) -> anyhow::Result<(Vec<Record>, Option<SystemTime>)> {
    let channel = participants
        .channel(key)
        .ok_or_else(|| anyhow::anyhow!("no endpoint configured for participant {key}"))?;
    let mut client = CommandLogClient::new(channel);
    let mut tries = 0;
    let listed = loop {
        let mut request = tonic::Request::new(ListCommandOutcomesRequest {
            saga_id: id.to_string(),
        });
        request.set_timeout(Duration::from_secs(10));
        match client.list_command_outcomes(request).await {
            Ok(r) => break r.into_inner(),
            Err(s)
                if tries < 4
                    && matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500 * tries)).await;
            }
            Err(s) => anyhow::bail!(
                "participant {key}: listing saga {id}: {:?}: {}",
                s.code(),
                s.message()
            ),
        }
    };
    let forgotten_before = listed
        .forgotten_before
        .and_then(|t| SystemTime::try_from(t).ok());
    let records = listed
        .commands
        .into_iter()
        .map(|c| {
            let kind = match c.kind() {
                CommandKind::Action => Kind::Action,
                CommandKind::Compensation => Kind::Compensation,
                CommandKind::Unspecified => {
                    anyhow::bail!("participant {key}: command {} of no kind", c.command_id)
                }
            };
            let decided = match c.outcome() {
                Outcome::Succeeded => Decided::Succeeded,
                Outcome::Refused => Decided::Refused,
                Outcome::Unspecified => anyhow::bail!(
                    "participant {key}: command {} without outcome",
                    c.command_id
                ),
            };
            Ok(Record {
                participant: key.to_owned(),
                command_id: Uuid::parse_str(&c.command_id)
                    .with_context(|| format!("participant {key}: command id {:?}", c.command_id))?,
                step: c.step as usize,
                kind,
                decided,
                reason: c.reason,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((records, forgotten_before))
}
