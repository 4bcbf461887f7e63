//! Checking what clients send, before anything is written. Every problem is
//! `INVALID_ARGUMENT` naming the field and the rule; input is never echoed
//! unbounded ([`preview`]).
//!
//! The bounds match the participants' (`participants::command::parse`):
//! an order the API accepts is never refused by a participant as malformed.

use sagaflow_protos::orchestrator::v1 as pb;
use sagaflow_protos::participant::v1::{OrderInput, OrderItem};
use tonic::Status;
use uuid::Uuid;

use super::currency;

/// Longest key, id or name (idempotency key, request id, customer, sku).
pub const MAX_KEY_LEN: usize = 200;
/// Most lines in one order.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity or amount (exclusive), as the participants enforce.
pub const MAX_UNITS: i64 = 1 << 48;
/// Longest operator reason kept.
pub const MAX_REASON_LEN: usize = 1000;
/// Longest piece of input quoted back in an error.
const PREVIEW: usize = 32;

pub fn invalid(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// `s` quoted for an error message: escaped, and cut after a few characters.
pub fn preview(s: &str) -> String {
    match s.char_indices().nth(PREVIEW) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// A key-like string (idempotency key, request id, customer id, sku):
/// trimmed, at most [`MAX_KEY_LEN`] bytes, no control characters (NUL,
/// newline, escape, ...). `None` when empty.
pub fn key<'a>(field: &str, raw: &'a str) -> Result<Option<&'a str>, Status> {
    match raw.trim() {
        "" => Ok(None),
        k if k.len() > MAX_KEY_LEN => {
            Err(invalid(field, format!("longer than {MAX_KEY_LEN} bytes")))
        }
        k if k.chars().any(char::is_control) => Err(invalid(field, "contains control characters")),
        k => Ok(Some(k)),
    }
}

/// A key that must be there.
pub fn required_key<'a>(field: &str, raw: &'a str) -> Result<&'a str, Status> {
    key(field, raw)?.ok_or_else(|| invalid(field, "is required"))
}

/// A saga id.
pub fn saga_id(raw: &str) -> Result<Uuid, Status> {
    if raw.len() > 64 {
        return Err(invalid("saga_id", "is not a UUID"));
    }
    Uuid::parse_str(raw.trim()).map_err(|_| invalid("saga_id", "is not a UUID"))
}

/// An operator's reason: free text of at most [`MAX_REASON_LEN`] bytes,
/// with line breaks and tabs but no other control characters.
pub fn reason(raw: &str, required: bool) -> Result<Option<&str>, Status> {
    match raw.trim() {
        "" if required => Err(invalid("reason", "is required")),
        "" => Ok(None),
        r if r.len() > MAX_REASON_LEN => Err(invalid(
            "reason",
            format!("longer than {MAX_REASON_LEN} bytes"),
        )),
        r if r.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            Err(invalid("reason", "contains control characters"))
        }
        r => Ok(Some(r)),
    }
}

/// A count within `1..MAX_UNITS`.
fn units(field: impl std::fmt::Display, value: i64) -> Result<i64, Status> {
    if (1..MAX_UNITS).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("must be within 1..{MAX_UNITS}, got {value}"),
        ))
    }
}

/// An order saga's input as `StartSaga` takes it (JSON, already valid
/// against the order schema), as the `PlaceOrder` request it stands for.
pub fn order_from_json(
    input: serde_json::Value,
    idempotency_key: &str,
) -> Result<pb::PlaceOrderRequest, Status> {
    #[derive(serde::Deserialize)]
    struct Order {
        customer_id: String,
        items: Vec<Item>,
        amount_cents: i64,
        #[serde(default)]
        currency: String,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        sku: String,
        quantity: i64,
    }
    let o: Order = serde_json::from_value(input).map_err(|e| invalid("input", e))?;
    Ok(pb::PlaceOrderRequest {
        idempotency_key: idempotency_key.to_owned(),
        customer_id: o.customer_id,
        items: o
            .items
            .into_iter()
            .map(|i| OrderItem {
                sku: i.sku,
                quantity: i.quantity,
            })
            .collect(),
        amount_cents: o.amount_cents,
        currency: o.currency,
    })
}

