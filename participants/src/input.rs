//! The order saga's input, as the order, payment and inventory steps read
//! it: an encoded `OrderInput` (what PlaceOrder and StartSaga store for the
//! order saga), checked the same way by every RPC that reads it.
//! Quantities and amounts are bounded so that sums cannot overflow.
//!
//! A payment step of another saga type gets JSON instead, built by its
//! definition's mapping ([`charge`]).

use std::collections::BTreeMap;

use prost::Message as _;
use sagaflow_participant_kit::{Command, Error, key};
use sagaflow_protos::participant::v1::OrderInput;
use serde::{Deserialize, Serialize};

/// The order input of `cmd` (decoded and checked).
pub fn order_input(cmd: &Command) -> Result<OrderInput, Error> {
    parse_input(&cmd.input)
}

/// What a charge needs: who pays, how much, in what currency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    pub customer_id: String,
    pub amount_cents: i64,
    #[serde(default = "euro")]
    pub currency: String,
}

fn euro() -> String {
    "EUR".to_owned()
}

/// The charge `cmd` asks for: from the order saga's `OrderInput`, or, when
/// the input is a JSON object (a saga type defined by a file maps it, as
/// `{customer_id, amount_cents, currency}`; the currency is EUR when
/// absent), from that object, checked by the same rules.
pub fn charge(cmd: &Command) -> Result<Charge, Error> {
    if cmd.input.first() != Some(&b'{') {
        let input = order_input(cmd)?;
        return Ok(Charge {
            customer_id: input.customer_id,
            amount_cents: input.amount_cents,
            currency: input.currency,
        });
    }
    let charge: Charge = cmd.json()?;
    if charge.customer_id.trim().is_empty() {
        return Err(Error::invalid("input.customer_id", "empty"));
    }
    key("input.customer_id", &charge.customer_id)?;
    if !(1..MAX_UNITS).contains(&charge.amount_cents) {
        return Err(Error::invalid(
            "input.amount_cents",
            "not positive or too large",
        ));
    }
    currency(&charge.currency)?;
    Ok(charge)
}

fn currency(code: &str) -> Result<(), Error> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Error::invalid(
            "input.currency",
            "not three upper-case letters",
        ))
    }
}

/// One order line, merged by sku; the JSON shape stored in `items` columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
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
    use sagaflow_participant_kit::MAX_KEY_LEN;
    use sagaflow_protos::participant::v1::OrderItem;
    use sagaflow_protos::participant::v1::StepCommand;
    use uuid::Uuid;

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

    fn problem(raw: StepCommand) -> String {
        order_input(&Command::parse(raw).unwrap())
            .unwrap_err()
            .to_string()
    }

    fn json(input: &str) -> Result<Charge, String> {
        let raw = StepCommand {
            input: input.as_bytes().to_vec(),
            ..command(&OrderInput::default())
        };
        charge(&Command::parse(raw).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_input_decodes() {
        let cmd = Command::parse(command(&input(vec![("sku-a", 1)]))).unwrap();
        assert_eq!(order_input(&cmd).unwrap().customer_id, "cust-alice");
        assert_eq!(charge(&cmd).unwrap().amount_cents, 100);
    }

    #[test]
    fn each_input_field_is_named_in_its_error() {
        let garbage = StepCommand {
            input: vec![0xff, 0xff, 0xff],
            ..command(&input(vec![("sku-a", 1)]))
        };
        assert!(problem(garbage).starts_with("input: not an OrderInput"));
        let zero = command(&input(vec![("sku-a", 0)]));
        assert_eq!(
            problem(zero),
            "input.items[0].quantity: not positive or too large"
        );
    }

    #[test]
    fn a_charge_mapped_as_json_is_checked_by_the_same_rules() {
        assert_eq!(
            json(r#"{"customer_id":"cust-bob","amount_cents":250}"#),
            Ok(Charge {
                customer_id: "cust-bob".into(),
                amount_cents: 250,
                currency: "EUR".into()
            })
        );
        for (bad, why) in [
            (
                r#"{"customer_id":"","amount_cents":1}"#,
                "input.customer_id: empty",
            ),
            (
                r#"{"customer_id":"a\u0000b","amount_cents":1}"#,
                "input.customer_id: contains control characters",
            ),
            (
                r#"{"customer_id":"c","amount_cents":0}"#,
                "input.amount_cents: not positive or too large",
            ),
            (
                r#"{"customer_id":"c","amount_cents":281474976710656}"#,
                "input.amount_cents: not positive or too large",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"eur"}"#,
                "input.currency: not three upper-case letters",
            ),
        ] {
            assert_eq!(json(bad).unwrap_err(), why, "{bad}");
        }
        for bad in [
            r#"{"customer_id":"c","amount_cents":1e99}"#,
            r#"{"customer_id":"c","amount_cents":1,"tip":5}"#,
            r#"{"customer_id":"c"}"#,
            "{",
        ] {
            assert!(
                json(bad)
                    .unwrap_err()
                    .starts_with("input: not the JSON this step takes:"),
                "{bad}"
            );
        }
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
            assert_eq!(problem(command(&bad)), message);
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
