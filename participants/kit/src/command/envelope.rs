//! Building the outcome event and naming it.

use std::time::SystemTime;

use sagaflow_protos::events::v1::{CommandKind, EventEnvelope, Outcome};
use uuid::Uuid;

use super::{Command, Decision};

/// `action` / `compensation`, as stored in the inbox and used in event types.
pub fn kind_name(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Action => "action",
        CommandKind::Compensation => "compensation",
        CommandKind::Unspecified => "unspecified",
    }
}

/// `SUCCEEDED` / `REFUSED`, as stored in the inbox.
pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "SUCCEEDED",
        Outcome::Refused => "REFUSED",
        Outcome::Unspecified => "UNSPECIFIED",
    }
}

/// The inverse of [`outcome_name`].
pub(super) fn parse_outcome(name: &str) -> Outcome {
    match name {
        "SUCCEEDED" => Outcome::Succeeded,
        "REFUSED" => Outcome::Refused,
        _ => Outcome::Unspecified,
    }
}

/// `{participant}.{step_name}.{action|compensation}.{succeeded|refused}`:
/// the outbox row's `event_type` and the Pub/Sub attribute of the same name.
pub fn event_type(event: &EventEnvelope) -> String {
    format!(
        "{}.{}.{}.{}",
        event.participant,
        event.step_name,
        kind_name(event.kind()),
        outcome_name(event.outcome()).to_ascii_lowercase()
    )
}

/// The event `event_id` answering `cmd` with `decision`; `output` is the
/// decision's output, already checked ([`sagaflow_common::output::encode`]).
pub(super) fn build(
    event_id: Uuid,
    participant: &str,
    kind: CommandKind,
    cmd: &Command,
    decision: &Decision,
    output: String,
) -> EventEnvelope {
    let mut event = EventEnvelope {
        event_id: event_id.to_string(),
        saga_id: cmd.saga_id.to_string(),
        step: cmd.step.unsigned_abs(),
        step_name: cmd.step_name.clone(),
        command_id: cmd.command_id.to_string(),
        reason: decision.reason.clone(),
        payload: decision.payload.to_string().into_bytes(),
        occurred_at: Some(SystemTime::now().into()),
        participant: participant.to_owned(),
        output,
        ..EventEnvelope::default()
    };
    event.set_kind(kind);
    event.set_outcome(decision.outcome);
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_type_names_participant_step_kind_and_outcome() {
        let cmd = Command::parse(sagaflow_protos::participant::v1::StepCommand {
            command_id: Uuid::now_v7().to_string(),
            saga_id: Uuid::now_v7().to_string(),
            step: 1,
            step_name: "process_payment".into(),
            attempt: 1,
            saga_type: "order".into(),
            input: Vec::new(),
        })
        .unwrap();
        let refused = Decision::refused("credit_limit_exceeded", json!({}));
        let event = build(
            Uuid::now_v7(),
            "payment",
            CommandKind::Action,
            &cmd,
            &refused,
            String::new(),
        );
        assert_eq!(event_type(&event), "payment.process_payment.action.refused");
        assert_eq!(event.command_id, cmd.command_id.to_string());
        assert_eq!(
            parse_outcome(outcome_name(event.outcome())),
            Outcome::Refused
        );
    }
}
