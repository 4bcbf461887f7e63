//! A step's output: the small JSON object a participant may return with a
//! successful action (a payment id, a booking reference). The orchestrator
//! stores it with the step and hands it to later commands and to the
//! step's compensation through the definition's input mappings.

use serde_json::Value;

/// Most bytes of one output, as JSON text.
pub const MAX_OUTPUT_BYTES: usize = 4096;

/// Check an output before it is committed: a JSON object of at most
/// [`MAX_OUTPUT_BYTES`] bytes; its JSON text.
pub fn encode(output: &Value) -> Result<String, String> {
    if !output.is_object() {
        return Err("an output must be a JSON object".to_owned());
    }
    let text = output.to_string();
    if text.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_OUTPUT_BYTES} a step output may have",
            text.len()
        ));
    }
    Ok(text)
}

/// Read an output as it arrives (an event's or a reply's `output`):
/// empty is none; anything but a JSON object of at most
/// [`MAX_OUTPUT_BYTES`] bytes is an error saying why.
pub fn decode(text: &str) -> Result<Option<Value>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_OUTPUT_BYTES} a step output may have",
            text.len()
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(Some(v)),
        Ok(_) => Err("not a JSON object".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_are_small_json_objects() {
        assert_eq!(
            encode(&json!({"id": "p-1"})).as_deref(),
            Ok(r#"{"id":"p-1"}"#)
        );
        assert_eq!(
            encode(&json!([1])),
            Err("an output must be a JSON object".to_owned())
        );
        let big = json!({ "x": "a".repeat(MAX_OUTPUT_BYTES) });
        assert!(encode(&big).unwrap_err().contains("more than the 4096"));
        let fits = json!({ "x": "a".repeat(MAX_OUTPUT_BYTES - 8) });
        assert_eq!(encode(&fits).map(|t| t.len()), Ok(MAX_OUTPUT_BYTES));

        assert_eq!(decode(""), Ok(None));
        assert_eq!(decode(r#"{"id":"p-1"}"#), Ok(Some(json!({"id": "p-1"}))));
        assert_eq!(decode("[1]"), Err("not a JSON object".to_owned()));
        assert!(decode("{").unwrap_err().starts_with("not JSON: "));
        assert!(decode("\0").unwrap_err().starts_with("not JSON: "));
        let text = big.to_string();
        assert_eq!(
            decode(&text),
            Err(format!(
                "{} bytes, more than the 4096 a step output may have",
                text.len()
            ))
        );
    }
}