/// A `PlaceOrder` error about a field of the order, as `StartSaga` names
/// it: a JSON pointer into its input (`items[1].sku: …` becomes
/// `input/items/1/sku: …`). Other errors pass as they are.
pub fn as_input_pointer(status: Status) -> Status {
    if status.code() != tonic::Code::InvalidArgument {
        return status;
    }
    let msg = status.message();
    let Some((field, reason)) = msg.split_once(": ") else {
        return status;
    };
    if field == "idempotency_key" || field.contains(' ') {
        return status;
    }
    let pointer: String = field
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .map(|part| format!("/{part}"))
        .collect();
    Status::invalid_argument(format!("input{pointer}: {reason}"))
}

/// Check a `PlaceOrder` request's shape (not yet the catalogue or the
/// customer): the idempotency key and the order input.
pub fn place_order(req: &pb::PlaceOrderRequest) -> Result<(&str, OrderInput), Status> {
    let key = required_key("idempotency_key", &req.idempotency_key)?;
    let customer = required_key("customer_id", &req.customer_id)?;
    if req.items.is_empty() {
        return Err(invalid("items", "at least one item is required"));
    }
    if req.items.len() > MAX_ITEMS {
        return Err(invalid("items", format!("at most {MAX_ITEMS} items")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut items = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.iter().enumerate() {
        let sku = required_key(&format!("items[{i}].sku"), &item.sku)?;
        if !seen.insert(sku) {
            return Err(invalid(
                format!("items[{i}].sku"),
                format!("{} appears twice", preview(sku)),
            ));
        }
        let quantity = units(format!("items[{i}].quantity"), item.quantity)?;
        items.push(OrderItem {
            sku: sku.to_owned(),
            quantity,
        });
    }
    let amount_cents = units("amount_cents", req.amount_cents)?;
    let currency = match req.currency.trim() {
        "" => "EUR".to_owned(),
        c if currency::is_known(c) => c.to_owned(),
        c => {
            return Err(invalid(
                "currency",
                format!("{} is not an ISO 4217 currency code", preview(c)),
            ));
        }
    };
    Ok((
        key,
        OrderInput {
            customer_id: customer.to_owned(),
            items,
            amount_cents,
            currency,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::PlaceOrderRequest {
        pb::PlaceOrderRequest {
            idempotency_key: "k1".into(),
            customer_id: "cust-alice".into(),
            items: vec![OrderItem {
                sku: "sku-widget".into(),
                quantity: 2,
            }],
            amount_cents: 1000,
            currency: String::new(),
        }
    }

    /// The request with `mutate` applied is refused, naming `field`.
    fn rejects(mutate: impl FnOnce(&mut pb::PlaceOrderRequest), field: &str) -> String {
        let mut r = good();
        mutate(&mut r);
        let e = place_order(&r).expect_err("must be refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{} should name {field}",
            e.message()
        );
        e.message().to_owned()
    }

    #[test]
    fn a_good_request_validates_with_default_currency() {
        let request = good();
        let (key, input) = place_order(&request).unwrap();
        assert_eq!(key, "k1");
        assert_eq!(input.currency, "EUR");
        assert_eq!(input.amount_cents, 1000);
    }

    #[test]
    fn each_bad_field_is_named() {
        rejects(|r| r.idempotency_key = " ".into(), "idempotency_key");
        rejects(|r| r.idempotency_key = "x".repeat(201), "idempotency_key");
        rejects(|r| r.customer_id.clear(), "customer_id");
        rejects(|r| r.items.clear(), "items");
        rejects(|r| r.items[0].sku.clear(), "items[0].sku");
        rejects(|r| r.items[0].quantity = 0, "items[0].quantity");
        rejects(|r| r.items[0].quantity = -3, "items[0].quantity");
        rejects(|r| r.items.push(r.items[0].clone()), "items[1].sku");
        rejects(|r| r.amount_cents = 0, "amount_cents");
        rejects(|r| r.amount_cents = -1, "amount_cents");
        rejects(|r| r.currency = "euro".into(), "currency");
        rejects(|r| r.currency = "ZZZ".into(), "currency");
    }

    #[test]
    fn huge_numbers_are_refused_at_the_participants_bound() {
        rejects(|r| r.amount_cents = MAX_UNITS, "amount_cents");
        rejects(|r| r.amount_cents = i64::MAX, "amount_cents");
        rejects(|r| r.items[0].quantity = MAX_UNITS, "items[0].quantity");
        let mut r = good();
        r.amount_cents = MAX_UNITS - 1;
        r.items[0].quantity = MAX_UNITS - 1;
        assert!(place_order(&r).is_ok());
        rejects(
            |r| {
                r.items = (0..=MAX_ITEMS)
                    .map(|i| OrderItem {
                        sku: format!("sku-{i}"),
                        quantity: 1,
                    })
                    .collect()
            },
            "items",
        );
    }

    #[test]
    fn control_characters_are_refused_in_every_key_alike() {
        for bad in ["a\0b", "a\nb", "a\u{1b}[31mb", "a\rb"] {
            rejects(|r| r.idempotency_key = bad.into(), "idempotency_key");
            rejects(|r| r.customer_id = bad.into(), "customer_id");
            rejects(|r| r.items[0].sku = bad.into(), "items[0].sku");
            let e = key("request_id", bad).expect_err("refused");
            assert!(e.message().starts_with("request_id: "), "{}", e.message());
        }
        assert!(reason("line one\nline two\tend", true).is_ok());
        for bad in ["a\0b", "a\u{1b}b"] {
            let e = reason(bad, true).expect_err("refused");
            assert!(e.message().starts_with("reason: "), "{}", e.message());
        }
    }

    #[test]
    fn unbounded_input_is_never_echoed() {
        let huge = "Z".repeat(1 << 20);
        let message = rejects(|r| r.currency = huge.clone(), "currency");
        assert!(message.len() < 100, "{} bytes", message.len());
        let message = rejects(
            |r| {
                r.items.push(r.items[0].clone());
                r.items[0].sku = "s".repeat(MAX_KEY_LEN);
                r.items[1].sku = "s".repeat(MAX_KEY_LEN);
            },
            "items[1].sku",
        );
        assert!(message.len() < 100, "{message}");
        assert!(saga_id(&"0".repeat(1 << 20)).is_err());
    }

    #[test]
    fn operator_fields_are_checked_and_named() {
        let named = |r: Result<(), Status>, field: &str| {
            let e = r.expect_err("must be refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        };
        named(saga_id("nope").map(|_| ()), "saga_id");
        named(
            key("request_id", &"r".repeat(201)).map(|_| ()),
            "request_id",
        );
        named(key("request_id", "a\nb").map(|_| ()), "request_id");
        named(reason("  ", true).map(|_| ()), "reason");
        named(reason(&"x".repeat(1001), false).map(|_| ()), "reason");
        assert_eq!(key("request_id", " r-1 ").unwrap(), Some("r-1"));
        assert_eq!(key("request_id", "").unwrap(), None);
        assert_eq!(reason("", false).unwrap(), None);
    }

    #[test]
    fn place_order_fields_become_pointers_into_the_input() {
        let msg = |s: Status| s.message().to_owned();
        assert_eq!(
            msg(as_input_pointer(invalid("items[1].sku", "unknown item"))),
            "input/items/1/sku: unknown item"
        );
        assert_eq!(
            msg(as_input_pointer(invalid(
                "customer_id",
                "contains control characters"
            ))),
            "input/customer_id: contains control characters"
        );
        // Not about the input, or not a field: as it was.
        assert_eq!(
            msg(as_input_pointer(invalid("idempotency_key", "is required"))),
            "idempotency_key: is required"
        );
        let other = as_input_pointer(Status::unavailable("items: down"));
        assert_eq!(other.code(), tonic::Code::Unavailable);
        assert_eq!(other.message(), "items: down");
    }

    #[test]
    fn an_order_as_json_is_the_place_order_request() {
        let json = serde_json::json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 2}], "amount_cents": 7});
        let req = order_from_json(json, "k").unwrap();
        assert_eq!(req.idempotency_key, "k");
        assert_eq!(req.items[0].quantity, 2);
        assert_eq!(req.currency, "");
        let (_, input) = place_order(&req).unwrap();
        assert_eq!(input.currency, "EUR");
    }
}
