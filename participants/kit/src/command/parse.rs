//! Turning a wire `StepCommand` into a validated [`Command`], before anything
//! is written. Every problem names the offending field.

use sagaflow_protos::participant::v1::StepCommand;
use serde::de::DeserializeOwned;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Error;

/// A validated step command: what a step function is given.
#[derive(Debug, Clone)]
pub struct Command {
    /// Inbox key, stable across re-sends of one command.
    pub command_id: Uuid,
    /// The saga this command belongs to: key business rows by it.
    pub saga_id: Uuid,
    /// The saga's type (`order`, `trip`, …); empty from an older sender.
    pub saga_type: String,
    /// Step index in the saga definition (fits the inbox's `integer`).
    pub step: i32,
    /// The step's name in the definition (`reserve_flight`).
    pub step_name: String,
    /// Which send this is (1 = first); for logs only.
    pub attempt: u32,
    /// The step's input as sent. For a saga type defined by a file it is
    /// JSON, built by the step's `input:` (or `compensation_input:`)
    /// mapping from the saga input and earlier steps' outputs (read it with
    /// [`Command::json`]); for the built-in order saga, an encoded
    /// `OrderInput`.
    pub input: Vec<u8>,
    /// The input as a JSON object, read once on the first field asked for.
    /// (`Err`: why it is none, for an invalid `input`.)
    object: OnceLock<Result<Map<String, Value>, String>>,
}

impl Command {
    /// Validate `raw`. The input is not read here: the step function reads
    /// it (an error it returns for it is an invalid command, rolled back).
    pub fn parse(raw: StepCommand) -> Result<Self, Error> {
        let command_id = parse_uuid("command_id", &raw.command_id)?;
        let saga_id = parse_uuid("saga_id", &raw.saga_id)?;
        let step = i32::try_from(raw.step).map_err(|_| Error::invalid("step", "out of range"))?;
        if raw.step_name.trim().is_empty() {
            return Err(Error::invalid("step_name", "empty"));
        }
        key("step_name", &raw.step_name)?;
        key("saga_type", &raw.saga_type)?;
        Ok(Self {
            command_id,
            saga_id,
            saga_type: raw.saga_type,
            step,
            step_name: raw.step_name,
            attempt: raw.attempt,
            input: raw.input,
            object: OnceLock::new(),
        })
    }

    /// The JSON input as `T`. Anything that is not JSON, or not a `T`, is
    /// an invalid command naming `input` and serde's reason: the caller
    /// (or the definition's mapping) is wrong, and nothing is written.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.input)
            .map_err(|e| Error::invalid("input", format!("not the JSON this step takes: {e}")))
    }

    /// Field `name` of the JSON input, `None` when absent or `null` (a
    /// mapping leaves out a value that was never known, such as the output
    /// of a step whose outcome is unknown).
    pub fn field(&self, name: &str) -> Result<Option<&Value>, Error> {
        let object =
            self.object
                .get_or_init(|| match serde_json::from_slice::<Value>(&self.input) {
                    Ok(Value::Object(fields)) => Ok(fields),
                    Ok(_) => Err("not a JSON object".to_owned()),
                    Err(e) => Err(format!("not the JSON this step takes: {e}")),
                });
        match object {
            Ok(fields) => Ok(fields.get(name).filter(|v| !v.is_null())),
            Err(problem) => Err(Error::invalid("input", problem.clone())),
        }
    }

    /// Field `name` of the JSON input as a key-like string (see [`key`]);
    /// `None` when absent.
    pub fn text(&self, name: &str) -> Result<Option<String>, Error> {
        match self.field(name)? {
            None => Ok(None),
            Some(Value::String(s)) => {
                key(&format!("input.{name}"), s)?;
                Ok(Some(s.clone()))
            }
            Some(_) => Err(Error::invalid(format!("input.{name}"), "not a string")),
        }
    }

    /// Field `name` of the JSON input as a string that must be there.
    pub fn required_text(&self, name: &str) -> Result<String, Error> {
        match self.text(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(Error::invalid(format!("input.{name}"), "empty")),
            None => Err(Error::invalid(format!("input.{name}"), "missing")),
        }
    }
}

