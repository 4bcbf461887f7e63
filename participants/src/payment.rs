//! The payment participant (database `sagaflow_payment`).
//!
//! | RPC              | kind         | effect                                                         |
//! |------------------|--------------|----------------------------------------------------------------|
//! | `ProcessPayment` | action       | charge `amount_cents` from the customer's available credit: `CHARGED`; refused `credit_limit_exceeded` / `unknown_customer` (recorded as `REFUSED`) |
//! | `RefundPayment`  | compensation | `CHARGED` → `REFUNDED`, credit restored; refused `refunds_held: <customer>` while the customer's refunds are held; absent → `VOIDED` tombstone; otherwise a no-op |
//! | `GetCustomers`   | read-only    | the requested customers that exist (at most 1000 ids of at most 200 bytes, no control characters) |
//!
//! **Held refunds.** A back office can hold a customer's refunds (set
//! `customers.refunds_held`, for example while a chargeback or a fraud review
//! is open). A refund of a charge of that customer is then refused with
//! `refunds_held: <customer>`, and the charge stays `CHARGED`: the saga pauses
//! (`COMPENSATION_FAILED`) where an operator can see it, and once the hold is
//! lifted `RetrySaga` sends the refund again as a new command, which
//! succeeds. Refunds with nothing to give back (a tombstone, a refused or
//! already refunded payment) are not held: no money moves.
//!
//! Lock order: the payment row (by `saga_id`) before the customer row, except
//! that a first charge locks the customer before inserting its payment row —
//! which no other transaction can hold yet except a tombstone, and a tombstone
//! never waits for a customer.

use futures::FutureExt as _;
use sagaflow_participant_kit::{
    COMPENSATED_BEFORE_ACTION, Decision, Error, Migration, Participant, Tx, key,
};
use sagaflow_protos::participant::v1::payment_service_server::{
    PaymentService, PaymentServiceServer, SERVICE_NAME,
};
use sagaflow_protos::participant::v1::{
    CommandAck, Customer, GetCustomersRequest, GetCustomersResponse, StepCommand,
};
use serde_json::json;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::input::Charge;

/// The payment participant: its tables and seeds, its two step RPCs, and
/// `GetCustomers`.
pub fn participant() -> Participant {
    Participant::new(crate::Kind::Payment.name(), SERVICE_NAME)
        .migration(TABLES)
        .migration(SEEDS)
        .migration(REFUND_HOLDS)
        .action("ProcessPayment", |tx, cmd| {
            async move { charge(tx, cmd.saga_id, &crate::input::charge(cmd)?).await }.boxed()
        })
        .compensation("RefundPayment", |tx, cmd| refund(tx, cmd.saga_id).boxed())
        .other_methods(|pool| PaymentServiceServer::new(Lookups { pool }))
}

/// A `VOIDED` row with no customer is a tombstone: the refund arrived before
/// (or instead of) the charge.
const TABLES: Migration = Migration {
    version: 3,
    name: "customers and payments",
    sql: r#"
CREATE TABLE customers (
    customer_id        text PRIMARY KEY,
    name               text NOT NULL,
    credit_limit_cents bigint NOT NULL CHECK (credit_limit_cents >= 0),
    available_cents    bigint NOT NULL CHECK (available_cents >= 0)
);
CREATE TABLE payments (
    saga_id      uuid PRIMARY KEY,
    customer_id  text,
    amount_cents bigint,
    status       text NOT NULL CHECK (status IN ('CHARGED', 'REFUSED', 'REFUNDED', 'VOIDED')),
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'VOIDED' OR (customer_id IS NOT NULL AND amount_cents IS NOT NULL))
);
"#,
};

const SEEDS: Migration = Migration {
    version: 4,
    name: "seed customers",
    sql: r#"
INSERT INTO customers (customer_id, name, credit_limit_cents, available_cents) VALUES
    ('cust-alice', 'Alice', 100000000, 100000000),
    ('cust-bob',   'Bob',   10000,     10000),
    ('cust-broke', 'Broke', 0,         0)
ON CONFLICT (customer_id) DO NOTHING;
"#,
};

