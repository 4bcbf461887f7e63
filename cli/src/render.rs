//! Human output: aligned tables, states by name, times, money; and the
//! JSON forms of the same messages for `--json`.
//!
//! Everything shown comes from the server, which quotes user input back in
//! reasons and details: control characters are escaped before they reach a
//! terminal.

use prost_types::Timestamp;
use sagaflow_protos::orchestrator::v1::{DeadLetter, HistoryEntry, Saga, SagaState, StepStatus};
use sagaflow_protos::participant::v1::OrderInput;
use serde_json::{Value, json};

use crate::money;

/// A saga state's name without the `SAGA_STATE_` prefix ("COMPLETED").
pub fn state_name(state: i32) -> String {
    match SagaState::try_from(state) {
        Ok(s) => s.as_str_name().trim_start_matches("SAGA_STATE_").to_owned(),
        Err(_) => format!("UNKNOWN_STATE_{state}"),
    }
}

/// A timestamp as RFC 3339 UTC with milliseconds; empty when unset.
pub fn time(t: &Option<Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Time of day only, for a live timeline.
pub fn clock(t: &Option<Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "--:--:--.---".to_owned())
}

/// Control characters escaped (`\n`, `\u{1b}`), everything else as is.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Rows under a header, columns two spaces apart, the last one unpadded.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// "cust-alice: 2 x sku-widget, 1 x sku-gadget; EUR 11.00".
pub fn order(o: &OrderInput) -> String {
    let items: Vec<String> = o
        .items
        .iter()
        .map(|i| format!("{} x {}", i.quantity, i.sku))
        .collect();
    format!(
        "{}: {}; {}",
        o.customer_id,
        items.join(", "),
        money::format(o.amount_cents, currency(o))
    )
}

fn currency(o: &OrderInput) -> &str {
    if o.currency.is_empty() {
        "EUR"
    } else {
        &o.currency
    }
}

/// A whole saga for `get`: the summary, the steps, the history.
pub fn saga(s: &Saga) -> String {
    let mut summary = Table::new(&["saga", s.saga_id.as_str()]);
    let mut field = |k: &str, v: String| {
        if !v.is_empty() {
            summary.row(vec![k.to_owned(), v]);
        }
    };
    field(
        "type",
        format!("{} (definition v{})", s.saga_type, s.definition_version),
    );
    field("state", state_name(s.state));
    field("reason", s.reason.clone());
    field("failed step", s.failed_step.clone());
    field("order", s.order.as_ref().map(order).unwrap_or_default());
    if s.order.is_none() {
        field("input", s.input_json.clone());
    }
    field("idempotency key", s.idempotency_key.clone());
    field("created", time(&s.created_at));
    field("updated", time(&s.updated_at));
    field("trace", s.trace_id.clone());
    let mut out = summary.render();
    out.push('\n');
    out.push_str(&steps(&s.steps).render());
    if !s.history.is_empty() {
        out.push('\n');
        out.push_str(&history(&s.history).render());
    }
    out
}

pub fn steps(steps: &[StepStatus]) -> Table {
    // Outputs get a column only when a step has one.
    let outputs = steps.iter().any(|s| !s.output_json.is_empty());
    let mut headers = vec!["STEP", "PARTICIPANT", "STATUS", "ATTEMPTS", "REASON"];
    if outputs {
        headers.push("OUTPUT");
    }
    let mut t = Table::new(&headers);
    for s in steps {
        let attempts = if s.compensation_attempts > 0 {
            format!("{} (undo {})", s.attempts, s.compensation_attempts)
        } else {
            s.attempts.to_string()
        };
        let mut row = vec![
            s.name.clone(),
            s.participant.clone(),
            s.status.clone(),
            attempts,
            s.reason.clone(),
        ];
        if outputs {
            row.push(s.output_json.clone());
        }
        t.row(row);
    }
    t
}

pub fn history(entries: &[HistoryEntry]) -> Table {
    let mut t = Table::new(&["SEQ", "AT", "KIND", "STATE", "DETAIL"]);
    for e in entries {
        t.row(vec![
            e.seq.to_string(),
            time(&e.at),
            e.kind.clone(),
            state_name(e.state),
            e.detail.clone(),
        ]);
    }
    t
}

