//! Each order saga's final state against the business rows of the three
//! participant databases: the books of one saga at a time, so a change
//! applied twice, or undone where it should stand, shows up with the saga it
//! belongs to (the cross-database totals of [`crate::invariants`] only say
//! that something is off somewhere).
//!
//! - `COMPLETED`: the order `APPROVED`; exactly one charge (`CHARGED`, the
//!   order's customer and amount) and no refund; exactly one reservation
//!   (`RESERVED`, items = the order's lines merged by sku).
//! - `COMPENSATED`: the order `CANCELLED` or absent; the charge `REFUNDED`,
//!   `VOIDED`, `REFUSED` or absent; the stock `RELEASED`, `VOIDED`, `REFUSED`
//!   or absent (restored, or never taken).
//! - Any row that carries business data (not a tombstone) carries the
//!   order's: its customer, amount, lines.
//! - No business row belongs to no saga.
//!
//! Other states (in flight, paused) are not judged here: they are counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;
use sagaflow_common::db;
use sagaflow_protos::participant::v1::OrderInput;
use uuid::Uuid;

use crate::databases::Databases;

/// A participant's row for one saga: status, customer, amount, lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub status: String,
    pub customer: Option<String>,
    pub amount: Option<i64>,
    /// `(sku, quantity)` in stored order.
    pub lines: Option<Vec<(String, i64)>>,
}

/// What the books say.
#[derive(Debug, Default)]
pub struct Books {
    /// Finished order sagas judged.
    pub checked: usize,
    /// Sagas not judged (not finished, or another saga type).
    pub skipped: usize,
    /// Sagas (or saga ids of orphan rows) whose rows are wrong, and why.
    pub wrong: BTreeMap<Uuid, Vec<String>>,
}

/// The order's lines merged by sku, in sku order (what participants store).
pub fn merged(input: &OrderInput) -> Vec<(String, i64)> {
    let mut m = BTreeMap::<String, i64>::new();
    for i in &input.items {
        *m.entry(i.sku.clone()).or_default() += i.quantity;
    }
    m.into_iter().collect()
}

/// What is wrong with one saga's rows, given its status and input.
pub fn judge(
    status: &str,
    input: &OrderInput,
    order: Option<&Row>,
    payment: Option<&Row>,
    reservation: Option<&Row>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let lines = merged(input);
    let (ok_order, ok_payment, ok_stock): (&[&str], &[&str], &[&str]) = match status {
        "COMPLETED" => (&["APPROVED"], &["CHARGED"], &["RESERVED"]),
        "COMPENSATED" => (
            &["CANCELLED", "absent"],
            &["REFUNDED", "VOIDED", "REFUSED", "absent"],
            &["RELEASED", "VOIDED", "REFUSED", "absent"],
        ),
        _ => return wrong,
    };
    for (what, row, allowed) in [
        ("order", order, ok_order),
        ("payment", payment, ok_payment),
        ("reservation", reservation, ok_stock),
    ] {
        let shown = row.map_or("absent", |r| r.status.as_str());
        if !allowed.contains(&shown) {
            wrong.push(format!(
                "{status} saga: {what} {shown}, expected {allowed:?}"
            ));
        }
        let Some(row) = row else { continue };
        if row
            .customer
            .as_ref()
            .is_some_and(|c| *c != input.customer_id)
        {
            wrong.push(format!(
                "{what} of customer {:?}, not {}",
                row.customer, input.customer_id
            ));
        }
        if row.amount.is_some_and(|a| a != input.amount_cents) {
            wrong.push(format!(
                "{what} of {:?} cents, not {}",
                row.amount, input.amount_cents
            ));
        }
        if row.lines.as_ref().is_some_and(|l| *l != lines) {
            wrong.push(format!("{what} of lines {:?}, not {lines:?}", row.lines));
        }
    }
    wrong
}

/// Judge every saga of the system in `dbs`.
pub async fn check(dbs: &Databases) -> anyhow::Result<Books> {
    let o = db::connect(&dbs.orchestrator).await?;
    let sagas = o
        .query("SELECT saga_id, saga_type, status, input FROM sagas", &[])
        .await?;
    let orders = rows(
        &dbs.order,
        "SELECT saga_id, status, customer_id, amount_cents, items FROM orders",
    )
    .await?;
    let payments = rows(
        &dbs.payment,
        "SELECT saga_id, status, customer_id, amount_cents, NULL::jsonb FROM payments",
    )
    .await?;
    let reservations = rows(
        &dbs.inventory,
        "SELECT saga_id, status, NULL::text, NULL::bigint, items FROM reservations",
    )
    .await?;
    let mut books = Books::default();
    let known: HashSet<Uuid> = sagas.iter().map(|r| r.get(0)).collect();
    for r in &sagas {
        let (id, saga_type, status): (Uuid, String, String) = (r.get(0), r.get(1), r.get(2));
        if saga_type != "order" || !matches!(status.as_str(), "COMPLETED" | "COMPENSATED") {
            books.skipped += 1;
            continue;
        }
        books.checked += 1;
        let wrong = match OrderInput::decode(r.get::<_, &[u8]>(3)) {
            Ok(input) => judge(
                &status,
                &input,
                orders.get(&id),
                payments.get(&id),
                reservations.get(&id),
            ),
            Err(e) => vec![format!("input does not decode: {e}")],
        };
        if !wrong.is_empty() {
            books.wrong.insert(id, wrong);
        }
    }
    for (what, table) in [
        ("order", &orders),
        ("payment", &payments),
        ("reservation", &reservations),
    ] {
        for id in table.keys().filter(|id| !known.contains(id)) {
            books
                .wrong
                .entry(*id)
                .or_default()
                .push(format!("{what} row of no saga"));
        }
    }
    Ok(books)
}

/// `saga_id, status, customer, amount, items` rows by saga id.
async fn rows(url: &str, sql: &str) -> anyhow::Result<HashMap<Uuid, Row>> {
    let c = db::connect(url).await?;
    let mut out = HashMap::new();
    for r in c.query(sql, &[]).await? {
        let items: Option<serde_json::Value> = r.get(4);
        let lines = items.map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    let sku = l.get("sku").and_then(|s| s.as_str()).unwrap_or_default();
                    let qty = l.get("quantity").and_then(|q| q.as_i64()).unwrap_or(-1);
                    (sku.to_owned(), qty)
                })
                .collect()
        });
        out.insert(
            r.get(0),
            Row {
                status: r.get(1),
                customer: r.get(2),
                amount: r.get(3),
                lines,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
