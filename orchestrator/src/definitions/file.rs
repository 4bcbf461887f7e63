//! A saga definition as a file: one YAML document per saga type and version
//! (the format is in `docs/definitions.md`; `orchestrator/definitions/`
//! holds the order saga's). [`parse`] reads one and checks it; every error
//! names the file and the field, as `order.v1.yaml: steps[1].action: …`.
//!
//! Policies are layered: the built-in defaults ([`Policy::default`], and 10
//! attempts for compensations), then the file's `defaults`, then the step's
//! own `policy` / `compensation_policy`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use crate::saga::mapping::{self, Mapping, Scope};
use crate::saga::{Definition, Kind, Policy, StepDef};

/// Most sends of one command.
pub const MAX_ATTEMPTS: u32 = 1_000_000;
/// Largest deadline: 30 days (an overdue pivot's wait is 32 times that at
/// most, still a valid time).
pub const MAX_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest delay between failed sends: an hour.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Sends of a compensation unless a definition says otherwise.
pub const COMPENSATION_ATTEMPTS: u32 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "type")]
    saga_type: String,
    version: u32,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// JSON Schema (draft 2020-12) of the saga's input.
    input_schema: serde_json::Value,
    #[serde(default)]
    defaults: Defaults,
    steps: Vec<Step>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    action: PolicyFields,
    #[serde(default)]
    compensation: PolicyFields,
}

/// A policy as written: every field optional, over the layer below.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFields {
    attempts: Option<u64>,
    deadline: Option<String>,
    backoff_base: Option<String>,
    backoff_cap: Option<String>,
    jitter_percent: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: String,
    participant: String,
    action: String,
    /// A method path, or `none` for a step that cannot be undone; may be
    /// left out of a forward-only step.
    #[serde(default)]
    compensation: Option<String>,
    /// Never compensated, re-sent until it succeeds; a refusal suspends
    /// the saga. Every step after one that cannot be undone must be.
    #[serde(default)]
    forward_only: bool,
    /// Consecutive steps with the same group run at once.
    #[serde(default)]
    group: Option<String>,
    /// How the action's command input is built: field -> JSON pointer.
    #[serde(default)]
    input: Option<Mapping>,
    /// The same for the compensation.
    #[serde(default)]
    compensation_input: Option<Mapping>,
    #[serde(default)]
    policy: PolicyFields,
    #[serde(default)]
    compensation_policy: PolicyFields,
}

