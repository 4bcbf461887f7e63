//! The order participant (database `sagaflow_order`).
//!
//! | RPC            | kind         | effect                                                    |
//! |----------------|--------------|-----------------------------------------------------------|
//! | `CreateOrder`  | action       | order `PENDING`; refused if a `CANCELLED` tombstone exists |
//! | `CancelOrder`  | compensation | `PENDING` → `CANCELLED`; absent → `CANCELLED` tombstone; `APPROVED` → refused `already_approved` |
//! | `ApproveOrder` | action (pivot) | `PENDING` → `APPROVED`; absent → refused `unknown_order`; `CANCELLED` → refused `order_cancelled` |

use futures::FutureExt as _;
use sagaflow_participant_kit::{
    COMPENSATED_BEFORE_ACTION, Decision, Error, Migration, Participant, Tx,
};
use sagaflow_protos::participant::v1::OrderInput;
use sagaflow_protos::participant::v1::order_service_server::SERVICE_NAME;
use serde_json::json;
use uuid::Uuid;

use crate::input::{lines, order_input};

/// The order participant: its table and its three step RPCs.
pub fn participant() -> Participant {
    Participant::new(crate::Kind::Order.name(), SERVICE_NAME)
        .migration(ORDERS)
        .action("CreateOrder", |tx, cmd| {
            async move { create(tx, cmd.saga_id, &order_input(cmd)?).await }.boxed()
        })
        .compensation("CancelOrder", |tx, cmd| cancel(tx, cmd.saga_id).boxed())
        .action("ApproveOrder", |tx, cmd| approve(tx, cmd.saga_id).boxed())
}

/// A `CANCELLED` row with no customer or items is a tombstone: the order was
/// cancelled before (or instead of) being created.
const ORDERS: Migration = Migration {
    version: 3,
    name: "orders",
    sql: r#"
CREATE TABLE orders (
    saga_id      uuid PRIMARY KEY,
    customer_id  text,
    items        jsonb,
    amount_cents bigint,
    currency     text,
    status       text NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'CANCELLED')),
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'CANCELLED' OR customer_id IS NOT NULL)
);
"#,
};

async fn create(tx: &Tx<'_>, saga_id: Uuid, input: &OrderInput) -> Result<Decision, Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO orders (saga_id, customer_id, items, amount_cents, currency, status)
             VALUES ($1, $2, $3, $4, $5, 'PENDING')
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .await?;
    let items = json!(lines(input)?);
    let inserted = tx
        .execute(
            &insert,
            &[
                &saga_id,
                &input.customer_id,
                &items,
                &input.amount_cents,
                &input.currency,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Decision::succeeded(json!({
            "order_status": "PENDING",
            "amount_cents": input.amount_cents,
            "currency": input.currency,
        })));
    }
    // Lost to a row already there: a tombstone, or an earlier create of this
    // saga under another command id.
    match lock_status(tx, saga_id).await?.as_deref() {
        Some("CANCELLED") => Ok(Decision::refused(
            COMPENSATED_BEFORE_ACTION,
            json!({ "order_status": "CANCELLED" }),
        )),
        Some(status) => Ok(Decision::succeeded(
            json!({ "order_status": status, "existing": true }),
        )),
        None => Err(vanished(saga_id)),
    }
}

async fn cancel(tx: &Tx<'_>, saga_id: Uuid) -> Result<Decision, Error> {
    let tombstone = tx
        .prepare_cached(
            "INSERT INTO orders (saga_id, status, reason)
             VALUES ($1, 'CANCELLED', 'cancelled_before_create')
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .await?;
    if tx.execute(&tombstone, &[&saga_id]).await? == 1 {
        return Ok(Decision::succeeded(
            json!({ "order_status": "CANCELLED", "tombstone": true }),
        ));
    }
    match lock_status(tx, saga_id).await?.as_deref() {
        Some("PENDING") => {
            set_status(tx, saga_id, "CANCELLED", Some("saga_compensated")).await?;
            Ok(Decision::succeeded(
                json!({ "order_status": "CANCELLED", "previous_status": "PENDING" }),
            ))
        }
        Some("CANCELLED") => Ok(Decision::succeeded(
            json!({ "order_status": "CANCELLED", "no_op": true }),
        )),
        Some("APPROVED") => Ok(Decision::refused(
            "already_approved",
            json!({ "order_status": "APPROVED" }),
        )),
        Some(other) => Err(unknown_status(other)),
        None => Err(vanished(saga_id)),
    }
}

async fn approve(tx: &Tx<'_>, saga_id: Uuid) -> Result<Decision, Error> {
    match lock_status(tx, saga_id).await?.as_deref() {
        Some("PENDING") => {
            set_status(tx, saga_id, "APPROVED", None).await?;
            Ok(Decision::succeeded(json!({ "order_status": "APPROVED" })))
        }
        Some("APPROVED") => Ok(Decision::succeeded(
            json!({ "order_status": "APPROVED", "no_op": true }),
        )),
        Some("CANCELLED") => Ok(Decision::refused(
            "order_cancelled",
            json!({ "order_status": "CANCELLED" }),
        )),
        Some(other) => Err(unknown_status(other)),
        None => Ok(Decision::refused("unknown_order", json!({}))),
    }
}

/// The order's status, with its row locked until the transaction ends.
async fn lock_status(tx: &Tx<'_>, saga_id: Uuid) -> Result<Option<String>, Error> {
    let select = tx
        .prepare_cached("SELECT status FROM orders WHERE saga_id = $1 FOR UPDATE")
        .await?;
    Ok(tx
        .query_opt(&select, &[&saga_id])
        .await?
        .map(|row| row.get(0)))
}

async fn set_status(
    tx: &Tx<'_>,
    saga_id: Uuid,
    status: &str,
    reason: Option<&str>,
) -> Result<(), Error> {
    let update = tx
        .prepare_cached(
            "UPDATE orders SET status = $2, reason = $3, updated_at = now() WHERE saga_id = $1",
        )
        .await?;
    tx.execute(&update, &[&saga_id, &status, &reason]).await?;
    Ok(())
}

fn vanished(saga_id: Uuid) -> Error {
    anyhow::anyhow!("order {saga_id} conflicted on insert but cannot be read").into()
}

fn unknown_status(status: &str) -> Error {
    anyhow::anyhow!("order has unknown status {status:?}").into()
}
