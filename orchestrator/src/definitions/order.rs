//! The order saga: create the order, charge the payment, reserve the stock,
//! approve the order (the pivot: nothing after it can fail). Its definition
//! is the file `orchestrator/definitions/order.v1.yaml`, built in.
//!
//! Step policies live in the definition files only. The process-wide
//! `SAGAFLOW_STEP_*` variables of earlier releases are gone: [`check_env`]
//! refuses to start while one is set, so a setting an operator relies on
//! is not silently ignored.

use std::sync::{Arc, OnceLock};

use crate::saga::Definition;

pub const SAGA_TYPE: &str = "order";
pub const VERSION: u32 = 1;

/// The order saga's definition file, built in.
pub const FILE: &str = include_str!("../../definitions/order.v1.yaml");
/// Its name, for errors.
pub const FILE_NAME: &str = "order.v1.yaml";

/// Participant keys, resolved to endpoints by configuration.
pub const ORDER: &str = "order";
pub const PAYMENT: &str = "payment";
pub const INVENTORY: &str = "inventory";

/// The variables that once overrode every definition's step policies.
pub const RETIRED: [&str; 7] = [
    "SAGAFLOW_STEP_DEADLINE_MS",
    "SAGAFLOW_STEP_MAX_ATTEMPTS",
    "SAGAFLOW_COMPENSATION_MAX_ATTEMPTS",
    "SAGAFLOW_COMPENSATION_DEADLINE_MS",
    "SAGAFLOW_STEP_BACKOFF_BASE_MS",
    "SAGAFLOW_STEP_BACKOFF_CAP_MS",
    "SAGAFLOW_STEP_JITTER_PERCENT",
];

/// `Err` naming the first retired policy variable `get` finds set.
pub fn check_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    for name in RETIRED {
        if let Some(value) = get(name) {
            anyhow::bail!(
                "{name}={value:?} is no longer read: step policies are set in the saga definition files \
                 (`defaults` or a step's `policy`; see docs/definitions.md); unset it"
            );
        }
    }
    Ok(())
}

/// `Err` naming the first retired policy variable set in the environment.
/// The orchestrator calls this at start and refuses to run on an error.
pub fn check_env() -> anyhow::Result<()> {
    check_lookup(sagaflow_common::config::var_opt)
}

/// The built-in order saga (its file), a copy.
pub fn definition() -> Definition {
    shared().as_ref().clone()
}

/// The built-in order saga, shared.
pub fn shared() -> Arc<Definition> {
    static BUILT_IN: OnceLock<Arc<Definition>> = OnceLock::new();
    BUILT_IN
        .get_or_init(|| {
            Arc::new(
                super::file::parse(FILE_NAME, FILE, None)
                    .expect("the built-in order definition is valid (a unit test checks it)"),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_order_definition_is_valid() {
        super::definition().validate().unwrap();
    }

    #[test]
    fn the_built_in_policies_are_the_documented_defaults() {
        for s in definition().steps {
            let (p, c) = (s.policy, s.compensation_policy);
            assert_eq!(p.max_attempts, 5);
            assert_eq!(p.deadline, Duration::from_secs(10));
            assert_eq!(p.backoff_base, Duration::from_millis(100));
            assert_eq!(p.backoff_cap, Duration::from_secs(5));
            assert_eq!(p.jitter_percent, 50);
            assert_eq!(c.max_attempts, 10);
            assert_eq!(c.deadline, Duration::from_secs(10));
        }
    }

    #[test]
    fn a_retired_policy_variable_is_refused_by_name() {
        assert!(check_lookup(|_| None).is_ok());
        for name in RETIRED {
            let err = check_lookup(|n| (n == name).then(|| "1000".to_owned()))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(name), "{err}");
            assert!(err.contains("definition files"), "{err}");
        }
    }
}
