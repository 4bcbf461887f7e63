//! Definition files for test systems. Step policies live in the saga
//! definitions only, so a test that wants quicker re-sends or more
//! attempts runs the order saga's shipped file with other `defaults`
//! ([`Policies`]), from a definitions directory of its own.

use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

/// The step policies a test gives every step of the order saga (the
/// file's `defaults`); `None` keeps the shipped file's value. As in a
/// file, a compensation's deadline and backoff follow the action's unless
/// set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    /// `defaults.action.deadline`: wait for an action's outcome after a send.
    pub deadline: Option<Duration>,
    /// `defaults.action.attempts`: sends before the outcome is unknown.
    pub attempts: Option<u32>,
    /// `defaults.compensation.deadline`.
    pub compensation_deadline: Option<Duration>,
    /// `defaults.compensation.attempts`: sends before the saga pauses.
    pub compensation_attempts: Option<u32>,
    /// `defaults.action.backoff_base`: first delay between failed sends.
    pub backoff_base: Option<Duration>,
    /// `defaults.action.backoff_cap`: largest delay between failed sends.
    pub backoff_cap: Option<Duration>,
}

/// The order saga's file as shipped.
const ORDER_FILE: &str = include_str!("../../orchestrator/definitions/order.v1.yaml");

fn ms(d: Duration) -> Value {
    Value::String(format!("{}ms", d.as_millis()))
}

impl Policies {
    /// One-second deadlines; actions re-sent for two minutes (a stalled
    /// step outlasts process restarts); compensations `undo_attempts` sends
    /// (a refund that cannot be delivered pauses its saga soon).
    pub fn one_second(undo_attempts: u32) -> Policies {
        Policies {
            deadline: Some(Duration::from_secs(1)),
            attempts: Some(120),
            compensation_deadline: Some(Duration::from_secs(1)),
            compensation_attempts: Some(undo_attempts),
            backoff_base: Some(Duration::from_millis(50)),
            backoff_cap: Some(Duration::from_millis(500)),
        }
    }

    /// Three-second deadlines with 30 action and 60 compensation sends:
    /// well past the minute for which the emulator keeps events leased to
    /// a stopped orchestrator's streams (common/src/pubsub/subscriber.rs).
    pub fn outlasting_restarts() -> Policies {
        Policies {
            deadline: Some(Duration::from_secs(3)),
            attempts: Some(30),
            compensation_attempts: Some(60),
            ..Policies::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Policies::default()
    }

    /// The order saga's shipped file with these policies as its defaults.
    pub fn order_file(&self) -> anyhow::Result<String> {
        self.apply(ORDER_FILE)
    }

    /// The definition file `text` with these policies as its defaults
    /// (its own values kept where a policy is `None`).
    pub fn apply(&self, text: &str) -> anyhow::Result<String> {
        let mut file: Value = serde_yaml_ng::from_str(text)?;
        let root = file
            .as_mapping_mut()
            .ok_or_else(|| anyhow::anyhow!("the definition file is not a mapping"))?;
        let defaults = root
            .entry("defaults".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        let mut set = |side: &str, field: &str, v: Option<Value>| -> anyhow::Result<()> {
            let Some(v) = v else { return Ok(()) };
            let side = defaults
                .as_mapping_mut()
                .ok_or_else(|| anyhow::anyhow!("defaults is not a mapping"))?
                .entry(side.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            side.as_mapping_mut()
                .ok_or_else(|| anyhow::anyhow!("a defaults entry is not a mapping"))?
                .insert(field.into(), v);
            Ok(())
        };
        set("action", "deadline", self.deadline.map(ms))?;
        set("action", "attempts", self.attempts.map(Value::from))?;
        set("action", "backoff_base", self.backoff_base.map(ms))?;
        set("action", "backoff_cap", self.backoff_cap.map(ms))?;
        set(
            "compensation",
            "deadline",
            self.compensation_deadline.map(ms),
        )?;
        set(
            "compensation",
            "attempts",
            self.compensation_attempts.map(Value::from),
        )?;
        Ok(serde_yaml_ng::to_string(&file)?)
    }

    /// Write [`order_file`](Self::order_file) into `dir` (created), as a
    /// definitions directory holding that file only.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("order.v1.yaml"), self.order_file()?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_carries_the_policies_and_parses() {
        let p = Policies {
            deadline: Some(Duration::from_millis(1500)),
            attempts: Some(7),
            compensation_attempts: Some(40),
            backoff_base: Some(Duration::from_millis(50)),
            backoff_cap: Some(Duration::from_millis(500)),
            ..Policies::default()
        };
        let text = p.order_file().unwrap();
        let def =
            sagaflow_orchestrator::definitions::file::parse("order.v1.yaml", &text, None).unwrap();
        for s in &def.steps {
            assert_eq!(s.policy.deadline, Duration::from_millis(1500));
            assert_eq!(s.policy.max_attempts, 7);
            assert_eq!(s.policy.backoff_base, Duration::from_millis(50));
            assert_eq!(s.policy.backoff_cap, Duration::from_millis(500));
            // The compensation follows the action's deadline, not its attempts.
            assert_eq!(s.compensation_policy.deadline, Duration::from_millis(1500));
            assert_eq!(s.compensation_policy.max_attempts, 40);
        }
        let trip = p.apply(sagaflow_participants::trip::DEFINITION).unwrap();
        let trip =
            sagaflow_orchestrator::definitions::file::parse("trip.v1.yaml", &trip, None).unwrap();
        assert_eq!(trip.steps.len(), 6);
        for s in &trip.steps {
            assert_eq!(s.policy.deadline, Duration::from_millis(1500));
            assert_eq!(s.policy.max_attempts, 7);
            assert_eq!(s.compensation_policy.max_attempts, 40);
        }
        let shipped = sagaflow_orchestrator::definitions::order::definition();
        let same = Policies::default().order_file().unwrap();
        let same =
            sagaflow_orchestrator::definitions::file::parse("order.v1.yaml", &same, None).unwrap();
        assert_eq!(same, shipped);
    }
}
