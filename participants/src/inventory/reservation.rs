//! Reserving and releasing stock for one saga.
//!
//! Item rows are always locked in sku order (`ORDER BY sku FOR UPDATE`), by
//! reservations and releases alike, so two transactions touching the same
//! skus cannot deadlock. Lines are merged by sku first ([`lines`]).

use std::collections::HashMap;

use anyhow::Context as _;
use sagaflow_protos::participant::v1::OrderInput;
use serde_json::{Value, json};
use uuid::Uuid;

use sagaflow_participant_kit::{COMPENSATED_BEFORE_ACTION, Decision, Error, Tx};

use crate::input::{Line, lines};

/// A reservation row as locked by [`lock_reservation`].
struct Reservation {
    status: String,
    reason: Option<String>,
    items: Option<Value>,
}

pub(super) async fn reserve(
    tx: &Tx<'_>,
    saga_id: Uuid,
    input: &OrderInput,
) -> Result<Decision, Error> {
    if let Some(existing) = lock_reservation(tx, saga_id).await? {
        return Ok(already_decided(existing));
    }
    let lines = lines(input)?;
    let stock = lock_items(tx, &lines).await?;
    let refusal = refusal(&lines, &stock);
    let status = if refusal.is_some() {
        "REFUSED"
    } else {
        "RESERVED"
    };
    let items = json!(lines);
    let insert = tx
        .prepare_cached(
            "INSERT INTO reservations (saga_id, items, status, reason)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .await?;
    if tx
        .execute(&insert, &[&saga_id, &items, &status, &refusal])
        .await?
        == 0
    {
        // A release's tombstone (or another reservation of this saga) won.
        let existing = lock_reservation(tx, saga_id)
            .await?
            .ok_or_else(|| vanished(saga_id))?;
        return Ok(already_decided(existing));
    }
    let payload = json!({ "reservation_status": status, "items": items });
    if let Some(reason) = refusal {
        return Ok(Decision::refused(reason, payload));
    }
    adjust_stock(tx, &lines, -1).await?;
    Ok(Decision::succeeded(payload))
}

pub(super) async fn release(tx: &Tx<'_>, saga_id: Uuid) -> Result<Decision, Error> {
    let tombstone = tx
        .prepare_cached(
            "INSERT INTO reservations (saga_id, status, reason)
             VALUES ($1, 'VOIDED', 'released_before_reserve')
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .await?;
    if tx.execute(&tombstone, &[&saga_id]).await? == 1 {
        return Ok(Decision::succeeded(
            json!({ "reservation_status": "VOIDED", "tombstone": true }),
        ));
    }
    let existing = lock_reservation(tx, saga_id)
        .await?
        .ok_or_else(|| vanished(saga_id))?;
    if existing.status != "RESERVED" {
        return Ok(Decision::succeeded(
            json!({ "reservation_status": existing.status, "no_op": true }),
        ));
    }
    let items = existing.items.unwrap_or(Value::Null);
    let lines: Vec<Line> = serde_json::from_value(items.clone())
        .with_context(|| format!("reservation {saga_id} has unreadable items"))?;
    lock_items(tx, &lines).await?;
    adjust_stock(tx, &lines, 1).await?;
    let update = tx
        .prepare_cached(
            "UPDATE reservations SET status = 'RELEASED', updated_at = now() WHERE saga_id = $1",
        )
        .await?;
    tx.execute(&update, &[&saga_id]).await?;
    Ok(Decision::succeeded(
        json!({ "reservation_status": "RELEASED", "items": items }),
    ))
}

/// The answer to a reservation for a saga whose row already exists.
fn already_decided(existing: Reservation) -> Decision {
    let payload = json!({ "reservation_status": existing.status, "existing": true });
    match existing.status.as_str() {
        "RESERVED" => Decision::succeeded(payload),
        "REFUSED" => Decision::refused(existing.reason.unwrap_or_default(), payload),
        // Released or voided: the saga was compensated; never "undo, then do".
        _ => Decision::refused(COMPENSATED_BEFORE_ACTION, payload),
    }
}

/// Why `lines` cannot be reserved from `stock`, if they cannot.
fn refusal(lines: &[Line], stock: &HashMap<String, i64>) -> Option<String> {
    let unknown: Vec<&str> = lines
        .iter()
        .filter(|l| !stock.contains_key(&l.sku))
        .map(|l| l.sku.as_str())
        .collect();
    if !unknown.is_empty() {
        return Some(format!("unknown_sku: {}", unknown.join(", ")));
    }
    let short: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let has = stock[&l.sku];
            (has < l.quantity).then(|| format!("{} needs {} has {has}", l.sku, l.quantity))
        })
        .collect();
    (!short.is_empty()).then(|| format!("stock_short: {}", short.join(", ")))
}

/// Lock the rows of `lines`' skus, in sku order; their current stock.
async fn lock_items(tx: &Tx<'_>, lines: &[Line]) -> Result<HashMap<String, i64>, Error> {
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let select = tx
        .prepare_cached("SELECT sku, stock FROM items WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
        .await?;
    let rows = tx.query(&select, &[&skus]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Add `sign * quantity` to each line's stock (rows already locked).
async fn adjust_stock(tx: &Tx<'_>, lines: &[Line], sign: i64) -> Result<(), Error> {
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let deltas: Vec<i64> = lines.iter().map(|l| sign * l.quantity).collect();
    let update = tx
        .prepare_cached(
            "UPDATE items SET stock = items.stock + d.delta
             FROM unnest($1::text[], $2::bigint[]) AS d(sku, delta)
             WHERE items.sku = d.sku",
        )
        .await?;
    tx.execute(&update, &[&skus, &deltas]).await?;
    Ok(())
}

/// The saga's reservation row, locked until the transaction ends.
async fn lock_reservation(tx: &Tx<'_>, saga_id: Uuid) -> Result<Option<Reservation>, Error> {
    let select = tx
        .prepare_cached(
            "SELECT status, reason, items FROM reservations WHERE saga_id = $1 FOR UPDATE",
        )
        .await?;
    Ok(tx
        .query_opt(&select, &[&saga_id])
        .await?
        .map(|row| Reservation {
            status: row.get(0),
            reason: row.get(1),
            items: row.get(2),
        }))
}

fn vanished(saga_id: Uuid) -> Error {
    anyhow::anyhow!("reservation {saga_id} conflicted on insert but cannot be read").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64) -> Line {
        Line {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn refusals_name_every_short_or_unknown_sku() {
        let stock = HashMap::from([("sku-a".to_owned(), 5), ("sku-b".to_owned(), 0)]);
        assert_eq!(refusal(&[line("sku-a", 5)], &stock), None);
        assert_eq!(
            refusal(&[line("sku-a", 6), line("sku-b", 1)], &stock).unwrap(),
            "stock_short: sku-a needs 6 has 5, sku-b needs 1 has 0"
        );
        assert_eq!(
            refusal(&[line("sku-a", 1), line("sku-x", 1)], &stock).unwrap(),
            "unknown_sku: sku-x"
        );
    }
}
