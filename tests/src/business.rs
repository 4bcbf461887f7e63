//! The participants' business rows, read straight from their databases.

use sagaflow_common::db;

use crate::databases::Databases;

/// The first column of the row `sql` finds for saga `saga_id`, if any.
async fn by_saga(db_url: &str, sql: &str, saga_id: &str) -> anyhow::Result<Option<String>> {
    let id = uuid::Uuid::parse_str(saga_id)?;
    let c = db::connect(db_url).await?;
    Ok(c.query_opt(sql, &[&id]).await?.map(|r| r.get(0)))
}

/// The status of the saga's order (`PENDING`, `APPROVED`, `CANCELLED`).
pub async fn order_status(dbs: &Databases, saga_id: &str) -> anyhow::Result<Option<String>> {
    by_saga(
        &dbs.order,
        "SELECT status FROM orders WHERE saga_id = $1",
        saga_id,
    )
    .await
}

/// The status of the saga's payment (`CHARGED`, `REFUNDED`, ...).
pub async fn payment_status(dbs: &Databases, saga_id: &str) -> anyhow::Result<Option<String>> {
    by_saga(
        &dbs.payment,
        "SELECT status FROM payments WHERE saga_id = $1",
        saga_id,
    )
    .await
}

/// The status of the saga's stock reservation (`RESERVED`, `RELEASED`,
/// `VOIDED`, ...).
pub async fn reservation_status(dbs: &Databases, saga_id: &str) -> anyhow::Result<Option<String>> {
    by_saga(
        &dbs.inventory,
        "SELECT status FROM reservations WHERE saga_id = $1",
        saga_id,
    )
    .await
}

/// Units of `sku` in stock.
pub async fn stock(dbs: &Databases, sku: &str) -> anyhow::Result<i64> {
    let c = db::connect(&dbs.inventory).await?;
    Ok(
        c.query_one("SELECT stock FROM items WHERE sku = $1", &[&sku])
            .await?
            .get(0),
    )
}

/// The customer's available credit, in cents.
pub async fn available(dbs: &Databases, customer: &str) -> anyhow::Result<i64> {
    let c = db::connect(&dbs.payment).await?;
    Ok(c.query_one(
        "SELECT available_cents FROM customers WHERE customer_id = $1",
        &[&customer],
    )
    .await?
    .get(0))
}
