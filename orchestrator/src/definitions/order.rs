//! The order saga: create the order, charge the payment, reserve the stock,
//! approve the order (the pivot: nothing after it can fail).
//!
//! Every step shares one action policy and one compensation policy. Their
//! defaults (5 attempts, 10 s deadline, 100 ms–5 s backoff with 50% jitter;
//! compensations get 10 attempts) can be overridden per process with the
//! variables in [`env`], for example shorter deadlines in tests that kill
//! processes and want quick recovery. The overrides are operational knobs,
//! not part of the definition's shape: they apply to every saga this process
//! drives (from its next send on), whatever version the saga started with.
//!
//! Invalid values: [`check_env`] returns an error naming the variable, and
//! the orchestrator calls it at start so it refuses to run with a typo.
//! [`definition`] itself must not fail (it is called on every event), so it
//! reads the variables once per process and, should one be invalid anyway,
//! logs an error and keeps that setting's default.

use std::sync::OnceLock;
use std::time::Duration;

use crate::saga::{Definition, Policy, StepDef};

pub const SAGA_TYPE: &str = "order";
pub const VERSION: u32 = 1;

/// Participant keys, resolved to endpoints by configuration.
pub const ORDER: &str = "order";
pub const PAYMENT: &str = "payment";
pub const INVENTORY: &str = "inventory";

/// Environment variables that override the default step policies.
pub mod env {
    /// How long to wait for an action's outcome after a send (ms, > 0).
    pub const STEP_DEADLINE_MS: &str = "SAGAFLOW_STEP_DEADLINE_MS";
    /// Sends of an action before its outcome is declared unknown (>= 1).
    pub const STEP_MAX_ATTEMPTS: &str = "SAGAFLOW_STEP_MAX_ATTEMPTS";
    /// Sends of a compensation before the saga pauses (>= 1).
    pub const COMPENSATION_MAX_ATTEMPTS: &str = "SAGAFLOW_COMPENSATION_MAX_ATTEMPTS";
    /// Deadline of a compensation (ms, > 0); defaults to the step deadline.
    pub const COMPENSATION_DEADLINE_MS: &str = "SAGAFLOW_COMPENSATION_DEADLINE_MS";
    /// First delay between failed sends of one attempt (ms, > 0).
    pub const STEP_BACKOFF_BASE_MS: &str = "SAGAFLOW_STEP_BACKOFF_BASE_MS";
    /// Largest delay between failed sends (ms, >= the base).
    pub const STEP_BACKOFF_CAP_MS: &str = "SAGAFLOW_STEP_BACKOFF_CAP_MS";
    /// Share of each delay that is randomised (0..=100).
    pub const STEP_JITTER_PERCENT: &str = "SAGAFLOW_STEP_JITTER_PERCENT";
}

/// Largest deadline a setting may give: 30 days (an overdue step's wait is
/// 32 times that at most, still a valid time).
const MAX_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most sends of one command.
const MAX_ATTEMPTS: u64 = 1_000_000;
/// Largest backoff delay between failed sends: an hour.
const MAX_BACKOFF_MS: u64 = 3_600_000;

/// The action and compensation policies of every order step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub action: Policy,
    pub compensation: Policy,
}

impl Default for Policies {
    fn default() -> Self {
        let action = Policy {
            max_attempts: 5,
            deadline: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            jitter_percent: 50,
        };
        Policies {
            action,
            // Undos must happen: they get more attempts before the saga pauses.
            compensation: Policy {
                max_attempts: 10,
                ..action
            },
        }
    }
}

impl Policies {
    /// The defaults with the process environment's overrides applied; the
    /// error names the first invalid variable.
    pub fn from_env() -> anyhow::Result<Policies> {
        let (policies, errors) = Self::from_lookup(sagaflow_common::config::var_opt);
        match errors.into_iter().next() {
            None => Ok(policies),
            Some(e) => Err(anyhow::anyhow!(e)),
        }
    }

