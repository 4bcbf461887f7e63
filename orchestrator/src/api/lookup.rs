//! Placement-time checks against the participants' read-only look-ups: the
//! order's items must be in the inventory catalogue and its customer known
//! to payment, so a typo is refused at once (`INVALID_ARGUMENT`) instead of
//! compensating later.
//!
//! A check is a convenience, not a guarantee: the steps check again. So a
//! participant that is down or slow (no answer within the timeout) does not
//! block placement: the order is accepted and its step refuses it if need
//! be.

use std::time::Duration;

use sagaflow_protos::participant::v1::inventory_service_client::InventoryServiceClient;
use sagaflow_protos::participant::v1::payment_service_client::PaymentServiceClient;
use sagaflow_protos::participant::v1::{GetCustomersRequest, GetItemsRequest, OrderInput};
use tonic::Status;
use tonic::transport::Channel;

use super::input::{invalid, preview};

/// Channels to the participants that answer look-ups.
#[derive(Clone)]
pub struct Lookups {
    pub inventory: Channel,
    pub payment: Channel,
    /// How long a look-up may take before the order is accepted unchecked.
    pub timeout: Duration,
}

impl Lookups {
    /// `Err(INVALID_ARGUMENT)` for an unknown item or customer; `Ok` when
    /// they are known or a participant could not say in time.
    pub async fn check(&self, input: &OrderInput) -> Result<(), Status> {
        let (items, customer) = tokio::join!(self.items(input), self.customer(input));
        items.and(customer)
    }

    async fn items(&self, input: &OrderInput) -> Result<(), Status> {
        let skus: Vec<String> = input.items.iter().map(|i| i.sku.clone()).collect();
        let mut client = InventoryServiceClient::new(self.inventory.clone());
        let mut request = tonic::Request::new(GetItemsRequest { skus: skus.clone() });
        request.set_timeout(self.timeout);
        let known = match tokio::time::timeout(self.timeout, client.get_items(request)).await {
            Ok(Ok(resp)) => resp.into_inner().items,
            Ok(Err(e)) => return unchecked("inventory", e.message()),
            Err(_) => return unchecked("inventory", "no answer in time"),
        };
        for (i, sku) in skus.iter().enumerate() {
            if !known.iter().any(|k| &k.sku == sku) {
                return Err(invalid(
                    format!("items[{i}].sku"),
                    format!("unknown item {}", preview(sku)),
                ));
            }
        }
        Ok(())
    }

    async fn customer(&self, input: &OrderInput) -> Result<(), Status> {
        let mut client = PaymentServiceClient::new(self.payment.clone());
        let mut request = tonic::Request::new(GetCustomersRequest {
            customer_ids: vec![input.customer_id.clone()],
        });
        request.set_timeout(self.timeout);
        let known = match tokio::time::timeout(self.timeout, client.get_customers(request)).await {
            Ok(Ok(resp)) => resp.into_inner().customers,
            Ok(Err(e)) => return unchecked("payment", e.message()),
            Err(_) => return unchecked("payment", "no answer in time"),
        };
        if known.iter().any(|c| c.customer_id == input.customer_id) {
            Ok(())
        } else {
            Err(invalid(
                "customer_id",
                format!("unknown customer {}", preview(&input.customer_id)),
            ))
        }
    }
}

/// Accept without the check, saying why.
fn unchecked(participant: &str, why: &str) -> Result<(), Status> {
    tracing::warn!(
        participant,
        why,
        "placement check skipped: the order is accepted and its step checks it"
    );
    Ok(())
}
