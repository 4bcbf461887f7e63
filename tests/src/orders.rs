//! Order requests for tests and the demo.

use sagaflow_protos::orchestrator::v1::PlaceOrderRequest;
use sagaflow_protos::participant::v1::OrderItem;

/// A PlaceOrder request with a fresh idempotency key.
pub fn order(customer: &str, items: &[(&str, i64)], amount_cents: i64) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        customer_id: customer.to_owned(),
        items: items
            .iter()
            .map(|(sku, quantity)| OrderItem {
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .collect(),
        amount_cents,
        currency: "EUR".to_owned(),
    }
}

/// What an order is expected to end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Completed,
    /// Payment refused (customer over the credit limit).
    PaymentRefused,
    /// Stock short (payment refunded).
    StockShort,
    /// Another step refused (a trip's reservation or its pivot): everything
    /// that may have acted is undone.
    Refused,
}

/// The `i`-th order of a mixed batch: mostly good orders, one in seven over
/// the credit limit, one in eleven for a sold-out item.
pub fn mixed(i: usize) -> (PlaceOrderRequest, Expect) {
    let amount = 1_000 + (i as i64 % 17) * 100;
    if i % 7 == 3 {
        (
            order("cust-broke", &[("sku-widget", 1)], amount),
            Expect::PaymentRefused,
        )
    } else if i % 11 == 5 {
        (
            order("cust-alice", &[("sku-soldout", 1)], amount),
            Expect::StockShort,
        )
    } else {
        let qty = 1 + (i as i64 % 3);
        (
            order(
                "cust-alice",
                &[("sku-widget", qty), ("sku-gadget", 1)],
                amount,
            ),
            Expect::Completed,
        )
    }
}
