//! A saga's input: JSON, checked against its definition's `input_schema`
//! (JSON Schema draft 2020-12) before anything is written.
//!
//! - [`check_schema`]: at start, a definition's schema must be a valid
//!   draft 2020-12 schema that compiles (no remote references: nothing is
//!   fetched).
//! - [`parse`]: the JSON text a client sends, bounded in size, with no NUL
//!   character in any string or key.
//! - [`validate`]: the input against the schema; the error names the JSON
//!   pointer into the input and the rule (the schema keyword) it breaks.
//! - [`canonical`]: the bytes stored (keys sorted, no spaces), so the same
//!   document written differently is the same input for idempotency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::saga::Definition;

/// The draft every input schema is read as.
pub const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";
/// Largest input a client may send, in bytes of JSON text.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Longest message quoted in an error (the crate's messages quote the
/// offending value, which may be long).
const MAX_MESSAGE: usize = 200;

/// Why an input was refused: where in it (a JSON pointer, `""` for the
/// whole document), the rule, and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub pointer: String,
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    /// `input/items/0/quantity: 0 is less than the minimum of 1 (rule: minimum)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "input{}: {} (rule: {})",
            self.pointer, self.message, self.rule
        )
    }
}

fn bounded(s: String) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Check a definition's `input_schema`: a mapping (or `true`/`false`), of
/// draft 2020-12 (a `$schema` naming another draft is refused), valid
/// against the draft's meta-schema, and compilable.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("must be a JSON Schema: a mapping (or true / false)".to_owned());
    }
    if let Some(draft) = schema.get("$schema") {
        let named = draft.as_str().map(|s| s.trim_end_matches('#'));
        if named != Some(DRAFT) {
            return Err(bounded(format!(
                "$schema is {draft}: Sagaflow reads input schemas as draft 2020-12 ({DRAFT})"
            )));
        }
    }
    if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
        let at = e.instance_path().to_string();
        let at = if at.is_empty() { "/".to_owned() } else { at };
        return Err(bounded(format!(
            "not a valid draft 2020-12 schema at {at}: {e}"
        )));
    }
    jsonschema::draft202012::new(schema)
        .map(drop)
        .map_err(|e| bounded(format!("cannot be used: {e}")))
}

/// The JSON text a client sent, parsed: at most [`MAX_INPUT_BYTES`].
pub fn parse(text: &str) -> Result<Value, Refusal> {
    let refuse = |rule: &str, message: String| Refusal {
        pointer: String::new(),
        rule: rule.to_owned(),
        message,
    };
    if text.len() > MAX_INPUT_BYTES {
        return Err(refuse(
            "size",
            format!(
                "{} bytes is more than the {MAX_INPUT_BYTES} an input may have",
                text.len()
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(refuse("json", "is required (a JSON document)".to_owned()));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| refuse("json", bounded(format!("is not JSON: {e}"))))?;
    match nul_at(&value, &mut String::new()) {
        Some(pointer) => Err(Refusal {
            pointer,
            rule: "nul".to_owned(),
            message: "contains a NUL character (\\u0000)".to_owned(),
        }),
        None => Ok(value),
    }
}

/// The JSON pointer of the first string (a key or a value) in `value`
/// holding a NUL, whatever its type's schema says: PostgreSQL text cannot
/// hold one, so a participant could only refuse it later, after the saga
/// began. `at` is the pointer of `value` itself.
fn nul_at(value: &Value, at: &mut String) -> Option<String> {
    let escaped = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        Value::String(s) if s.contains('\0') => Some(at.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = at.len();
            at.push_str(&format!("/{i}"));
            let found = nul_at(item, at);
            at.truncate(len);
            found
        }),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let len = at.len();
            at.push('/');
            at.push_str(&escaped(key));
            let found = match key.contains('\0') {
                true => Some(at.clone()),
                false => nul_at(item, at),
            };
            at.truncate(len);
            found
        }),
        _ => None,
    }
}

