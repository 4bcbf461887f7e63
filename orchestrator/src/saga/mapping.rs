//! Step inputs: how a command's input is built from the saga's input and
//! the outputs of the steps before it, so that one participant (payment,
//! say) serves several saga types with one input shape.
//!
//! A [`Mapping`] names each field of the command's input (a JSON object)
//! and a JSON pointer (RFC 6901) into the saga's *context*:
//!
//! ```json
//! {"input": <the saga's input>, "steps": {"<step name>": {"output": <its output>}}}
//! ```
//!
//! An action may point into the input and into the outputs of the steps
//! before it; a compensation also into its own step's output (a refund
//! needs the payment id). A pointer to something absent (a step whose
//! output is unknown, an optional input field) leaves its field out: the
//! participant must cope, as it copes with a compensation that arrives
//! before its action. A step without a mapping gets the saga's input as it
//! is.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::definition::Definition;
use super::state::{Kind, SagaState};

/// Field of the command's input → JSON pointer into the context.
pub type Mapping = BTreeMap<String, String>;

/// Most fields of one mapping.
pub const MAX_FIELDS: usize = 64;

/// The context a mapping points into: the saga's input (JSON; `null` when
/// it is not JSON) and every step's output so far.
pub fn context(def: &Definition, input: &[u8], state: &SagaState) -> Value {
    let input = serde_json::from_slice(input).unwrap_or(Value::Null);
    let steps: Map<String, Value> = def
        .steps
        .iter()
        .zip(&state.steps)
        .filter_map(|(d, r)| {
            let output = r.output.clone()?;
            Some((d.name.clone(), serde_json::json!({ "output": output })))
        })
        .collect();
    serde_json::json!({ "input": input, "steps": steps })
}

/// The input of `kind` of step `step` (JSON), built by its mapping; `None`
/// when it has none (the saga's input goes as it is).
pub fn command_input(
    def: &Definition,
    input: &[u8],
    state: &SagaState,
    step: usize,
    kind: Kind,
) -> Option<Vec<u8>> {
    let d = def.steps.get(step)?;
    let mapping = match kind {
        Kind::Action => d.input.as_ref()?,
        Kind::Compensation => d.compensation_input.as_ref().or(d.input.as_ref())?,
    };
    let context = context(def, input, state);
    let built: Map<String, Value> = mapping
        .iter()
        .filter_map(|(field, pointer)| Some((field.clone(), context.pointer(pointer)?.clone())))
        .collect();
    serde_json::to_vec(&Value::Object(built)).ok()
}

/// The steps a mapping may point at, by name: those before step `at`, and
/// `at` itself for a compensation.
pub struct Scope<'a> {
    /// Every step's name, in order.
    pub names: &'a [&'a str],
    pub at: usize,
    pub kind: Kind,
    /// The saga's input schema, to check `/input/<field>` against.
    pub schema: Option<&'a Value>,
}

/// Check `mapping`: a problem names the field (`(field, problem)`).
pub fn check(mapping: &Mapping, scope: &Scope<'_>) -> Result<(), (String, String)> {
    if mapping.len() > MAX_FIELDS {
        return Err((
            String::new(),
            format!("{} fields; at most {MAX_FIELDS}", mapping.len()),
        ));
    }
    for (field, pointer) in mapping {
        check_field(field).map_err(|p| (field.clone(), p))?;
        check_pointer(pointer, scope).map_err(|p| (field.clone(), p))?;
    }
    Ok(())
}

fn check_field(field: &str) -> Result<(), String> {
    let ok = field.len() <= 64
        && field.starts_with(|c: char| c.is_ascii_alphabetic())
        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("a field name is a letter, then letters, digits or _ (at most 64)".to_owned())
    }
}

/// The unescaped segments of a JSON pointer.
fn segments(pointer: &str) -> Result<Vec<String>, String> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "{pointer:?} is not a JSON pointer (it starts with /input or /steps/<step>/output)"
        ));
    };
    rest.split('/')
        .map(|s| {
            let mut out = String::with_capacity(s.len());
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "{pointer:?} is not a JSON pointer: ~ must be followed by 0 or 1"
                            ));
                        }
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

