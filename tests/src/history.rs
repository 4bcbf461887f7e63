//! Reading sagas' histories straight from the orchestrator's database: how
//! long each step took, and which steps were re-sent or given up on.

use sagaflow_common::db;

/// Latencies (ms) of one step, from its first send to its outcome.
#[derive(Debug, Clone, Default)]
pub struct Latencies(pub Vec<f64>);

impl Latencies {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    }

    /// `n=… p50=…ms p99=…ms`.
    pub fn summary(&self) -> String {
        format!(
            "n={} p50={:.0}ms p99={:.0}ms",
            self.0.len(),
            self.percentile(0.5),
            self.percentile(0.99)
        )
    }
}

/// How long `step` took in each of `sagas`: from the history entry that
/// first sent it to the one that recorded its outcome (sagas where it did
/// not run are left out).
pub async fn step_latencies(
    orchestrator_url: &str,
    sagas: &[uuid::Uuid],
    step: &str,
) -> anyhow::Result<Latencies> {
    let c = db::connect(orchestrator_url).await?;
    let rows = c
        .query(
            "SELECT extract(epoch FROM (
                        min(at) FILTER (WHERE detail LIKE $3 OR detail LIKE $4)
                      - min(at) FILTER (WHERE detail LIKE $2)) * 1000)::float8
             FROM saga_history WHERE saga_id = ANY($1) GROUP BY saga_id",
            &[
                &sagas,
                &format!("%sent {step}%"),
                &format!("{step} succeeded%"),
                &format!("{step} refused%"),
            ],
        )
        .await?;
    Ok(Latencies(
        rows.iter()
            .filter_map(|r| r.get::<_, Option<f64>>(0))
            .collect(),
    ))
}

/// History entries of `kinds` (e.g. `resent`, `step_timed_out`) whose
/// detail names `step`, among `sagas`: "saga kind detail" lines.
pub async fn entries_about(
    orchestrator_url: &str,
    sagas: &[uuid::Uuid],
    kinds: &[&str],
    step: &str,
) -> anyhow::Result<Vec<String>> {
    let c = db::connect(orchestrator_url).await?;
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    let rows = c
        .query(
            "SELECT saga_id::text || ' ' || kind || ' ' || detail FROM saga_history
             WHERE saga_id = ANY($1) AND kind = ANY($2) AND detail LIKE $3
             ORDER BY saga_id, seq",
            &[&sagas, &kinds, &format!("%{step}%")],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