/// Parse and check the definition in `text`, read from the file `name`.
/// `participants`: the participant keys the orchestrator has endpoints for
/// (`None`: not checked).
pub fn parse(
    name: &str,
    text: &str,
    participants: Option<&BTreeMap<String, String>>,
) -> Result<Definition, String> {
    let file: File =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{name}: {}", yaml_error(&e)))?;
    let at = |field: &str, problem: String| format!("{name}: {field}: {problem}");
    check_identifier(&file.saga_type, 64, "-_").map_err(|p| at("type", p))?;
    if file.version == 0 {
        return Err(at("version", "must be 1 or more".to_owned()));
    }
    super::input::check_schema(&file.input_schema).map_err(|p| at("input_schema", p))?;
    if file.steps.is_empty() {
        return Err(at("steps", "a saga needs at least one step".to_owned()));
    }
    let action_defaults = resolve(Policy::default(), &file.defaults.action)
        .map_err(|(f, p)| at(&format!("defaults.action.{f}"), p))?;
    let compensation_defaults = resolve(
        Policy {
            max_attempts: COMPENSATION_ATTEMPTS,
            ..action_defaults
        },
        &file.defaults.compensation,
    )
    .map_err(|(f, p)| at(&format!("defaults.compensation.{f}"), p))?;

    let mut names = HashSet::new();
    let all_names: Vec<&str> = file.steps.iter().map(|s| s.name.as_str()).collect();
    let mut steps = Vec::with_capacity(file.steps.len());
    for (i, s) in file.steps.iter().enumerate() {
        let field = |f: &str| format!("steps[{i}].{f}");
        check_identifier(&s.name, 64, "_").map_err(|p| at(&field("name"), p))?;
        if !names.insert(s.name.as_str()) {
            return Err(at(
                &field("name"),
                format!("{:?} is already the name of an earlier step", s.name),
            ));
        }
        check_identifier(&s.participant, 64, "_").map_err(|p| at(&field("participant"), p))?;
        if let Some(known) = participants
            && !known.contains_key(&s.participant)
        {
            let keys: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(at(
                &field("participant"),
                format!(
                    "no endpoint is configured for participant {:?} (known: {}); set SAGAFLOW_PARTICIPANT_{}_URL",
                    s.participant,
                    keys.join(", "),
                    s.participant.to_ascii_uppercase()
                ),
            ));
        }
        check_method(&s.action).map_err(|p| at(&field("action"), p))?;
        let compensation = match (s.compensation.as_deref().map(str::trim), s.forward_only) {
            (Some("none"), _) | (None, true) => None,
            (None, false) => {
                return Err(at(
                    &field("compensation"),
                    "missing: a method path, or none for a step that cannot be undone".to_owned(),
                ));
            }
            (Some(_), true) => {
                return Err(at(
                    &field("compensation"),
                    "a forward-only step is never compensated: write compensation: none, or leave it out".to_owned(),
                ));
            }
            (Some(path), false) => {
                check_method(path).map_err(|p| at(&field("compensation"), p))?;
                Some(path.to_owned())
            }
        };
        if let Some(prev) = i.checked_sub(1).map(|p| &file.steps[p])
            && !s.forward_only
            && prev.forward_only
                | prev
                    .compensation
                    .as_deref()
                    .is_some_and(|c| c.trim() == "none")
        {
            return Err(at(
                &field("forward_only"),
                format!(
                    "it comes after {}, which cannot be undone (compensation: none), so it must be declared forward_only: true (retried until it succeeds, never compensated)",
                    prev.name
                ),
            ));
        }
        let policy = resolve(action_defaults, &s.policy)
            .map_err(|(f, p)| at(&field(&format!("policy.{f}")), p))?;
        let compensation_policy = resolve(compensation_defaults, &s.compensation_policy)
            .map_err(|(f, p)| at(&field(&format!("compensation_policy.{f}")), p))?;
        // A parallel group: consecutive, two or more, every member undoable.
        let same = |j: usize| s.group.is_some() && file.steps[j].group == s.group;
        let stage_start = (0..i).rev().take_while(|&j| same(j)).last().unwrap_or(i);
        if let Some(group) = &s.group {
            check_identifier(group, 64, "_").map_err(|p| at(&field("group"), p))?;
            let members = (stage_start..file.steps.len())
                .take_while(|&j| same(j))
                .count();
            if members < 2 {
                return Err(at(
                    &field("group"),
                    format!(
                        "group {group} has one step; a group runs several steps at once (put its steps next to each other)"
                    ),
                ));
            }
            if file.steps[..stage_start].iter().any(|o| o.group == s.group) {
                return Err(at(
                    &field("group"),
                    format!("the steps of group {group} must be consecutive"),
                ));
            }
            if compensation.is_none() {
                return Err(at(
                    &field("group"),
                    format!(
                        "{} cannot be undone, so it may not sit inside parallel group {group}: a sibling's failure would leave it standing",
                        s.name
                    ),
                ));
            }
        }
        let mapped = |which: &str, m: &Option<Mapping>, kind| -> Result<Option<Mapping>, String> {
            let Some(m) = m else { return Ok(None) };
            if file.saga_type == super::order::SAGA_TYPE {
                return Err(at(
                    &field(which),
                    "the order saga's participants read the OrderInput message; input mappings are for saga types started with StartSaga".to_owned(),
                ));
            }
            // A group's members run at once: an action sees only the
            // outputs of the steps before its group.
            let scope = Scope {
                names: &all_names,
                at: match kind {
                    Kind::Action => stage_start,
                    Kind::Compensation => i,
                },
                kind,
                schema: Some(&file.input_schema),
            };
            mapping::check(m, &scope).map_err(|(f, p)| match f.as_str() {
                "" => at(&field(which), p),
                f => at(&field(&format!("{which}.{f}")), p),
            })?;
            Ok(Some(m.clone()))
        };
        let input = mapped("input", &s.input, Kind::Action)?;
        let compensation_input = mapped(
            "compensation_input",
            &s.compensation_input,
            Kind::Compensation,
        )?;
        if compensation.is_none() && compensation_input.is_some() {
            return Err(at(
                &field("compensation_input"),
                "the step has no compensation (compensation: none)".to_owned(),
            ));
        }
        if compensation.is_none() && s.compensation_policy.attempts.is_some() {
            return Err(at(
                &field("compensation_policy"),
                "the step has no compensation (compensation: none)".to_owned(),
            ));
        }
        steps.push(StepDef {
            name: s.name.clone(),
            participant: s.participant.clone(),
            action: s.action.clone(),
            compensation,
            forward_only: s.forward_only,
            group: s.group.clone(),
            input,
            compensation_input,
            policy,
            compensation_policy,
        });
    }
    let def = Definition {
        saga_type: file.saga_type,
        version: file.version,
        steps,
        input_schema: Some(file.input_schema),
    };
    def.validate().map_err(|e| format!("{name}: {e}"))?;
    Ok(def)
}