fn check_pointer(pointer: &str, scope: &Scope<'_>) -> Result<(), String> {
    if pointer.len() > 500 || pointer.contains('\0') {
        return Err("a pointer has at most 500 characters and no NUL".to_owned());
    }
    let segs = segments(pointer)?;
    let nowhere = |why: String| Err(format!("{pointer:?} points nowhere: {why}"));
    match segs.first().map(String::as_str) {
        Some("input") => match (segs.get(1), scope.schema) {
            (Some(first), Some(schema)) if !schema_allows(schema, first) => {
                nowhere(format!("the input schema allows no property {first:?}"))
            }
            _ => Ok(()),
        },
        Some("steps") => {
            let (Some(name), Some("output")) = (segs.get(1), segs.get(2).map(String::as_str))
            else {
                return nowhere("a step's part is /steps/<step>/output".to_owned());
            };
            let Some(index) = scope.names.iter().position(|n| n == name) else {
                return nowhere(format!("there is no step {name:?}"));
            };
            let reachable = match scope.kind {
                Kind::Action => index < scope.at,
                Kind::Compensation => index <= scope.at,
            };
            if reachable {
                return Ok(());
            }
            nowhere(format!(
                "{name} does not come before this step; {} may use the saga's input and the outputs of earlier steps{}",
                match scope.kind {
                    Kind::Action => "an action",
                    Kind::Compensation => "a compensation",
                },
                match scope.kind {
                    Kind::Action => "",
                    Kind::Compensation => " and its own",
                }
            ))
        }
        _ => nowhere("a pointer starts with /input or /steps/<step>/output".to_owned()),
    }
}

