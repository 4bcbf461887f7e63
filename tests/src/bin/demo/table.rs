//! The results table: one row per saga as it ends, aligned as it streams.
//!
//! Rows are printed one at a time, so the widths are fixed up front: the
//! order column fits the sample's longest order (within a cap) and cuts
//! longer ones (orders placed from the CLI or the console) with an
//! ellipsis; the result column fits the longest state name. Money reads
//! as the CLI prints it ("EUR 12.50").

use sagaflow_cli::render;
use sagaflow_protos::orchestrator::v1::{PlaceOrderRequest, Saga, StartSagaRequest};
use sagaflow_protos::participant::v1::OrderInput;

/// A saga id: a UUID.
const ID: usize = 36;
/// The longest state name, `COMPENSATION_FAILED`.
const RESULT: usize = 19;
/// Seconds from placement to the end, "12.34s".
const TOOK: usize = 7;
/// The order column never grows beyond this.
const MAX_ORDER: usize = 64;

pub struct Table {
    order: usize,
}

impl Table {
    /// A table whose order column fits `sample` and `others` (sagas of
    /// other types).
    pub fn fitting(sample: &[PlaceOrderRequest], others: &[StartSagaRequest]) -> Table {
        let widest = sample
            .iter()
            .map(|r| describe(&input_of(r)))
            .chain(
                others
                    .iter()
                    .map(|r| describe_input(&r.saga_type, &r.input)),
            )
            .map(|d| d.chars().count())
            .max()
            .unwrap_or(0);
        Table {
            order: widest.clamp("order".len(), MAX_ORDER),
        }
    }

    pub fn header(&self) -> String {
        self.line("saga", "what", "took", "result", "reason")
    }

    /// The row of a saga that ended (or paused).
    pub fn row(&self, saga: &Saga) -> String {
        let order = match &saga.order {
            Some(order) => describe(order),
            None => describe_input(&saga.saga_type, &saga.input_json),
        };
        self.line(
            &saga.saga_id,
            &order,
            &took(saga),
            &render::state_name(saga.state),
            &render::clean(&saga.reason),
        )
    }

    fn line(&self, id: &str, order: &str, took: &str, result: &str, reason: &str) -> String {
        let order = cut(order, self.order);
        let line = format!(
            "{id:<ID$}  {order:<w$}  {took:>TOOK$}  {result:<RESULT$}  {reason}",
            w = self.order
        );
        line.trim_end().to_owned()
    }
}

/// "cust-alice: 2 x sku-widget, 1 x sku-gadget; EUR 11.00", as `sagaflow
/// get` and `sagaflow list` show it.
fn describe(order: &OrderInput) -> String {
    render::clean(&render::order(order))
}

/// A saga of another type by its input: "trip ann: SF-100, H-PARK,
/// AIRPORT; EUR 250.00" for a trip.
fn describe_input(saga_type: &str, input_json: &str) -> String {
    let input: serde_json::Value = serde_json::from_str(input_json).unwrap_or_default();
    let text = |field: &str| input[field].as_str().unwrap_or("?").to_owned();
    let line = match saga_type {
        "trip" => format!(
            "trip {}: {}, {}, {}; {}",
            text("traveller"),
            text("flight"),
            text("hotel"),
            text("car_location"),
            sagaflow_cli::money::format(
                input["amount_cents"].as_i64().unwrap_or(0),
                input["currency"].as_str().unwrap_or("EUR")
            )
        ),
        other => format!("{other} {input_json}"),
    };
    render::clean(&line)
}

/// What the orchestrator stores of a request.
pub fn input_of(r: &PlaceOrderRequest) -> OrderInput {
    OrderInput {
        customer_id: r.customer_id.clone(),
        items: r.items.clone(),
        amount_cents: r.amount_cents,
        currency: r.currency.clone(),
    }
}

/// From creation to the last change, "0.42s".
fn took(saga: &Saga) -> String {
    match (&saga.created_at, &saga.updated_at) {
        (Some(a), Some(b)) => {
            let ms = (b.seconds - a.seconds) * 1000 + i64::from(b.nanos - a.nanos) / 1_000_000;
            format!("{:.2}s", ms.max(0) as f64 / 1000.0)
        }
        _ => String::new(),
    }
}

/// `s` within `width` characters, cut with an ellipsis.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_tests::orders::order;

    #[test]
    fn rows_line_up_whatever_the_order_length() {
        let sample = [
            order("cust-bob", &[("sku-rare", 2)], 25_000),
            order("cust-alice", &[("sku-widget", 2), ("sku-gadget", 1)], 1_100),
        ];
        let table = Table::fitting(&sample, &[]);
        let long = order(
            "cust-alice",
            &[
                ("sku-widget", 1),
                ("sku-gadget", 1),
                ("sku-rare", 1),
                ("sku-soldout", 1),
            ],
            123_456,
        );
        let saga = |r: &PlaceOrderRequest, state: i32, reason: &str| Saga {
            saga_id: "01a20147-b52c-71db-84b1-19b8a2a76747".into(),
            state,
            reason: reason.into(),
            order: Some(input_of(r)),
            ..Default::default()
        };
        let rows = [
            table.row(&saga(&sample[0], 4, "process_payment refused: x")),
            table.row(&saga(&sample[1], 3, "")),
            table.row(&saga(&long, 5, "y")),
        ];
        assert!(rows[0].contains("cust-bob: 2 x sku-rare; EUR 250.00"));
        assert!(rows[2].contains('…'));
        // In characters: the ellipsis is one column, three bytes.
        let result_at = |row: &str| row[..row.find("COMP").unwrap()].chars().count();
        assert_eq!(result_at(&rows[0]), result_at(&rows[1]));
        assert_eq!(result_at(&rows[0]), result_at(&rows[2]));
        assert_eq!(
            result_at(&table.header().replace("result", "COMP")),
            result_at(&rows[0])
        );
    }
}
