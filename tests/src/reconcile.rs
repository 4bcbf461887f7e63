//! The operator's reconciliation (`sagaflow reconcile`), run
//! against a system's processes as an operator would run it, with the
//! system's environment, and its output read back.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::system::System;

/// What `reconcile` printed.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Finished sagas compared.
    pub finished: usize,
    /// Sagas in flight, skipped.
    pub in_flight: usize,
    /// Sagas older than a participant's inbox retention, skipped.
    pub forgotten: usize,
    /// Sagas with a mismatch, and the lines that say so.
    pub wrong: BTreeMap<Uuid, Vec<String>>,
    /// Every line it printed before its summary.
    pub lines: Vec<String>,
}

/// Exit status of `reconcile` when it found mismatches.
const MISMATCHES_FOUND: i32 = 3;

/// Run `reconcile` over every saga, or over `ids` (then it prints a line per
/// step, agreeing or not).
pub async fn run(sys: &System, ids: &[Uuid]) -> anyhow::Result<Reconciled> {
    let mut args = vec!["reconcile".to_owned()];
    args.extend(ids.iter().map(Uuid::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sys.cli_output(&args).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        matches!(out.status.code(), Some(0 | MISMATCHES_FOUND)),
        "reconcile failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = Reconciled::default();
    let mut mismatched = None;
    for line in stdout.lines() {
        if let Some(summary) = line.strip_prefix("reconcile: ") {
            for (k, v) in summary.split(' ').filter_map(|kv| kv.split_once('=')) {
                let v: usize = v.parse()?;
                match k {
                    "finished" => r.finished = v,
                    "in_flight" => r.in_flight = v,
                    "forgotten" => r.forgotten = v,
                    "mismatched" => mismatched = Some(v),
                    _ => {}
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("MISMATCH saga=") {
            let id = Uuid::parse_str(rest.split(' ').next().unwrap_or_default())?;
            r.wrong.entry(id).or_default().push(line.to_owned());
        }
        r.lines.push(line.to_owned());
    }
    let mismatched = mismatched.ok_or_else(|| anyhow::anyhow!("no summary line: {stdout}"))?;
    anyhow::ensure!(
        mismatched == r.wrong.len(),
        "reconcile counted {mismatched} mismatched sagas but named {}: {stdout}",
        r.wrong.len()
    );
    anyhow::ensure!(
        (out.status.code() == Some(MISMATCHES_FOUND)) == (mismatched > 0),
        "exit {} with {mismatched} mismatched",
        out.status
    );
    Ok(r)
}