/// serde_yaml_ng's message, which names the field and carries the line.
fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    e.to_string()
}

/// `fields` over `base`, each checked; the error is (field, problem).
fn resolve(base: Policy, fields: &PolicyFields) -> Result<Policy, (&'static str, String)> {
    let mut p = base;
    if let Some(a) = fields.attempts {
        if !(1..=u64::from(MAX_ATTEMPTS)).contains(&a) {
            return Err(("attempts", format!("{a} is not within 1..={MAX_ATTEMPTS}")));
        }
        p.max_attempts = a as u32;
    }
    if let Some(d) = &fields.deadline {
        p.deadline = duration(d, MAX_DEADLINE, "30d").map_err(|e| ("deadline", e))?;
    }
    if let Some(d) = &fields.backoff_base {
        p.backoff_base = duration(d, MAX_BACKOFF, "1h").map_err(|e| ("backoff_base", e))?;
    }
    if let Some(d) = &fields.backoff_cap {
        p.backoff_cap = duration(d, MAX_BACKOFF, "1h").map_err(|e| ("backoff_cap", e))?;
    }
    if let Some(j) = fields.jitter_percent {
        if j > 100 {
            return Err(("jitter_percent", format!("{j} is not within 0..=100")));
        }
        p.jitter_percent = j as u8;
    }
    if p.backoff_cap < p.backoff_base {
        return Err((
            "backoff_cap",
            format!(
                "{} is below backoff_base {}",
                show(p.backoff_cap),
                show(p.backoff_base)
            ),
        ));
    }
    Ok(p)
}

/// A duration written as a whole number and a unit: `250ms`, `10s`, `2m`,
/// `1h`, `1d`; more than zero and at most `max`.
pub fn duration(text: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let rule = format!("a whole number and a unit (ms, s, m, h, d) within 1ms..={max_text}");
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not {rule}"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} is not {rule}")),
    };
    let d = n
        .checked_mul(ms_per)
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero() && *d <= max)
        .ok_or_else(|| format!("{text:?} is not {rule}"))?;
    Ok(d)
}

/// A duration as the files write it.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// A saga type name's problem, if any.
pub fn check_type_name(s: &str) -> Result<(), String> {
    check_identifier(s, 64, "-_")
}

