//! Turning a wire `StepCommand` into a validated [`Command`], before anything
//! is written. Every problem names the offending field.

use std::collections::BTreeMap;

use prost::Message as _;
use sagaflow_protos::participant::v1::{OrderInput, StepCommand};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// A validated step command.
#[derive(Debug, Clone)]
pub struct Command {
    /// Inbox key, stable across re-sends.
    pub command_id: Uuid,
    pub saga_id: Uuid,
    /// Step index in the saga definition (fits the inbox's `integer`).
    pub step: i32,
    pub step_name: String,
    /// Which send this is (1 = first); for logs only.
    pub attempt: u32,
    /// The decoded saga input, for RPCs that need it.
    pub input: Option<OrderInput>,
    /// The saga input as sent: an encoded `OrderInput` for the order saga,
    /// the canonical JSON input for a saga type defined by a file.
    pub raw_input: Vec<u8>,
}

/// One order line, merged by sku; the JSON shape stored in `items` columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
}

impl Command {
    /// Validate `raw`; `needs_input` requires a valid `OrderInput`.
    pub fn parse(raw: StepCommand, needs_input: bool) -> Result<Self, Error> {
        let command_id = parse_uuid("command_id", &raw.command_id)?;
        let saga_id = parse_uuid("saga_id", &raw.saga_id)?;
        let step = i32::try_from(raw.step).map_err(|_| Error::invalid("step", "out of range"))?;
        if raw.step_name.trim().is_empty() {
            return Err(Error::invalid("step_name", "empty"));
        }
        key("step_name", &raw.step_name)?;
        let input = if needs_input {
            Some(parse_input(&raw.input)?)
        } else {
            None
        };
        Ok(Self {
            command_id,
            saga_id,
            step,
            step_name: raw.step_name,
            attempt: raw.attempt,
            input,
            raw_input: raw.input,
        })
    }

    /// The saga input of an RPC declared with `needs_input`.
    pub fn input(&self) -> Result<&OrderInput, Error> {
        self.input
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("input was not decoded for this RPC").into())
    }
}

/// The input's items merged by sku, in sku order (the lock order). A
/// merged quantity past [`MAX_UNITS`] is an error, never a wrapped sum.
pub fn lines(input: &OrderInput) -> Result<Vec<Line>, Error> {
    let mut merged = BTreeMap::<&str, i64>::new();
    for item in &input.items {
        let total = merged.entry(item.sku.as_str()).or_default();
        *total = total
            .checked_add(item.quantity)
            .filter(|q| *q < MAX_UNITS)
            .ok_or_else(|| {
                Error::invalid(
                    "input.items",
                    format!("the quantities of one sku add up past {MAX_UNITS}"),
                )
            })?;
    }
    Ok(merged
        .into_iter()
        .map(|(sku, quantity)| Line {
            sku: sku.to_owned(),
            quantity,
        })
        .collect())
}

/// Largest quantity or amount (exclusive); the orchestrator's API enforces
/// the same bound, so an order it accepts is never refused here.
pub const MAX_UNITS: i64 = 1 << 48;
/// Most lines in one order.
pub const MAX_LINES: usize = 100;
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