    /// The defaults with the overrides `get` finds applied, and a message for
    /// each invalid value (whose setting keeps its default).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> (Policies, Vec<String>) {
        let mut errors = Vec::new();
        let mut read = |name: &str, default: u64, valid: &dyn Fn(u64) -> bool, rule: &str| {
            let Some(raw) = get(name) else {
                return default;
            };
            match raw.parse::<u64>() {
                Ok(v) if valid(v) => v,
                Ok(_) | Err(_) => {
                    errors.push(format!("{name}={raw:?} is invalid: must be {rule}"));
                    default
                }
            }
        };
        let d = Policies::default();
        let ms = |d: Duration| d.as_millis() as u64;
        let deadline = read(
            env::STEP_DEADLINE_MS,
            ms(d.action.deadline),
            &|v| (1..=MAX_DEADLINE_MS).contains(&v),
            "a number of milliseconds within 1..=2592000000 (30 days)",
        );
        let attempts = read(
            env::STEP_MAX_ATTEMPTS,
            d.action.max_attempts.into(),
            &|v| (1..=MAX_ATTEMPTS).contains(&v),
            "an integer within 1..=1000000",
        );
        let undo_attempts = read(
            env::COMPENSATION_MAX_ATTEMPTS,
            d.compensation.max_attempts.into(),
            &|v| (1..=MAX_ATTEMPTS).contains(&v),
            "an integer within 1..=1000000",
        );
        let undo_deadline = read(
            env::COMPENSATION_DEADLINE_MS,
            deadline,
            &|v| (1..=MAX_DEADLINE_MS).contains(&v),
            "a number of milliseconds within 1..=2592000000 (30 days)",
        );
        let base = read(
            env::STEP_BACKOFF_BASE_MS,
            ms(d.action.backoff_base),
            &|v| (1..=MAX_BACKOFF_MS).contains(&v),
            "a number of milliseconds within 1..=3600000",
        );
        let cap = read(
            env::STEP_BACKOFF_CAP_MS,
            ms(d.action.backoff_cap).max(base),
            &|v| (base..=MAX_BACKOFF_MS).contains(&v),
            "a number of milliseconds >= the backoff base, at most 3600000",
        );
        let jitter = read(
            env::STEP_JITTER_PERCENT,
            d.action.jitter_percent.into(),
            &|v| v <= 100,
            "a percentage within 0..=100",
        );
        let action = Policy {
            max_attempts: attempts as u32,
            deadline: Duration::from_millis(deadline),
            backoff_base: Duration::from_millis(base),
            backoff_cap: Duration::from_millis(cap),
            jitter_percent: jitter as u8,
        };
        let compensation = Policy {
            max_attempts: undo_attempts as u32,
            deadline: Duration::from_millis(undo_deadline),
            ..action
        };
        (
            Policies {
                action,
                compensation,
            },
            errors,
        )
    }
}

/// `Err` naming the first override in the environment that is invalid. The
/// orchestrator calls this at start and refuses to run on an error.
pub fn check_env() -> anyhow::Result<()> {
    Policies::from_env().map(drop)
}

/// The policies this process uses: the environment is read once.
pub fn policies() -> Policies {
    static POLICIES: OnceLock<Policies> = OnceLock::new();
    *POLICIES.get_or_init(|| {
        let (policies, errors) = Policies::from_lookup(sagaflow_common::config::var_opt);
        for e in errors {
            tracing::error!("{e}; using the default for this setting");
        }
        if policies != Policies::default() {
            tracing::info!(
                ?policies,
                "order saga step policies overridden by the environment"
            );
        }
        policies
    })
}