/// Whether the customer's refunds are held (see the module docs).
const REFUND_HOLDS: Migration = Migration {
    version: 5,
    name: "refund holds",
    sql: r#"
ALTER TABLE customers ADD COLUMN refunds_held boolean NOT NULL DEFAULT false;
"#,
};

/// `GetCustomers`, over the participant's pool.
#[derive(Clone)]
struct Lookups {
    pool: deadpool_postgres::Pool,
}

impl Lookups {
    async fn lookup(&self, ids: Vec<String>) -> Result<Vec<Customer>, Error> {
        if ids.len() > MAX_LOOKUP {
            return Err(Error::invalid(
                "customer_ids",
                format!("more than {MAX_LOOKUP}"),
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            key(&format!("customer_ids[{i}]"), id)?;
        }
        let client = self.pool.get().await?;
        let select = client
            .prepare_cached(
                "SELECT customer_id FROM customers WHERE customer_id = ANY($1) ORDER BY customer_id",
            )
            .await?;
        let rows = client.query(&select, &[&ids]).await?;
        Ok(rows
            .iter()
            .map(|row| Customer {
                customer_id: row.get(0),
            })
            .collect())
    }
}

/// Most customers one `GetCustomers` call may ask for.
const MAX_LOOKUP: usize = 1000;

#[tonic::async_trait]
impl PaymentService for Lookups {
    async fn process_payment(
        &self,
        _: Request<StepCommand>,
    ) -> Result<Response<CommandAck>, Status> {
        Err(crate::served_as_a_step("ProcessPayment"))
    }

    async fn refund_payment(
        &self,
        _: Request<StepCommand>,
    ) -> Result<Response<CommandAck>, Status> {
        Err(crate::served_as_a_step("RefundPayment"))
    }

    async fn get_customers(
        &self,
        request: Request<GetCustomersRequest>,
    ) -> Result<Response<GetCustomersResponse>, Status> {
        let customers = self.lookup(request.into_inner().customer_ids).await?;
        Ok(Response::new(GetCustomersResponse { customers }))
    }
}

/// Cents as units with two decimals: `25000` is `250.00`.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

/// A payment row as locked by [`lock_payment`].
struct Payment {
    status: String,
    reason: Option<String>,
    customer_id: Option<String>,
    amount_cents: Option<i64>,
}

async fn charge(tx: &Tx<'_>, saga_id: Uuid, input: &Charge) -> Result<Decision, Error> {
    if let Some(existing) = lock_payment(tx, saga_id).await? {
        return Ok(already_decided(existing));
    }
    let customer = &input.customer_id;
    let amount = input.amount_cents;
    let select = tx
        .prepare_cached("SELECT available_cents FROM customers WHERE customer_id = $1 FOR UPDATE")
        .await?;
    let available: Option<i64> = tx.query_opt(&select, &[customer]).await?.map(|r| r.get(0));
    let refusal = match available {
        None => Some(format!("unknown_customer: {customer}")),
        Some(has) if has < amount => Some(format!(
            "credit_limit_exceeded: {customer} needs {cur} {} has {cur} {}",
            money(amount),
            money(has),
            cur = input.currency
        )),
        Some(_) => None,
    };
    let status = if refusal.is_some() {
        "REFUSED"
    } else {
        "CHARGED"
    };
    let insert = tx
        .prepare_cached(
            "INSERT INTO payments (saga_id, customer_id, amount_cents, status, reason)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .await?;
    let inserted = tx
        .execute(&insert, &[&saga_id, customer, &amount, &status, &refusal])
        .await?;
    if inserted == 0 {
        // A refund's tombstone (or another charge of this saga) got there first.
        let existing = lock_payment(tx, saga_id)
            .await?
            .ok_or_else(|| vanished(saga_id))?;
        return Ok(already_decided(existing));
    }
    let payload =
        json!({ "payment_status": status, "customer_id": customer, "amount_cents": amount });
    if let Some(reason) = refusal {
        return Ok(Decision::refused(reason, payload));
    }
    let debit = tx
        .prepare_cached(
            "UPDATE customers SET available_cents = available_cents - $2 WHERE customer_id = $1",
        )
        .await?;
    tx.execute(&debit, &[customer, &amount]).await?;
    Ok(Decision::succeeded(payload))
}

/// The answer to a charge for a saga whose payment row already exists.
fn already_decided(existing: Payment) -> Decision {
    let payload = json!({ "payment_status": existing.status, "existing": true });
    match existing.status.as_str() {
        "CHARGED" => Decision::succeeded(payload),
        "REFUSED" => Decision::refused(existing.reason.unwrap_or_default(), payload),
        // Refunded or voided: the saga was compensated; never "undo, then do".
        _ => Decision::refused(COMPENSATED_BEFORE_ACTION, payload),
    }
}

async fn refund(tx: &Tx<'_>, saga_id: Uuid) -> Result<Decision, Error> {
    let tombstone = tx
        .prepare_cached(
            "INSERT INTO payments (saga_id, status, reason)
             VALUES ($1, 'VOIDED', 'refunded_before_charge')
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .await?;
    if tx.execute(&tombstone, &[&saga_id]).await? == 1 {
        return Ok(Decision::succeeded(
            json!({ "payment_status": "VOIDED", "tombstone": true }),
        ));
    }
    let payment = lock_payment(tx, saga_id)
        .await?
        .ok_or_else(|| vanished(saga_id))?;
    if payment.status != "CHARGED" {
        return Ok(Decision::succeeded(
            json!({ "payment_status": payment.status, "no_op": true }),
        ));
    }
    let (Some(customer), Some(amount)) = (payment.customer_id, payment.amount_cents) else {
        return Err(anyhow::anyhow!("charged payment {saga_id} has no customer or amount").into());
    };
    let held = tx
        .prepare_cached("SELECT refunds_held FROM customers WHERE customer_id = $1 FOR UPDATE")
        .await?;
    if tx
        .query_opt(&held, &[&customer])
        .await?
        .is_some_and(|row| row.get::<_, bool>(0))
    {
        return Ok(Decision::refused(
            format!("refunds_held: {customer}"),
            json!({ "payment_status": "CHARGED", "customer_id": customer }),
        ));
    }
    let update = tx
        .prepare_cached(
            "UPDATE payments SET status = 'REFUNDED', updated_at = now() WHERE saga_id = $1",
        )
        .await?;
    tx.execute(&update, &[&saga_id]).await?;
    let credit = tx
        .prepare_cached(
            "UPDATE customers SET available_cents = available_cents + $2 WHERE customer_id = $1",
        )
        .await?;
    if tx.execute(&credit, &[&customer, &amount]).await? == 0 {
        tracing::warn!(customer.id = %customer, "refunded a customer that no longer exists");
    }
    Ok(Decision::succeeded(json!({
        "payment_status": "REFUNDED",
        "customer_id": customer,
        "amount_cents": amount,
    })))
}

/// The saga's payment row, locked until the transaction ends.
async fn lock_payment(tx: &Tx<'_>, saga_id: Uuid) -> Result<Option<Payment>, Error> {
    let select = tx
        .prepare_cached(
            "SELECT status, reason, customer_id, amount_cents FROM payments
             WHERE saga_id = $1 FOR UPDATE",
        )
        .await?;
    Ok(tx
        .query_opt(&select, &[&saga_id])
        .await?
        .map(|row| Payment {
            status: row.get(0),
            reason: row.get(1),
            customer_id: row.get(2),
            amount_cents: row.get(3),
        }))
}

fn vanished(saga_id: Uuid) -> Error {
    anyhow::anyhow!("payment {saga_id} conflicted on insert but cannot be read").into()
}