/// Decode and check the order input: the same input travels with every
/// command of a saga, so it is checked the same way by every RPC that reads
/// it. Quantities and amounts are bounded so that sums cannot overflow.
fn parse_input(bytes: &[u8]) -> Result<OrderInput, Error> {
    let input = OrderInput::decode(bytes)
        .map_err(|e| Error::invalid("input", format!("not an OrderInput: {e}")))?;
    if input.customer_id.trim().is_empty() {
        return Err(Error::invalid("input.customer_id", "empty"));
    }
    key("input.customer_id", &input.customer_id)?;
    if !(0..MAX_UNITS).contains(&input.amount_cents) {
        return Err(Error::invalid(
            "input.amount_cents",
            "negative or too large",
        ));
    }
    if !(input.currency.len() == 3 && input.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(Error::invalid(
            "input.currency",
            "not three upper-case letters",
        ));
    }
    if input.items.is_empty() {
        return Err(Error::invalid("input.items", "empty"));
    }
    if input.items.len() > MAX_LINES {
        return Err(Error::invalid(
            "input.items",
            format!("more than {MAX_LINES} lines"),
        ));
    }
    for (i, item) in input.items.iter().enumerate() {
        if item.sku.trim().is_empty() {
            return Err(Error::invalid(format!("input.items[{i}].sku"), "empty"));
        }
        key(&format!("input.items[{i}].sku"), &item.sku)?;
        if !(1..MAX_UNITS).contains(&item.quantity) {
            return Err(Error::invalid(
                format!("input.items[{i}].quantity"),
                "not positive or too large",
            ));
        }
    }
    lines(&input)?;
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_protos::participant::v1::OrderItem;

    fn input(items: Vec<(&str, i64)>) -> OrderInput {
        OrderInput {
            customer_id: "cust-alice".into(),
            items: items
                .into_iter()
                .map(|(sku, quantity)| OrderItem {
                    sku: sku.into(),
                    quantity,
                })
                .collect(),
            amount_cents: 100,
            currency: "EUR".into(),
        }
    }

    fn command(input: &OrderInput) -> StepCommand {
        StepCommand {
            command_id: Uuid::now_v7().to_string(),
            saga_id: Uuid::now_v7().to_string(),
            step: 1,
            step_name: "process_payment".into(),
            attempt: 1,
            saga_type: "order".into(),
            input: input.encode_to_vec(),
        }
    }

    fn problem(raw: StepCommand, needs_input: bool) -> String {
        Command::parse(raw, needs_input).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_command_parses() {
        let cmd = Command::parse(command(&input(vec![("sku-a", 1)])), true).unwrap();
        assert_eq!(cmd.step, 1);
        assert_eq!(cmd.input().unwrap().customer_id, "cust-alice");
    }

    #[test]
    fn each_field_is_named_in_its_error() {
        let good = command(&input(vec![("sku-a", 1)]));
        let bad_id = StepCommand {
            command_id: "42".into(),
            ..good.clone()
        };
        assert_eq!(problem(bad_id, false), "command_id: not a UUID");
        let nil_saga = StepCommand {
            saga_id: Uuid::nil().to_string(),
            ..good.clone()
        };
        assert_eq!(problem(nil_saga, false), "saga_id: nil UUID");
        let garbage = StepCommand {
            input: vec![0xff, 0xff, 0xff],
            ..good.clone()
        };
        assert!(problem(garbage.clone(), true).starts_with("input: not an OrderInput"));
        assert!(
            Command::parse(garbage, false).is_ok(),
            "compensations ignore input"
        );
        let zero = command(&input(vec![("sku-a", 0)]));
        assert_eq!(
            problem(zero, true),
            "input.items[0].quantity: not positive or too large"
        );
    }

    #[test]
    fn malformed_or_hostile_inputs_are_invalid_arguments() {
        let cases: Vec<(OrderInput, &str)> = vec![
            (
                OrderInput {
                    customer_id: "cust\0alice".into(),
                    ..input(vec![("sku-a", 1)])
                },
                "input.customer_id: contains control characters",
            ),
            (
                input(vec![("sku\0a", 1)]),
                "input.items[0].sku: contains control characters",
            ),
            (
                input(vec![("sku-a", MAX_UNITS - 1), ("sku-a", MAX_UNITS - 1)]),
                "input.items: the quantities of one sku add up past 281474976710656",
            ),
            (
                input((0..=MAX_LINES).map(|_| ("sku-a", 1)).collect()),
                "input.items: more than 100 lines",
            ),
            (
                OrderInput {
                    currency: "Z".repeat(1 << 20),
                    ..input(vec![("sku-a", 1)])
                },
                "input.currency: not three upper-case letters",
            ),
            (
                input(vec![("s".repeat(MAX_KEY_LEN + 1).as_str(), 1)]),
                "input.items[0].sku: longer than 200 bytes",
            ),
        ];
        for (bad, message) in cases {
            assert_eq!(problem(command(&bad), true), message);
        }
    }

    #[test]
    fn merged_quantities_never_wrap() {
        let huge = OrderInput {
            items: vec![
                sagaflow_protos::participant::v1::OrderItem {
                    sku: "sku-a".into(),
                    quantity: i64::MAX,
                },
                sagaflow_protos::participant::v1::OrderItem {
                    sku: "sku-a".into(),
                    quantity: i64::MAX,
                },
            ],
            ..input(vec![])
        };
        assert!(lines(&huge).is_err());
    }

    #[test]
    fn lines_merge_repeated_skus_in_sku_order() {
        let merged = lines(&input(vec![("sku-b", 2), ("sku-a", 1), ("sku-b", 3)])).unwrap();
        let pairs: Vec<_> = merged
            .iter()
            .map(|l| (l.sku.as_str(), l.quantity))
            .collect();
        assert_eq!(pairs, [("sku-a", 1), ("sku-b", 5)]);
    }
}