/// One row per saga for `list`.
pub fn saga_list(sagas: &[Saga]) -> Table {
    let mut t = Table::new(&["SAGA", "TYPE", "STATE", "CREATED", "ORDER", "REASON"]);
    for s in sagas {
        t.row(vec![
            s.saga_id.clone(),
            s.saga_type.clone(),
            state_name(s.state),
            time(&s.created_at),
            s.order.as_ref().map(order).unwrap_or_default(),
            s.reason.clone(),
        ]);
    }
    t
}

pub fn dead_letters(letters: &[DeadLetter]) -> Table {
    let mut t = Table::new(&[
        "ID", "DEAD AT", "REDRIVEN", "SAGA", "EVENT", "BYTES", "REASON",
    ]);
    for d in letters {
        let redriven = time(&d.redriven_at);
        t.row(vec![
            d.id.to_string(),
            time(&d.dead_at),
            if redriven.is_empty() {
                "pending".to_owned()
            } else {
                redriven
            },
            d.saga_id.clone(),
            d.event_id.clone(),
            d.data_bytes.to_string(),
            d.reason.clone(),
        ]);
    }
    t
}

// --- JSON ----------------------------------------------------------------

fn time_json(t: &Option<Timestamp>) -> Value {
    match time(t) {
        s if s.is_empty() => Value::Null,
        s => Value::String(s),
    }
}

pub fn order_json(o: &OrderInput) -> Value {
    json!({
        "customer_id": o.customer_id,
        "items": o.items.iter().map(|i| json!({"sku": i.sku, "quantity": i.quantity})).collect::<Vec<_>>(),
        "amount_cents": o.amount_cents,
        "currency": currency(o),
        "amount": money::format(o.amount_cents, currency(o)),
    })
}

pub fn entry_json(e: &HistoryEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": time_json(&e.at),
        "kind": e.kind,
        "state": state_name(e.state),
        "detail": e.detail,
    })
}

pub fn step_json(s: &StepStatus) -> Value {
    json!({
        "index": s.index,
        "name": s.name,
        "participant": s.participant,
        "status": s.status,
        "attempts": s.attempts,
        "reason": s.reason,
        "compensation_attempts": s.compensation_attempts,
        "compensation_generation": s.compensation_generation,
        "action_generation": s.action_generation,
        "output": serde_json::from_str::<Value>(&s.output_json).ok(),
    })
}

/// A saga; `history` only when the message carries it.
pub fn saga_json(s: &Saga) -> Value {
    json!({
        "saga_id": s.saga_id,
        "saga_type": s.saga_type,
        "definition_version": s.definition_version,
        "state": state_name(s.state),
        "reason": s.reason,
        "failed_step": s.failed_step,
        "steps": s.steps.iter().map(step_json).collect::<Vec<_>>(),
        "history": s.history.iter().map(entry_json).collect::<Vec<_>>(),
        "created_at": time_json(&s.created_at),
        "updated_at": time_json(&s.updated_at),
        "order": s.order.as_ref().map(order_json),
        "input": serde_json::from_str::<Value>(&s.input_json).ok(),
        "idempotency_key": s.idempotency_key,
        "trace_id": s.trace_id,
    })
}

pub fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "saga_id": d.saga_id,
        "reason": d.reason,
        "dead_at": time_json(&d.dead_at),
        "redriven_at": time_json(&d.redriven_at),
        "data_bytes": d.data_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_escape_control_characters() {
        let mut t = Table::new(&["A", "LONGER", "LAST"]);
        t.row(vec!["wide cell".into(), "x".into(), "end\u{1b}[2J".into()]);
        t.row(vec!["y".into(), "z".into(), String::new()]);
        assert_eq!(
            t.render(),
            "A          LONGER  LAST\n\
             wide cell  x       end\\u{1b}[2J\n\
             y          z\n"
        );
    }

    #[test]
    fn states_print_without_their_prefix() {
        assert_eq!(
            state_name(SagaState::CompensationFailed as i32),
            "COMPENSATION_FAILED"
        );
        assert_eq!(state_name(99), "UNKNOWN_STATE_99");
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        let t = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        });
        assert_eq!(time(&t), "2023-11-14T22:13:20.123Z");
        assert_eq!(clock(&t), "22:13:20.123");
        assert_eq!(time(&None), "");
    }
}
