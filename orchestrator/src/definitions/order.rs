//! The order saga: create the order, charge the payment, reserve the stock,
//! approve the order (the pivot: nothing after it can fail).

use std::time::Duration;

use crate::saga::{Definition, Policy, StepDef};

pub const SAGA_TYPE: &str = "order";
pub const VERSION: u32 = 1;

/// Participant keys, resolved to endpoints by configuration.
pub const ORDER: &str = "order";
pub const PAYMENT: &str = "payment";
pub const INVENTORY: &str = "inventory";

fn action_policy() -> Policy {
    Policy {
        max_attempts: 5,
        deadline: Duration::from_secs(10),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(5),
        jitter_percent: 50,
    }
}

/// Undos must happen: they get more attempts before the saga pauses.
fn compensation_policy() -> Policy {
    Policy {
        max_attempts: 10,
        ..action_policy()
    }
}

fn step(name: &str, participant: &str, action: &str, compensation: Option<&str>) -> StepDef {
    StepDef {
        name: name.to_owned(),
        participant: participant.to_owned(),
        action: action.to_owned(),
        compensation: compensation.map(str::to_owned),
        policy: action_policy(),
        compensation_policy: compensation_policy(),
    }
}

pub fn definition() -> Definition {
    Definition {
        saga_type: SAGA_TYPE.to_owned(),
        version: VERSION,
        steps: vec![
            step(
                "create_order",
                ORDER,
                "/sagaflow.participant.v1.OrderService/CreateOrder",
                Some("/sagaflow.participant.v1.OrderService/CancelOrder"),
            ),
            step(
                "process_payment",
                PAYMENT,
                "/sagaflow.participant.v1.PaymentService/ProcessPayment",
                Some("/sagaflow.participant.v1.PaymentService/RefundPayment"),
            ),
            step(
                "reserve_inventory",
                INVENTORY,
                "/sagaflow.participant.v1.InventoryService/ReserveInventory",
                Some("/sagaflow.participant.v1.InventoryService/ReleaseInventory"),
            ),
            step(
                "approve_order",
                ORDER,
                "/sagaflow.participant.v1.OrderService/ApproveOrder",
                None,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_order_definition_is_valid() {
        super::definition().validate().unwrap();
    }
}
