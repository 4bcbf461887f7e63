//! `sagaflow place`: `PlaceOrder`.

use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::PlaceOrderRequest;
use serde_json::json;

use crate::args::Place;
use crate::connect::Api;
use crate::render::{Table, state_name};
use crate::{Error, money, say, say_raw};

pub async fn run(api: &Api, a: Place, json: bool) -> Result<ExitCode, Error> {
    let currency = a.currency.trim().to_ascii_uppercase();
    if !sagaflow_orchestrator::api::currency::is_known(&currency) {
        let shown: String = a.currency.chars().take(10).collect();
        return Err(anyhow::anyhow!(
            "--currency {shown:?}: not an ISO 4217 code of money in use (docs/api.md lists them)"
        )
        .into());
    }
    let amount_cents =
        money::parse(&a.amount, &currency).map_err(|e| anyhow::anyhow!("--amount {e}"))?;
    let idempotency_key = a
        .idempotency_key
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut client = api.client().await?;
    let placed = client
        .place_order(PlaceOrderRequest {
            idempotency_key: idempotency_key.clone(),
            customer_id: a.customer,
            items: a.items,
            amount_cents,
            currency: currency.clone(),
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    if json {
        say(json!({
            "saga_id": placed.saga_id,
            "created": placed.created,
            "state": state_name(placed.state),
            "idempotency_key": idempotency_key,
            "amount_cents": amount_cents,
            "currency": currency,
        }))?;
    } else {
        let mut t = Table::new(&["saga", placed.saga_id.as_str()]);
        t.row(vec![
            "created".into(),
            if placed.created {
                "yes".into()
            } else {
                "no (placed before with this idempotency key)".into()
            },
        ]);
        t.row(vec!["state".into(), state_name(placed.state)]);
        t.row(vec![
            "amount".into(),
            money::format(amount_cents, &currency),
        ]);
        t.row(vec!["idempotency key".into(), idempotency_key]);
        say_raw(&t.render())?;
    }
    super::ok()
}