fn step(name: &str, participant: &str, action: &str, compensation: Option<&str>) -> StepDef {
    let p = policies();
    StepDef {
        name: name.to_owned(),
        participant: participant.to_owned(),
        action: action.to_owned(),
        compensation: compensation.map(str::to_owned),
        policy: p.action,
        compensation_policy: p.compensation,
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
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn the_order_definition_is_valid() {
        super::definition().validate().unwrap();
    }

    #[test]
    fn without_overrides_the_defaults_apply() {
        let (p, errors) = Policies::from_lookup(lookup(&[]));
        assert!(errors.is_empty());
        assert_eq!(p, Policies::default());
        assert_eq!(p.action.max_attempts, 5);
        assert_eq!(p.action.deadline, Duration::from_secs(10));
        assert_eq!(p.action.backoff_base, Duration::from_millis(100));
        assert_eq!(p.action.backoff_cap, Duration::from_secs(5));
        assert_eq!(p.action.jitter_percent, 50);
        assert_eq!(p.compensation.max_attempts, 10);
        assert_eq!(p.compensation.deadline, Duration::from_secs(10));
    }

    #[test]
    fn overrides_apply_to_actions_and_compensations() {
        let (p, errors) = Policies::from_lookup(lookup(&[
            (env::STEP_DEADLINE_MS, "1500"),
            (env::STEP_MAX_ATTEMPTS, "7"),
            (env::COMPENSATION_MAX_ATTEMPTS, "40"),
            (env::STEP_BACKOFF_BASE_MS, "20"),
            (env::STEP_BACKOFF_CAP_MS, "400"),
            (env::STEP_JITTER_PERCENT, "0"),
        ]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(p.action.deadline, Duration::from_millis(1500));
        assert_eq!(p.action.max_attempts, 7);
        assert_eq!(p.action.backoff_base, Duration::from_millis(20));
        assert_eq!(p.action.backoff_cap, Duration::from_millis(400));
        assert_eq!(p.action.jitter_percent, 0);
        // The compensation follows the step deadline unless given its own.
        assert_eq!(p.compensation.deadline, Duration::from_millis(1500));
        assert_eq!(p.compensation.max_attempts, 40);
        let (p, _) = Policies::from_lookup(lookup(&[(env::COMPENSATION_DEADLINE_MS, "900")]));
        assert_eq!(p.compensation.deadline, Duration::from_millis(900));
        assert_eq!(p.action.deadline, Duration::from_secs(10));
    }

    #[test]
    fn a_base_above_the_default_cap_raises_the_cap() {
        let (p, errors) = Policies::from_lookup(lookup(&[(env::STEP_BACKOFF_BASE_MS, "8000")]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(p.action.backoff_cap, Duration::from_secs(8));
    }

    #[test]
    fn invalid_values_are_reported_by_name_and_keep_their_default() {
        for (name, value) in [
            (env::STEP_DEADLINE_MS, "0"),
            (env::STEP_DEADLINE_MS, "10s"),
            (env::STEP_MAX_ATTEMPTS, "0"),
            (env::STEP_MAX_ATTEMPTS, "-1"),
            (env::COMPENSATION_MAX_ATTEMPTS, "99999999999"),
            (env::STEP_DEADLINE_MS, "18446744073709551615"),
            (env::STEP_DEADLINE_MS, "2592000001"),
            (env::STEP_BACKOFF_CAP_MS, "99999999999"),
            (env::STEP_JITTER_PERCENT, "101"),
            (env::STEP_BACKOFF_BASE_MS, "0"),
        ] {
            let (p, errors) = Policies::from_lookup(lookup(&[(name, value)]));
            assert_eq!(errors.len(), 1, "{name}={value}: {errors:?}");
            assert!(errors[0].starts_with(name), "{errors:?}");
            assert_eq!(p, Policies::default(), "{name}={value}");
        }
        let (_, errors) = Policies::from_lookup(lookup(&[
            (env::STEP_BACKOFF_BASE_MS, "500"),
            (env::STEP_BACKOFF_CAP_MS, "100"),
        ]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(env::STEP_BACKOFF_CAP_MS));
    }
}
