//! Placement-time checks against the participants' read-only look-ups: the
//! order's items must be in the inventory catalogue and its customer known
//! to payment, so a typo is refused at once (`INVALID_ARGUMENT`) instead of
//! compensating later.
//!
//! A check is a convenience, not a guarantee: the steps check again. So a
//! participant that is down or slow (no answer within the timeout) does not
//! block placement: the order is accepted and its step refuses it if need
//! be. For the same reason a name found is remembered for a while
//! (`SAGAFLOW_PLACEMENT_CHECK_CACHE_MS`) and not asked for again: under
//! load most orders name the same customers and items, and each look-up is
//! a call and a query. A name not found is never remembered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Names found lately.
    pub known: Known,
}

/// Names a look-up found, each remembered for `ttl` (zero: never). Bounded:
/// when full it is emptied.
#[derive(Clone)]
pub struct Known {
    ttl: Duration,
    found: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Most names remembered at once.
const KNOWN_MAX: usize = 100_000;

impl Known {
    pub fn new(ttl: Duration) -> Self {
        Known {
            ttl,
            found: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.found.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn remember(&self, names: impl IntoIterator<Item = String>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut found = self.lock();
        let now = Instant::now();
        for name in names {
            if found.len() >= KNOWN_MAX {
                found.clear();
            }
            found.insert(name, now);
        }
    }
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
        if skus.iter().all(|s| self.known.contains(&sku_key(s))) {
            return Ok(());
        }
        let mut client = InventoryServiceClient::new(self.inventory.clone());
        let mut request = tonic::Request::new(GetItemsRequest { skus: skus.clone() });
        request.set_timeout(self.timeout);
        let known = match tokio::time::timeout(self.timeout, client.get_items(request)).await {
            Ok(Ok(resp)) => resp.into_inner().items,
            Ok(Err(e)) => return unchecked("inventory", e.message()),
            Err(_) => return unchecked("inventory", "no answer in time"),
        };
        self.known.remember(known.iter().map(|k| sku_key(&k.sku)));
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
        if self.known.contains(&customer_key(&input.customer_id)) {
            return Ok(());
        }
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
            self.known.remember([customer_key(&input.customer_id)]);
            Ok(())
        } else {
            Err(invalid(
                "customer_id",
                format!("unknown customer {}", preview(&input.customer_id)),
            ))
        }
    }
}

fn sku_key(sku: &str) -> String {
    format!("sku:{sku}")
}

fn customer_key(customer: &str) -> String {
    format!("customer:{customer}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_names_are_remembered_for_their_ttl_only() {
        let known = Known::new(Duration::from_millis(50));
        assert!(!known.contains("sku:a"));
        known.remember(["sku:a".to_owned()]);
        assert!(known.contains("sku:a"));
        assert!(!known.contains("sku:b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!known.contains("sku:a"));
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let known = Known::new(Duration::ZERO);
        known.remember(["customer:c".to_owned()]);
        assert!(!known.contains("customer:c"));
    }
}
