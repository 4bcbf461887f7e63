//! The saga types this orchestrator runs, as definition files: plain data
//! the engine in [`crate::saga`] runs with no change for a new type.
//!
//! At start the orchestrator [`load`]s every `*.yaml` / `*.yml` file of
//! `SAGAFLOW_DEFINITIONS_DIR` (or, unset, the built-in order saga, the file
//! `orchestrator/definitions/order.v1.yaml`), checks each ([`file::parse`])
//! and refuses to start on any error, naming the file and the field. Then
//! it shares them through its database ([`stored`]: a stored version never
//! changes) and [`install`]s them, with the stored versions its files lack,
//! as the registry every lookup reads.

pub mod file;
pub mod input;
pub mod order;
pub mod stored;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::saga::Definition;

/// What this process runs; `None` until the start installs it.
/// Each definition behind its own `Arc`: a lookup on the send and apply
/// paths hands out a pointer, never a copy (the input schema can be big).
static INSTALLED: RwLock<Option<Arc<Vec<Arc<Definition>>>>> = RwLock::new(None);

fn installed() -> Option<Arc<Vec<Arc<Definition>>>> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Read the definitions: every `*.yaml` / `*.yml` file directly in `dir`,
/// or the built-in order saga when `dir` is `None`, as (file, definition as
/// written). Each is checked against `participants` (key → endpoint).
/// Errors name the file and the field.
pub fn load(
    dir: Option<&Path>,
    participants: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<(String, Definition)>> {
    let mut files = Vec::new();
    match dir {
        None => files.push((order::FILE_NAME.to_owned(), order::FILE.to_owned())),
        Some(dir) => {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                anyhow::anyhow!(
                    "SAGAFLOW_DEFINITIONS_DIR={}: cannot read it: {e}",
                    dir.display()
                )
            })?;
            let mut paths = Vec::new();
            for entry in entries {
                let path = entry?.path();
                let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
                if yaml && path.is_file() {
                    paths.push(path);
                }
            }
            paths.sort();
            for path in paths {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("{name}: cannot read it: {e}"))?;
                files.push((name, text));
            }
            if files.is_empty() {
                anyhow::bail!(
                    "SAGAFLOW_DEFINITIONS_DIR={}: no definition files (*.yaml, *.yml) in it",
                    dir.display()
                );
            }
        }
    }
    let mut defs = Vec::with_capacity(files.len());
    let mut seen: BTreeMap<(String, u32), String> = BTreeMap::new();
    for (name, text) in files {
        let def = file::parse(&name, &text, Some(participants)).map_err(anyhow::Error::msg)?;
        if let Some(other) = seen.insert((def.saga_type.clone(), def.version), name.clone()) {
            anyhow::bail!(
                "{name}: {} version {} is also defined by {other}: one file per type and version",
                def.saga_type,
                def.version
            );
        }
        defs.push((name, def));
    }
    Ok(defs)
}

/// Make `defs` the definitions this process runs.
pub fn install(defs: Vec<Definition>) {
    let defs: Vec<Arc<Definition>> = defs.into_iter().map(Arc::new).collect();
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(defs));
}

/// Run `defs` too.
pub fn add(defs: Vec<Definition>) {
    let mut guard = INSTALLED.write().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<Arc<Definition>> = guard.as_deref().cloned().unwrap_or_default();
    for d in defs {
        if !all
            .iter()
            .any(|o| o.saga_type == d.saga_type && o.version == d.version)
        {
            all.push(Arc::new(d));
        }
    }
    *guard = Some(Arc::new(all));
}

/// Run `defs` too, besides whatever this process already runs (the
/// built-in order saga when nothing was installed): for a tool that reads
/// the stored versions, such as reconciliation.
pub fn add_to_registry(defs: Vec<Definition>) {
    if installed().is_none() {
        install(registry().iter().map(|d| d.as_ref().clone()).collect());
    }
    add(defs);
}

/// Every definition this process runs, at every version still in use:
/// those installed at start, else (code that runs without a start, such as
/// unit tests) the built-in order saga. Instances keep the version they
/// started with.
pub fn registry() -> Vec<Arc<Definition>> {
    match installed() {
        Some(defs) => defs.as_ref().clone(),
        None => vec![order::shared()],
    }
}

/// The definition for a saga type at a version.
pub fn find(saga_type: &str, version: u32) -> Option<Arc<Definition>> {
    match installed() {
        Some(defs) => defs
            .iter()
            .find(|d| d.saga_type == saga_type && d.version == version)
            .cloned(),
        None => Some(order::shared()).filter(|d| d.saga_type == saga_type && d.version == version),
    }
}

/// The newest version of `saga_type`, which new sagas of the type start
/// with.
pub fn latest(saga_type: &str) -> Option<Arc<Definition>> {
    let newest = |defs: &[Arc<Definition>]| {
        defs.iter()
            .filter(|d| d.saga_type == saga_type)
            .max_by_key(|d| d.version)
            .cloned()
    };
    match installed() {
        Some(defs) => newest(&defs),
        None => newest(&[order::shared()]),
    }
}