/// The compiled schema of `def`, built once per type and version (a
/// version never changes).
fn validator(def: &Definition) -> Result<Option<Arc<jsonschema::Validator>>, String> {
    type Cache = Mutex<HashMap<(String, u32), Arc<jsonschema::Validator>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let Some(schema) = &def.input_schema else {
        return Ok(None);
    };
    let cache = CACHE.get_or_init(Default::default);
    let key = (def.saga_type.clone(), def.version);
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(Some(v.clone()));
    }
    let compiled = Arc::new(
        jsonschema::draft202012::new(schema)
            .map_err(|e| bounded(format!("the input schema cannot be used: {e}")))?,
    );
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, compiled.clone());
    Ok(Some(compiled))
}

/// Check `input` against `def`'s schema; the first problem, by position
/// in the input.
pub fn validate(def: &Definition, input: &Value) -> Result<(), Refusal> {
    let Some(v) = validator(def).map_err(|message| Refusal {
        pointer: String::new(),
        rule: "schema".to_owned(),
        message,
    })?
    else {
        return Ok(());
    };
    let mut errors: Vec<Refusal> = v
        .iter_errors(input)
        .map(|e| Refusal {
            pointer: e.instance_path().to_string(),
            rule: e.kind().keyword().to_owned(),
            message: bounded(e.to_string()),
        })
        .collect();
    errors.sort_by(|a, b| a.pointer.cmp(&b.pointer).then(a.rule.cmp(&b.rule)));
    match errors.into_iter().next() {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// The bytes stored for `input`: keys sorted at every level, no spaces.
pub fn canonical(input: &Value) -> Vec<u8> {
    let mut v = input.clone();
    v.sort_all_objects();
    serde_json::to_vec(&v).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn def(schema: Value) -> Definition {
        Definition {
            saga_type: format!("t{}", rand::random::<u32>()),
            version: 1,
            steps: vec![],
            input_schema: Some(schema),
        }
    }

    fn order() -> Definition {
        crate::definitions::order::definition()
    }

    fn refused(d: &Definition, input: Value) -> Refusal {
        validate(d, &input).unwrap_err()
    }

    #[test]
    fn the_order_schema_takes_what_place_order_takes() {
        let ok = json!({"customer_id": "cust-alice", "items": [{"sku": "sku-widget", "quantity": 2}], "amount_cents": 1000, "currency": "EUR"});
        validate(&order(), &ok).unwrap();
        let no_currency =
            json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 1}], "amount_cents": 1});
        validate(&order(), &no_currency).unwrap();
    }

    #[test]
    fn a_refusal_names_the_pointer_and_the_rule() {
        let d = order();
        let r = refused(
            &d,
            json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 0}], "amount_cents": 1}),
        );
        assert_eq!(
            (r.pointer.as_str(), r.rule.as_str()),
            ("/items/0/quantity", "minimum")
        );
        assert!(r.to_string().starts_with("input/items/0/quantity: "), "{r}");
        let r = refused(
            &d,
            json!({"customer_id": "c", "items": [], "amount_cents": 1}),
        );
        assert_eq!(
            (r.pointer.as_str(), r.rule.as_str()),
            ("/items", "minItems")
        );
        let r = refused(
            &d,
            json!({"items": [{"sku": "s", "quantity": 1}], "amount_cents": 1}),
        );
        assert_eq!((r.pointer.as_str(), r.rule.as_str()), ("", "required"));
        assert!(r.to_string().starts_with("input: "), "{r}");
        let r = refused(
            &d,
            json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 1}], "amount_cents": 1e30}),
        );
        assert_eq!(
            (r.pointer.as_str(), r.rule.as_str()),
            ("/amount_cents", "maximum")
        );
        let r = refused(
            &d,
            json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 1}], "amount_cents": "1"}),
        );
        assert_eq!(r.rule, "type");
        let r = refused(
            &d,
            json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 1}], "amount_cents": 1, "extra": true}),
        );
        assert_eq!(r.rule, "additionalProperties");
        let r = refused(
            &d,
            json!({"customer_id": "c", "items": [{"sku": "s", "quantity": 1}], "amount_cents": 1, "currency": "eur"}),
        );
        assert_eq!(
            (r.pointer.as_str(), r.rule.as_str()),
            ("/currency", "pattern")
        );
    }

    #[test]
    fn messages_quoting_huge_values_are_cut() {
        let d = def(json!({"type": "string", "maxLength": 3}));
        let r = refused(&d, Value::String("x".repeat(50_000)));
        assert!(r.message.len() < 1000, "{}", r.message.len());
        assert_eq!(r.rule, "maxLength");
    }

    #[test]
    fn a_nul_anywhere_is_refused_naming_where() {
        let at = |text: &str| {
            let r = parse(text).unwrap_err();
            assert_eq!(r.rule, "nul", "{r}");
            r.pointer
        };
        assert_eq!(at(r#""a\u0000""#), "");
        assert_eq!(at(r#"{"traveller": "a\u0000b"}"#), "/traveller");
        assert_eq!(
            at(r#"{"items": [{"sku": "x"}, {"sku": "\u0000"}]}"#),
            "/items/1/sku"
        );
        assert_eq!(at(r#"{"a/b": {"c~d": ["\u0000"]}}"#), "/a~1b/c~0d/0");
        assert_eq!(at(r#"{"k\u0000": 1}"#), "/k\u{0}");
        assert!(
            parse(r#"{"ok": "tab\tand line\n", "n": 0}"#).is_ok(),
            "other control characters are the schema's business"
        );
    }

    #[test]
    fn text_is_parsed_within_bounds() {
        assert_eq!(parse("").unwrap_err().rule, "json");
        assert_eq!(parse("{").unwrap_err().rule, "json");
        assert_eq!(parse("{\"a\":1} x").unwrap_err().rule, "json");
        let big = format!("\"{}\"", "a".repeat(MAX_INPUT_BYTES));
        assert_eq!(parse(&big).unwrap_err().rule, "size");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse(&deep).unwrap_err().rule, "json");
        assert_eq!(parse("{\"a\":\"\\u0001\"}").unwrap(), json!({"a": "\u{1}"}));
        assert_eq!(parse("{\"a\":\"\\u0000\"}").unwrap_err().rule, "nul");
    }

    #[test]
    fn the_same_document_written_differently_is_stored_the_same() {
        let a = parse("{\"b\": [1, {\"y\": 2, \"x\": 1}], \"a\": \"s\"}").unwrap();
        let b = parse("{\"a\":\"s\",\"b\":[1,{\"x\":1,\"y\":2}]}").unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            br#"{"a":"s","b":[1,{"x":1,"y":2}]}"#.to_vec()
        );
    }

    #[test]
    fn schemas_are_checked() {
        check_schema(&json!({"type": "object"})).unwrap();
        check_schema(&json!(true)).unwrap();
        check_schema(&json!({"$schema": DRAFT, "type": "object"})).unwrap();
        let e = check_schema(&json!("object")).unwrap_err();
        assert!(e.contains("must be a JSON Schema"), "{e}");
        let e = check_schema(&json!({"$schema": "http://json-schema.org/draft-07/schema#"}))
            .unwrap_err();
        assert!(e.contains("draft 2020-12"), "{e}");
        let e = check_schema(&json!({"type": "objekt"})).unwrap_err();
        assert!(
            e.contains("not a valid draft 2020-12 schema at /type"),
            "{e}"
        );
        let e = check_schema(&json!({"properties": {"a": {"minimum": "one"}}})).unwrap_err();
        assert!(e.contains("/properties/a/minimum"), "{e}");
        let e = check_schema(&json!({"type": "string", "pattern": "(("})).unwrap_err();
        assert!(!e.is_empty());
        let e = check_schema(&json!({"$ref": "https://schemas.example/x.json"})).unwrap_err();
        assert!(e.contains("cannot be used"), "{e}");
    }

    #[test]
    fn a_definition_without_a_schema_takes_any_input() {
        let mut d = def(json!(true));
        d.input_schema = None;
        validate(&d, &json!([1, "x"])).unwrap();
    }
}
