//! Business invariants across the participant databases, checked after a run.

use std::collections::HashMap;

use sagaflow_common::db;

/// Seeded stock (participants' inventory migration).
pub const SEEDED_STOCK: [(&str, i64); 4] = [
    ("sku-widget", 1_000_000),
    ("sku-gadget", 1_000_000),
    ("sku-rare", 5),
    ("sku-soldout", 0),
];

#[derive(Debug, Default)]
pub struct Report {
    pub charged_cents: i64,
    pub refunded_cents: i64,
    pub approved_cents: i64,
    pub stock_consumed: i64,
    pub approved_quantity: i64,
    pub pending_orders: i64,
    pub charged_for_cancelled: i64,
    pub credit_used_cents: i64,
    /// Charged less refunded by sagas of other types (payments with no
    /// order: a trip's charge), checked by their own invariants.
    pub other_net_cents: i64,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Check: money charged − refunded = approved orders' amounts, and credit
/// used = that plus what other saga types' payments hold (a payment with no
/// order row belongs to another saga type: every order saga creates its
/// order before it charges);
/// stock consumed = approved quantities; no order PENDING; no payment
/// CHARGED for a CANCELLED order.
pub async fn check(
    order_url: &str,
    payment_url: &str,
    inventory_url: &str,
) -> anyhow::Result<Report> {
    let order = db::connect(order_url).await?;
    let payment = db::connect(payment_url).await?;
    let inventory = db::connect(inventory_url).await?;
    let mut r = Report::default();

    let orders = order
        .query(
            "SELECT saga_id, status, amount_cents, items FROM orders",
            &[],
        )
        .await?;
    let mut order_status: HashMap<uuid::Uuid, String> = HashMap::new();
    for row in &orders {
        let id: uuid::Uuid = row.get(0);
        let status: String = row.get(1);
        // NULL in a tombstone: a cancel that arrived before the create.
        let amount: Option<i64> = row.get(2);
        let items: Option<serde_json::Value> = row.get(3);
        match status.as_str() {
            "APPROVED" => match (amount, items) {
                (Some(amount), Some(items)) => {
                    r.approved_cents += amount;
                    r.approved_quantity += quantity_of(&items);
                }
                _ => r
                    .violations
                    .push(format!("order {id} is APPROVED without an amount or items")),
            },
            "PENDING" => r.pending_orders += 1,
            _ => {}
        }
        order_status.insert(id, status);
    }

    for row in payment
        .query("SELECT saga_id, status, amount_cents FROM payments", &[])
        .await?
    {
        let id: uuid::Uuid = row.get(0);
        let status: String = row.get(1);
        // NULL in a tombstone (VOIDED: a refund before the charge).
        let amount: i64 = match (status.as_str(), row.get::<_, Option<i64>>(2)) {
            (_, Some(a)) => a,
            ("CHARGED" | "REFUNDED", None) => {
                r.violations
                    .push(format!("payment {id} is {status} without an amount"));
                0
            }
            (_, None) => 0,
        };
        if !order_status.contains_key(&id) {
            if status == "CHARGED" {
                r.other_net_cents += amount;
            }
            continue;
        }
        match status.as_str() {
            "CHARGED" => {
                r.charged_cents += amount;
                if order_status.get(&id).map(String::as_str) == Some("CANCELLED") {
                    r.charged_for_cancelled += 1;
                }
            }
            "REFUNDED" => {
                r.charged_cents += amount;
                r.refunded_cents += amount;
            }
            _ => {}
        }
    }
    let credit: i64 = payment
        .query_one(
            "SELECT COALESCE(SUM(credit_limit_cents - available_cents), 0)::bigint FROM customers",
            &[],
        )
        .await?
        .get(0);
    r.credit_used_cents = credit;

    let seeded: HashMap<&str, i64> = SEEDED_STOCK.into_iter().collect();
    for row in inventory.query("SELECT sku, stock FROM items", &[]).await? {
        let sku: String = row.get(0);
        let stock: i64 = row.get(1);
        if let Some(initial) = seeded.get(sku.as_str()) {
            r.stock_consumed += initial - stock;
        }
    }

    let net = r.charged_cents - r.refunded_cents;
    if net != r.approved_cents {
        r.violations.push(format!(
            "charged {} - refunded {} = {net} != approved orders {}",
            r.charged_cents, r.refunded_cents, r.approved_cents
        ));
    }
    if credit != r.approved_cents + r.other_net_cents {
        r.violations.push(format!(
            "credit used {credit} != approved orders {} + other saga types' charges {}",
            r.approved_cents, r.other_net_cents
        ));
    }
    if r.stock_consumed != r.approved_quantity {
        r.violations.push(format!(
            "stock consumed {} != approved quantities {}",
            r.stock_consumed, r.approved_quantity
        ));
    }
    if r.pending_orders != 0 {
        r.violations
            .push(format!("{} orders left PENDING", r.pending_orders));
    }
    if r.charged_for_cancelled != 0 {
        r.violations.push(format!(
            "{} payments CHARGED for CANCELLED orders",
            r.charged_for_cancelled
        ));
    }
    Ok(r)
}

fn quantity_of(items: &serde_json::Value) -> i64 {
    items
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("quantity").and_then(|q| q.as_i64()))
                .sum()
        })
        .unwrap_or(0)
}