/// Longest key-like string (customer id, sku, step name).
pub const MAX_KEY_LEN: usize = 200;

/// A key-like string: at most [`MAX_KEY_LEN`] bytes, no control characters
/// (a NUL would reach Postgres as an encoding error).
pub fn key<'a>(field: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_KEY_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "contains control characters"));
    }
    Ok(value)
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, Error> {
    match Uuid::parse_str(value) {
        Ok(id) if id.is_nil() => Err(Error::invalid(field, "nil UUID")),
        Ok(id) => Ok(id),
        Err(_) => Err(Error::invalid(field, "not a UUID")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(input: &[u8]) -> StepCommand {
        StepCommand {
            command_id: Uuid::now_v7().to_string(),
            saga_id: Uuid::now_v7().to_string(),
            step: 1,
            step_name: "reserve_flight".into(),
            attempt: 1,
            saga_type: "trip".into(),
            input: input.to_vec(),
        }
    }

    fn problem(raw: StepCommand) -> String {
        Command::parse(raw).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_command_parses_and_keeps_its_input_unread() {
        let cmd = Command::parse(command(&[0xff, 0xfe])).unwrap();
        assert_eq!(cmd.step, 1);
        assert_eq!(cmd.saga_type, "trip");
        assert_eq!(cmd.input, [0xff, 0xfe]);
    }

    #[test]
    fn each_field_is_named_in_its_error() {
        let good = command(b"{}");
        let bad_id = StepCommand {
            command_id: "42".into(),
            ..good.clone()
        };
        assert_eq!(problem(bad_id), "command_id: not a UUID");
        let nil_saga = StepCommand {
            saga_id: Uuid::nil().to_string(),
            ..good.clone()
        };
        assert_eq!(problem(nil_saga), "saga_id: nil UUID");
        let step = StepCommand {
            step: u32::MAX,
            ..good.clone()
        };
        assert_eq!(problem(step), "step: out of range");
        let name = StepCommand {
            step_name: "a\0b".into(),
            ..good.clone()
        };
        assert_eq!(problem(name), "step_name: contains control characters");
        let saga_type = StepCommand {
            saga_type: "t".repeat(MAX_KEY_LEN + 1),
            ..good
        };
        assert_eq!(problem(saga_type), "saga_type: longer than 200 bytes");
    }

    #[test]
    fn json_inputs_are_read_field_by_field_with_named_errors() {
        let cmd = Command::parse(command(br#"{"who":"ann","n":3,"gone":null}"#)).unwrap();
        assert_eq!(cmd.required_text("who").unwrap(), "ann");
        assert_eq!(cmd.text("gone").unwrap(), None);
        assert_eq!(cmd.text("absent").unwrap(), None);
        assert_eq!(cmd.field("n").unwrap(), Some(&serde_json::json!(3)));
        assert_eq!(
            cmd.text("n").unwrap_err().to_string(),
            "input.n: not a string"
        );
        assert_eq!(
            cmd.required_text("absent").unwrap_err().to_string(),
            "input.absent: missing"
        );
        let nul = Command::parse(command(b"{\"who\":\"a\\u0000b\"}")).unwrap();
        assert_eq!(
            nul.text("who").unwrap_err().to_string(),
            "input.who: contains control characters"
        );
        let garbage = Command::parse(command(&[0x0a, 0x03])).unwrap();
        assert!(
            garbage
                .text("who")
                .unwrap_err()
                .to_string()
                .starts_with("input: not the JSON this step takes:")
        );
        let array = Command::parse(command(b"[1]")).unwrap();
        assert_eq!(
            array.text("who").unwrap_err().to_string(),
            "input: not a JSON object"
        );
    }
}