/// A lowercase name: a letter, then letters, digits or `extra`, at most
/// `max` long.
fn check_identifier(s: &str, max: usize, extra: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a name: a lowercase letter, then lowercase letters, digits or {}, at most {max} characters",
            extra
                .chars()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    }
}

/// A gRPC method path: `/package.Service/Method`.
fn check_method(path: &str) -> Result<(), String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let ok = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            service.split('.').all(ident) && service.contains('.') && ident(method)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not a gRPC method path (/package.Service/Method), or \"none\" where a compensation may be"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = include_str!("../../definitions/order.v1.yaml");

    fn participants() -> BTreeMap<String, String> {
        ["order", "payment", "inventory"]
            .iter()
            .map(|k| ((*k).to_owned(), format!("https://{k}:1")))
            .collect()
    }

    fn err(text: &str) -> String {
        parse("t.yaml", text, Some(&participants())).unwrap_err()
    }

    const MINIMAL: &str = "type: t\nversion: 1\ninput_schema: {type: object}\nsteps:\n  - name: a\n    participant: order\n    action: /p.v1.S/A\n    compensation: /p.v1.S/UndoA\n";

    #[test]
    fn the_shipped_order_file_parses_with_the_documented_defaults() {
        let d = parse("order.v1.yaml", ORDER, Some(&participants())).unwrap();
        assert_eq!((d.saga_type.as_str(), d.version), ("order", 1));
        let names: Vec<&str> = d.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "create_order",
                "process_payment",
                "reserve_inventory",
                "approve_order"
            ]
        );
        assert_eq!(d.steps[3].compensation, None);
        for s in &d.steps {
            assert_eq!(s.policy, Policy::default());
            assert_eq!(
                s.compensation_policy,
                Policy {
                    max_attempts: 10,
                    ..Policy::default()
                }
            );
        }
    }

    #[test]
    fn policies_layer_defaults_then_the_file_then_the_step() {
        let text = format!(
            "{MINIMAL}    policy:\n      deadline: 2s\n    compensation_policy:\n      attempts: 3\ndefaults:\n  action:\n    attempts: 7\n    deadline: 1m\n  compensation:\n    jitter_percent: 0\n"
        );
        let d = parse("t.yaml", &text, None).unwrap();
        let s = &d.steps[0];
        assert_eq!(s.policy.max_attempts, 7);
        assert_eq!(s.policy.deadline, Duration::from_secs(2));
        assert_eq!(s.compensation_policy.max_attempts, 3);
        // The compensation layer starts from the resolved action defaults.
        assert_eq!(s.compensation_policy.deadline, Duration::from_secs(60));
        assert_eq!(s.compensation_policy.jitter_percent, 0);
        assert_eq!(s.policy.jitter_percent, 50);
    }

    #[test]
    fn every_mistake_is_refused_naming_the_file_and_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "participant: order",
                "participant: shipping",
                "t.yaml: steps[0].participant: no endpoint is configured for participant \"shipping\"",
            ),
            (
                "participant: order",
                "participant: Order",
                "t.yaml: steps[0].participant: \"Order\" is not a name",
            ),
            (
                "action: /p.v1.S/A",
                "action: p.v1.S/A",
                "t.yaml: steps[0].action: \"p.v1.S/A\" is not a gRPC method path",
            ),
            (
                "action: /p.v1.S/A",
                "action: /S/A",
                "t.yaml: steps[0].action",
            ),
            (
                "action: /p.v1.S/A",
                "action: /p.v1.S/A/B",
                "t.yaml: steps[0].action",
            ),
            (
                "compensation: /p.v1.S/UndoA",
                "compensation: undo",
                "t.yaml: steps[0].compensation: \"undo\" is not a gRPC method path",
            ),
            ("type: t", "type: T!", "t.yaml: type: \"T!\" is not a name"),
            (
                "version: 1",
                "version: 0",
                "t.yaml: version: must be 1 or more",
            ),
            ("version: 1", "version: -1", "t.yaml: version"),
            ("name: a", "name: \"\"", "t.yaml: steps[0].name"),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      attempts: 0\n",
                "t.yaml: steps[0].policy.attempts: 0 is not within 1..=1000000",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      attempts: 99999999999999999999\n",
                "t.yaml: ",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      deadline: 10\n",
                "t.yaml: steps[0].policy.deadline: \"10\" is not a whole number and a unit",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      deadline: 0s\n",
                "t.yaml: steps[0].policy.deadline",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      deadline: 31d\n",
                "t.yaml: steps[0].policy.deadline: \"31d\" is not a whole number and a unit (ms, s, m, h, d) within 1ms..=30d",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      deadline: 18446744073709551615d\n",
                "t.yaml: steps[0].policy.deadline",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      backoff_base: 2s\n      backoff_cap: 1s\n",
                "t.yaml: steps[0].policy.backoff_cap: 1s is below backoff_base 2s",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      jitter_percent: 101\n",
                "t.yaml: steps[0].policy.jitter_percent: 101 is not within 0..=100",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: /p.v1.S/UndoA\n    policy:\n      retries: 3\n",
                "t.yaml: steps[0].policy: unknown field `retries`",
            ),
            (
                "version: 1\n",
                "version: 1\nextra: x\n",
                "t.yaml: unknown field `extra`",
            ),
            (
                "    compensation: /p.v1.S/UndoA\n",
                "    compensation: none\n    compensation_policy:\n      attempts: 3\n",
                "t.yaml: steps[0].compensation_policy: the step has no compensation",
            ),
            (
                "steps:\n",
                "defaults:\n  action:\n    backoff_cap: 2h\nsteps:\n",
                "t.yaml: defaults.action.backoff_cap: \"2h\" is not",
            ),
        ];
        for (from, to, want) in cases {
            assert!(MINIMAL.contains(from), "{from:?}");
            let e = err(&MINIMAL.replacen(from, to, 1));
            assert!(e.starts_with(want), "{to:?}: got {e:?}, want {want:?}…");
        }
    }

    #[test]
    fn the_input_schema_is_required_and_checked() {
        let without = MINIMAL.replace("input_schema: {type: object}\n", "");
        let e = err(&without);
        assert!(e.contains("input_schema"), "{e}");
        let e = err(&MINIMAL.replace("{type: object}", "{type: objekt}"));
        assert!(
            e.starts_with("t.yaml: input_schema: not a valid draft 2020-12 schema at /type"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "{type: object}",
            "{$schema: 'http://json-schema.org/draft-07/schema#'}",
        ));
        assert!(e.starts_with("t.yaml: input_schema: $schema is"), "{e}");
        let e = err(&MINIMAL.replace("{type: object}", "[1, 2]"));
        assert!(
            e.starts_with("t.yaml: input_schema: must be a JSON Schema"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_a_pivot_before_others_and_no_steps_are_refused() {
        let two = format!(
            "{MINIMAL}  - name: a\n    participant: order\n    action: /p.v1.S/B\n    compensation: none\n"
        );
        assert!(
            err(&two)
                .starts_with("t.yaml: steps[1].name: \"a\" is already the name of an earlier step")
        );
        let pivot_first = MINIMAL.replace("compensation: /p.v1.S/UndoA", "compensation: none")
            + "  - name: b\n    participant: order\n    action: /p.v1.S/B\n    compensation: /p.v1.S/UndoB\n";
        let e = err(&pivot_first);
        assert_eq!(
            e,
            "t.yaml: steps[1].forward_only: it comes after a, which cannot be undone (compensation: none), so it must be declared forward_only: true (retried until it succeeds, never compensated)"
        );
        let forward = |name: &str, extra: &str| {
            format!(
                "  - name: {name}\n    participant: order\n    action: /p.v1.S/{name}\n    forward_only: true\n{extra}"
            )
        };
        // Forward-only steps after the pivot parse; a step after them must
        // be forward-only too; a forward-only step has no compensation.
        let good = pivot_first.replace(
            "    compensation: /p.v1.S/UndoB\n",
            "    forward_only: true\n",
        ) + &forward("c", "    compensation: none\n");
        let d = parse("t.yaml", &good, Some(&participants())).expect("forward-only steps parse");
        let shape: Vec<(bool, bool)> = d
            .steps
            .iter()
            .map(|s| (s.compensation.is_some(), s.forward_only))
            .collect();
        assert_eq!(shape, [(false, false), (false, true), (false, true)]);
        let e = err(&format!(
            "{good}  - name: d\n    participant: order\n    action: /p.v1.S/D\n    compensation: /p.v1.S/UndoD\n"
        ));
        assert!(
            e.starts_with("t.yaml: steps[3].forward_only: it comes after c, "),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}{}",
            forward("b", "    compensation: /p.v1.S/UndoB\n")
        ));
        assert!(
            e.starts_with(
                "t.yaml: steps[1].compensation: a forward-only step is never compensated"
            ),
            "{e}"
        );
        let e = err(&MINIMAL.replace("    compensation: /p.v1.S/UndoA\n", ""));
        assert!(
            e.starts_with("t.yaml: steps[0].compensation: missing: "),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "compensation: /p.v1.S/UndoA",
            "compensation: none\n    forward_only: yes please",
        ));
        assert!(
            e.starts_with("t.yaml: steps[0].forward_only: ") || e.contains("forward_only"),
            "{e}"
        );
        assert!(
            err("type: t\nversion: 1\ninput_schema: true\nsteps: []\n")
                .starts_with("t.yaml: steps: a saga needs at least one step")
        );
        assert!(
            err("type: t\nversion: 1\ninput_schema: true\n")
                .starts_with("t.yaml: missing field `steps`")
        );
        assert!(err("type: t\n\0version: 1\n").starts_with("t.yaml: "));
        assert!(err("- not\n- a map\n").starts_with("t.yaml: "));
    }

    #[test]
    fn input_mappings_are_read_and_each_pointer_checked() {
        let schema = "input_schema: {type: object, additionalProperties: false, properties: {who: {type: string}, cents: {type: integer}}}";
        let two = |b_input: &str| {
            format!(
                "type: t\nversion: 1\n{schema}\nsteps:\n  - name: a\n    participant: order\n    action: /p.v1.S/A\n    compensation: /p.v1.S/UndoA\n    input: {{customer: /input/who}}\n  - name: b\n    participant: payment\n    action: /p.v1.S/B\n    compensation: /p.v1.S/UndoB\n{b_input}"
            )
        };
        let good = two(
            "    input: {amount_cents: /input/cents, ref: /steps/a/output/ref}\n    compensation_input: {payment_id: /steps/b/output/payment_id}\n",
        );
        let d = parse("t.yaml", &good, Some(&participants())).expect("mappings parse");
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Mapping>(),
            )
        };
        assert_eq!(d.steps[0].input, map(&[("customer", "/input/who")]));
        assert_eq!(d.steps[0].compensation_input, None);
        assert_eq!(
            d.steps[1].input,
            map(&[
                ("amount_cents", "/input/cents"),
                ("ref", "/steps/a/output/ref")
            ])
        );
        assert_eq!(
            d.steps[1].compensation_input,
            map(&[("payment_id", "/steps/b/output/payment_id")])
        );
        for (b_input, want) in [
            (
                "    input: {ref: /steps/b/output/ref}\n",
                "t.yaml: steps[1].input.ref: \"/steps/b/output/ref\" points nowhere: b does not come before this step",
            ),
            (
                "    input: {ref: /steps/c/output}\n",
                "t.yaml: steps[1].input.ref: \"/steps/c/output\" points nowhere: there is no step \"c\"",
            ),
            (
                "    input: {email: /input/email}\n",
                "t.yaml: steps[1].input.email: \"/input/email\" points nowhere: the input schema allows no property \"email\"",
            ),
            (
                "    input: {x: input/who}\n",
                "t.yaml: steps[1].input.x: \"input/who\" is not a JSON pointer",
            ),
            (
                "    input: {x: 5}\n",
                "t.yaml: steps[1].input.x: \"5\" is not a JSON pointer",
            ),
            (
                "    input: [a]\n",
                "t.yaml: steps[1].input: invalid type: sequence, expected a map",
            ),
        ] {
            let e = err(&two(b_input));
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
        // A pivot's compensation input; the order saga's typed input.
        let e = err(&MINIMAL.replace(
            "compensation: /p.v1.S/UndoA",
            "compensation: none\n    compensation_input: {x: /input}",
        ));
        assert_eq!(
            e,
            "t.yaml: steps[0].compensation_input: the step has no compensation (compensation: none)"
        );
        let e = err(&MINIMAL.replace("type: t", "type: order").replace(
            "compensation: /p.v1.S/UndoA",
            "compensation: /p.v1.S/UndoA\n    input: {x: /input}",
        ));
        assert!(
            e.starts_with(
                "t.yaml: steps[0].input: the order saga's participants read the OrderInput message"
            ),
            "{e}"
        );
    }

    #[test]
    fn parallel_groups_are_read_and_checked() {
        let step = |name: &str, extra: &str| {
            format!(
                "  - name: {name}\n    participant: order\n    action: /p.v1.S/{name}\n    compensation: /p.v1.S/Undo{name}\n{extra}"
            )
        };
        let head = "type: t\nversion: 1\ninput_schema: {type: object}\nsteps:\n";
        let text = [
            head.to_owned(),
            step("a", "    group: book\n"),
            step("b", "    group: book\n    input: {ref: /input/x}\n"),
            step("c", "    input: {a: /steps/a/output, b: /steps/b/output}\n"),
        ]
        .concat();
        let d = parse("t.yaml", &text, Some(&participants())).expect("a group parses");
        assert_eq!(d.stage(0), 0..2);
        assert_eq!(d.steps[1].group.as_deref(), Some("book"));
        for (steps, want) in [
            (
                vec![step("a", "    group: book\n"), step("b", "")],
                "t.yaml: steps[0].group: group book has one step",
            ),
            (
                vec![
                    step("a", "    group: book\n"),
                    step("b", "    group: book\n"),
                    step("c", ""),
                    step("d", "    group: book\n"),
                    step("e", "    group: book\n"),
                ],
                "t.yaml: steps[3].group: the steps of group book must be consecutive",
            ),
            (
                vec![
                    step("a", "    group: book\n"),
                    step("b", "    group: book\n").replace("/p.v1.S/Undob", "none"),
                ],
                "t.yaml: steps[1].group: b cannot be undone, so it may not sit inside parallel group book",
            ),
            (
                vec![
                    step("a", "    group: book\n"),
                    step("b", "    group: book\n    input: {x: /steps/a/output}\n"),
                ],
                "t.yaml: steps[1].input.x: \"/steps/a/output\" points nowhere: a does not come before this step",
            ),
            (
                vec![
                    step("a", "    group: Book!\n"),
                    step("b", "    group: Book!\n"),
                ],
                "t.yaml: steps[0].group: ",
            ),
        ] {
            let e = err(&[vec![head.to_owned()], steps].concat().concat());
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn durations_read_as_written_and_show_back() {
        for (text, ms) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ] {
            let d = duration(text, MAX_DEADLINE, "30d").unwrap();
            assert_eq!(d.as_millis(), ms);
            assert_eq!(show(d), text);
        }
        for bad in ["", "s", "1.5s", "-1s", "1 s", "1sec", "0ms", "1w"] {
            assert!(duration(bad, MAX_DEADLINE, "30d").is_err(), "{bad:?}");
        }
    }
}
