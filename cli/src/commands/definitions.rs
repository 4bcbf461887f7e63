//! `sagaflow definitions [TYPE]`: `ListDefinitions`, or `GetDefinition` for
//! one type (its newest version unless `--version` says).

use std::fmt::Write as _;
use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::{
    GetDefinitionRequest, ListDefinitionsRequest, SagaDefinition, StepPolicy,
};
use serde_json::{Value, json};

use crate::connect::Api;
use crate::{Error, say, say_raw};

pub async fn run(
    api: &Api,
    saga_type: Option<String>,
    version: u32,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut client = api.client().await?;
    match saga_type {
        None => {
            let list = client
                .list_definitions(ListDefinitionsRequest::default())
                .await
                .map_err(|s| api.error(s))?
                .into_inner()
                .definitions;
            if json {
                say(Value::Array(list.iter().map(definition_json).collect()))?;
            } else {
                let mut out = String::new();
                for d in &list {
                    let _ = writeln!(
                        out,
                        "{:<16} v{:<4} {:<7} {} steps  {}  from {}",
                        d.saga_type,
                        d.version,
                        if d.newest { "newest" } else { "" },
                        d.steps.len(),
                        &d.hash[..d.hash.len().min(12)],
                        d.source
                    );
                }
                if list.is_empty() {
                    out.push_str("no definitions stored\n");
                }
                say_raw(&out)?;
            }
        }
        Some(saga_type) => {
            let d = client
                .get_definition(GetDefinitionRequest { saga_type, version })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            if json {
                say(definition_json(&d))?;
            } else {
                say_raw(&describe(&d))?;
            }
        }
    }
    super::ok()
}

fn ms(v: u64) -> String {
    match v {
        v if v >= 1_000 && v % 1_000 == 0 => format!("{}s", v / 1_000),
        v => format!("{v}ms"),
    }
}

fn policy_text(p: Option<&StepPolicy>) -> String {
    match p {
        None => "-".to_owned(),
        Some(p) => format!(
            "{}× {} (backoff {}..{}, jitter {}%)",
            p.attempts,
            ms(p.deadline_ms),
            ms(p.backoff_base_ms),
            ms(p.backoff_cap_ms),
            p.jitter_percent
        ),
    }
}

fn describe(d: &SagaDefinition) -> String {
    let mut out = format!(
        "{} v{}{}\nhash    {}\nsource  {}\n\n",
        d.saga_type,
        d.version,
        if d.newest { " (newest)" } else { "" },
        d.hash,
        d.source
    );
    for (i, s) in d.steps.iter().enumerate() {
        let group = match s.group.as_str() {
            "" => String::new(),
            g => format!(", in parallel group {g}"),
        };
        let _ = writeln!(out, "{}. {} ({}{group})", i + 1, s.name, s.participant);
        let _ = writeln!(out, "   action        {}", s.action);
        let _ = writeln!(out, "                 {}", policy_text(s.policy.as_ref()));
        for (field, pointer) in sorted(&s.input) {
            let _ = writeln!(out, "                 input.{field} = {pointer}");
        }
        if s.forward_only {
            let _ = writeln!(
                out,
                "   compensation  none: forward-only (retried until it succeeds; a refusal suspends the saga)"
            );
        } else if s.compensation.is_empty() {
            let _ = writeln!(out, "   compensation  none: it cannot be undone");
        } else {
            let _ = writeln!(out, "   compensation  {}", s.compensation);
            let _ = writeln!(
                out,
                "                 {}",
                policy_text(s.compensation_policy.as_ref())
            );
            for (field, pointer) in sorted(&s.compensation_input) {
                let _ = writeln!(out, "                 input.{field} = {pointer}");
            }
        }
    }
    if !d.input_schema_json.is_empty() {
        let _ = writeln!(out, "\ninput schema  {}", d.input_schema_json);
    }
    out
}

/// A mapping's fields in name order.
fn sorted(m: &std::collections::HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut fields: Vec<_> = m.iter().collect();
    fields.sort();
    fields
}

fn policy_json(p: Option<&StepPolicy>) -> Value {
    match p {
        None => Value::Null,
        Some(p) => json!({
            "attempts": p.attempts,
            "deadline_ms": p.deadline_ms,
            "backoff_base_ms": p.backoff_base_ms,
            "backoff_cap_ms": p.backoff_cap_ms,
            "jitter_percent": p.jitter_percent,
        }),
    }
}

fn definition_json(d: &SagaDefinition) -> Value {
    json!({
        "saga_type": d.saga_type,
        "version": d.version,
        "newest": d.newest,
        "hash": d.hash,
        "source": d.source,
        "input_schema": serde_json::from_str::<Value>(&d.input_schema_json).ok(),
        "steps": d.steps.iter().map(|s| json!({
            "name": s.name,
            "participant": s.participant,
            "action": s.action,
            "compensation": if s.compensation.is_empty() { Value::Null } else { Value::from(s.compensation.clone()) },
            "policy": policy_json(s.policy.as_ref()),
            "compensation_policy": policy_json(s.compensation_policy.as_ref()),
            "forward_only": s.forward_only,
            "group": if s.group.is_empty() { Value::Null } else { Value::from(s.group.clone()) },
            "input": s.input,
            "compensation_input": s.compensation_input,
        })).collect::<Vec<_>>(),
    })
}