/// Whether an input valid under `schema` may have a top-level property
/// `name`: known only for an object schema that lists its properties and
/// forbids others.
fn schema_allows(schema: &Value, name: &str) -> bool {
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) if closed => props.contains_key(name),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::saga::{Policy, StepDef};

    fn step(name: &str, input: &[(&str, &str)], undo: Option<&[(&str, &str)]>) -> StepDef {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Mapping>()
        };
        StepDef {
            name: name.into(),
            participant: "p".into(),
            action: format!("/t.v1.S/{name}"),
            compensation: Some(format!("/t.v1.S/Undo{name}")),
            forward_only: false,
            group: None,
            input: (!input.is_empty()).then(|| map(input)),
            compensation_input: undo.map(map),
            policy: Policy::default(),
            compensation_policy: Policy::default(),
        }
    }

    fn trip() -> Definition {
        Definition {
            saga_type: "trip".into(),
            version: 1,
            input_schema: None,
            steps: vec![
                step("reserve", &[], None),
                step(
                    "charge",
                    &[
                        ("customer_id", "/input/traveller"),
                        ("amount_cents", "/input/price/cents"),
                        ("reference", "/steps/reserve/output/ref"),
                    ],
                    Some(&[("payment_id", "/steps/charge/output/payment_id")]),
                ),
                step("notify", &[("to", "/input/traveller")], None),
            ],
        }
    }

    const INPUT: &[u8] = br#"{"price":{"cents":1250},"traveller":"ann"}"#;

    fn parsed(bytes: Option<Vec<u8>>) -> Value {
        serde_json::from_slice(&bytes.expect("a mapped input")).expect("JSON")
    }

    #[test]
    fn a_command_input_is_built_from_the_input_and_earlier_outputs() {
        let def = trip();
        let mut state = SagaState::new(3);
        // No mapping: the saga's input as it is.
        assert_eq!(command_input(&def, INPUT, &state, 0, Kind::Action), None);
        // The reserve step's output is not there yet: its field is left out.
        assert_eq!(
            parsed(command_input(&def, INPUT, &state, 1, Kind::Action)),
            json!({"customer_id": "ann", "amount_cents": 1250})
        );
        state.steps[0].output = Some(json!({"ref": "R-7"}));
        assert_eq!(
            parsed(command_input(&def, INPUT, &state, 1, Kind::Action)),
            json!({"customer_id": "ann", "amount_cents": 1250, "reference": "R-7"})
        );
        // The compensation reads its own step's output.
        assert_eq!(
            parsed(command_input(&def, INPUT, &state, 1, Kind::Compensation)),
            json!({})
        );
        state.steps[1].output = Some(json!({"payment_id": "pay-1", "extra": [1]}));
        assert_eq!(
            parsed(command_input(&def, INPUT, &state, 1, Kind::Compensation)),
            json!({"payment_id": "pay-1"})
        );
        // Without its own mapping a compensation gets the action's.
        assert_eq!(
            parsed(command_input(&def, INPUT, &state, 2, Kind::Compensation)),
            json!({"to": "ann"})
        );
        // An input that is not JSON (the order saga's message) reads as null.
        assert_eq!(
            parsed(command_input(&def, b"\x08\x01", &state, 2, Kind::Action)),
            json!({})
        );
        assert_eq!(command_input(&def, INPUT, &state, 9, Kind::Action), None);
        assert_eq!(
            context(&def, INPUT, &state)["steps"],
            json!({"reserve": {"output": {"ref": "R-7"}}, "charge": {"output": {"payment_id": "pay-1", "extra": [1]}}})
        );
    }

    #[test]
    fn a_pointer_must_lead_into_the_input_or_an_earlier_output() {
        let names = ["reserve", "charge", "notify"];
        let schema = json!({"type": "object", "additionalProperties": false,
                            "properties": {"traveller": {}, "price": {}}});
        let scope = |at, kind| Scope {
            names: &names,
            at,
            kind,
            schema: Some(&schema),
        };
        let one =
            |field: &str, pointer: &str| Mapping::from([(field.to_owned(), pointer.to_owned())]);
        let ok = |field, pointer, at, kind| check(&one(field, pointer), &scope(at, kind));
        assert_eq!(ok("to", "/input/traveller", 0, Kind::Action), Ok(()));
        assert_eq!(ok("to", "/input", 0, Kind::Action), Ok(()));
        assert_eq!(
            ok("r", "/steps/reserve/output/ref", 1, Kind::Action),
            Ok(())
        );
        assert_eq!(ok("r", "/steps/reserve/output", 1, Kind::Action), Ok(()));
        assert_eq!(
            ok("p", "/steps/charge/output/id", 1, Kind::Compensation),
            Ok(())
        );
        assert_eq!(
            ok("k", "/steps/a~1b~0c/output", 1, Kind::Action)
                .map_err(|e| e.1.contains("no step \"a/b~c\"")),
            Err(true)
        );
        for (field, pointer, at, kind, want) in [
            (
                "to",
                "input/traveller",
                0,
                Kind::Action,
                "is not a JSON pointer",
            ),
            (
                "to",
                "/inputs/x",
                0,
                Kind::Action,
                "points nowhere: a pointer starts with /input or /steps/<step>/output",
            ),
            (
                "to",
                "/input/email",
                0,
                Kind::Action,
                "points nowhere: the input schema allows no property \"email\"",
            ),
            (
                "p",
                "/steps/charge/output/id",
                1,
                Kind::Action,
                "charge does not come before this step; an action may use",
            ),
            (
                "p",
                "/steps/notify/output",
                1,
                Kind::Compensation,
                "notify does not come before this step; a compensation may use",
            ),
            (
                "p",
                "/steps/ghost/output",
                1,
                Kind::Action,
                "there is no step \"ghost\"",
            ),
            (
                "p",
                "/steps/reserve/ref",
                1,
                Kind::Action,
                "a step's part is /steps/<step>/output",
            ),
            (
                "p",
                "/steps/reserve/output/a~2",
                1,
                Kind::Action,
                "~ must be followed by 0 or 1",
            ),
            ("p", "/input/\0", 1, Kind::Action, "no NUL"),
            (
                "9lives",
                "/input",
                1,
                Kind::Action,
                "a field name is a letter",
            ),
            ("", "/input", 1, Kind::Action, "a field name is a letter"),
        ] {
            let (f, problem) = ok(field, pointer, at, kind).expect_err(pointer);
            assert_eq!(f, field);
            assert!(problem.contains(want), "{pointer}: {problem}");
        }
        let many: Mapping = (0..=MAX_FIELDS)
            .map(|i| (format!("f{i}"), "/input".to_owned()))
            .collect();
        assert!(
            check(&many, &scope(0, Kind::Action))
                .unwrap_err()
                .1
                .contains("at most 64")
        );
        // An open schema allows any property.
        let open = json!({"type": "object"});
        let open_scope = Scope {
            schema: Some(&open),
            ..scope(0, Kind::Action)
        };
        assert_eq!(check(&one("e", "/input/email"), &open_scope), Ok(()));
    }
}
