//! The order saga: create the order, charge the payment, reserve the stock,
//! approve the order (the pivot: nothing after it can fail). Its definition
//! is the file `orchestrator/definitions/order.v1.yaml`, built in.
//!
//! The step policies a definition gives can be overridden per process with
//! the variables in [`env`], for example shorter deadlines in tests that
//! kill processes and want quick recovery. They are operational knobs, not
//! part of a definition: they apply to every step of every definition this
//! process drives (from its next send on), whatever version a saga started
//! with.
//!
//! Invalid values: [`check_env`] returns an error naming the variable, and
//! the orchestrator calls it at start so it refuses to run with a typo.
//! [`overrides`] reads the variables once per process and, should one be
//! invalid anyway, logs an error and leaves that setting alone.

use std::sync::OnceLock;
use std::time::Duration;

use crate::saga::{Definition, Policy};

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

/// Environment variables that override the definitions' step policies.
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

/// The action and compensation policies of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub action: Policy,
    pub compensation: Policy,
}

impl Default for Policies {
    /// The built-in defaults a definition file starts from.
    fn default() -> Self {
        let action = Policy::default();
        Policies {
            action,
            // Undos must happen: they get more attempts before the saga pauses.
            compensation: Policy {
                max_attempts: super::file::COMPENSATION_ATTEMPTS,
                ..action
            },
        }
    }
}

impl Policies {
    /// The defaults with the overrides `get` finds applied, and a message for
    /// each invalid value (whose setting is left alone).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> (Policies, Vec<String>) {
        let (o, errors) = Overrides::from_lookup(get);
        (o.apply(Policies::default()), errors)
    }
}

/// The policy settings the environment overrides; `None`: not overridden.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    deadline: Option<Duration>,
    attempts: Option<u32>,
    undo_attempts: Option<u32>,
    undo_deadline: Option<Duration>,
    backoff_base: Option<Duration>,
    backoff_cap: Option<Duration>,
    jitter_percent: Option<u8>,
}

impl Overrides {
    /// The overrides from the process environment; the error names the
    /// first invalid variable.
    pub fn from_env() -> anyhow::Result<Overrides> {
        let (o, errors) = Self::from_lookup(sagaflow_common::config::var_opt);
        match errors.into_iter().next() {
            None => Ok(o),
            Some(e) => Err(anyhow::anyhow!(e)),
        }
    }

    /// The overrides `get` finds, and a message for each invalid value
    /// (which is then not overridden).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> (Overrides, Vec<String>) {
        let mut errors = Vec::new();
        let mut read = |name: &str, valid: &dyn Fn(u64) -> bool, rule: &str| {
            let raw = get(name)?;
            match raw.parse::<u64>() {
                Ok(v) if valid(v) => Some(v),
                Ok(_) | Err(_) => {
                    errors.push(format!("{name}={raw:?} is invalid: must be {rule}"));
                    None
                }
            }
        };
        const MS: &str = "a number of milliseconds within 1..=2592000000 (30 days)";
        const COUNT: &str = "an integer within 1..=1000000";
        let deadline = read(
            env::STEP_DEADLINE_MS,
            &|v| (1..=MAX_DEADLINE_MS).contains(&v),
            MS,
        );
        let attempts = read(
            env::STEP_MAX_ATTEMPTS,
            &|v| (1..=MAX_ATTEMPTS).contains(&v),
            COUNT,
        );
        let undo_attempts = read(
            env::COMPENSATION_MAX_ATTEMPTS,
            &|v| (1..=MAX_ATTEMPTS).contains(&v),
            COUNT,
        );
        let undo_deadline = read(
            env::COMPENSATION_DEADLINE_MS,
            &|v| (1..=MAX_DEADLINE_MS).contains(&v),
            MS,
        );
        let base = read(
            env::STEP_BACKOFF_BASE_MS,
            &|v| (1..=MAX_BACKOFF_MS).contains(&v),
            "a number of milliseconds within 1..=3600000",
        );
        let floor = base.unwrap_or(1);
        let cap = read(
            env::STEP_BACKOFF_CAP_MS,
            &|v| (floor..=MAX_BACKOFF_MS).contains(&v),
            "a number of milliseconds >= the backoff base, at most 3600000",
        );
        let jitter = read(
            env::STEP_JITTER_PERCENT,
            &|v| v <= 100,
            "a percentage within 0..=100",
        );
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        (
            Overrides {
                deadline: ms(deadline),
                attempts: attempts.map(|v| v as u32),
                undo_attempts: undo_attempts.map(|v| v as u32),
                undo_deadline: ms(undo_deadline),
                backoff_base: ms(base),
                backoff_cap: ms(cap),
                jitter_percent: jitter.map(|v| v as u8),
            },
            errors,
        )
    }

    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// One step's policies with the overrides applied. The compensation's
    /// deadline follows an overridden step deadline unless it has its own;
    /// a base above the cap raises the cap.
    pub fn apply(&self, p: Policies) -> Policies {
        let one = |mut p: Policy, attempts: Option<u32>, deadline: Option<Duration>| {
            if let Some(a) = attempts {
                p.max_attempts = a;
            }
            if let Some(d) = deadline {
                p.deadline = d;
            }
            if let Some(b) = self.backoff_base {
                p.backoff_base = b;
            }
            match self.backoff_cap {
                Some(c) => p.backoff_cap = c,
                None => p.backoff_cap = p.backoff_cap.max(p.backoff_base),
            }
            if let Some(j) = self.jitter_percent {
                p.jitter_percent = j;
            }
            p
        };
        Policies {
            action: one(p.action, self.attempts, self.deadline),
            compensation: one(
                p.compensation,
                self.undo_attempts,
                self.undo_deadline.or(self.deadline),
            ),
        }
    }

    /// Apply to every step of `def`.
    pub fn apply_to(&self, def: &mut Definition) {
        for s in &mut def.steps {
            let p = self.apply(Policies {
                action: s.policy,
                compensation: s.compensation_policy,
            });
            s.policy = p.action;
            s.compensation_policy = p.compensation;
        }
    }
}

/// `Err` naming the first override in the environment that is invalid. The
/// orchestrator calls this at start and refuses to run on an error.
pub fn check_env() -> anyhow::Result<()> {
    Overrides::from_env().map(drop)
}

/// The overrides this process uses: the environment is read once.
pub fn overrides() -> Overrides {
    static OVERRIDES: OnceLock<Overrides> = OnceLock::new();
    *OVERRIDES.get_or_init(|| {
        let (overrides, errors) = Overrides::from_lookup(sagaflow_common::config::var_opt);
        for e in errors {
            tracing::error!("{e}; the definitions' policy stays as it is for this setting");
        }
        if !overrides.is_empty() {
            tracing::info!(
                ?overrides,
                "step policies overridden by the environment, for every definition"
            );
        }
        overrides
    })
}

/// The built-in order saga (its file), with this process's overrides.
pub fn definition() -> Definition {
    static BUILT_IN: OnceLock<Definition> = OnceLock::new();
    BUILT_IN
        .get_or_init(|| {
            let mut def = super::file::parse(FILE_NAME, FILE, None)
                .expect("the built-in order definition is valid (a unit test checks it)");
            overrides().apply_to(&mut def);
            def
        })
        .clone()
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
