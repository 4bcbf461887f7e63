//! Load: 500 concurrent sagas of both types (400 orders, 100 trips) with
//! mixed outcomes all reach terminal states within a bound, each exactly as
//! expected; the per-saga reconciliation and books find no saga wrong, each
//! trip holds exactly what its end says (seat, room, car, payment,
//! itinerary), and the business invariants hold across the databases.
//! Prints one machine-readable summary line (counts measured):
//! `load: sagas=N trips=N completed=N compensated=N failed=N double_applied=N invariants=ok|FAILED p50_ms=X p99_ms=Y`

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sagaflow_protos::orchestrator::v1::SagaState;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::orders::{Expect, mixed};
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::trips;

const SAGAS: usize = 500;
const BOUND: Duration = Duration::from_secs(240);

fn millis(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_sagas() -> anyhow::Result<()> {
    let sys = System::start(
        "load",
        Options {
            trip: true,
            ..Options::default()
        },
    )
    .await?;
    let client = sys.client().await?;
    let started = Instant::now();
    // Every fifth saga a trip.
    let is_trip = |i: usize| i % 5 == 4;
    let placed: Vec<anyhow::Result<(String, Expect)>> = futures::stream::iter(0..SAGAS)
        .map(|i| {
            let mut client = client.clone();
            async move {
                if is_trip(i) {
                    let (req, expect) = trips::mixed("load", i / 5);
                    return Ok((client.start_saga(req).await?.into_inner().saga_id, expect));
                }
                let (req, expect) = mixed(i);
                Ok((client.place_order(req).await?.into_inner().saga_id, expect))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let placed: Vec<(String, Expect)> = placed.into_iter().collect::<anyhow::Result<_>>()?;
    let ids: Vec<String> = placed.iter().map(|(id, _)| id.clone()).collect();
    let done = sys.wait_terminal(&ids, BOUND).await?;
    let wall = started.elapsed();

    let count = |s: SagaState| done.iter().filter(|d| d.state == s as i32).count();
    let (completed, compensated, failed) = (
        count(SagaState::Completed),
        count(SagaState::Compensated),
        count(SagaState::CompensationFailed),
    );
    let mut latencies: Vec<i64> = done
        .iter()
        .map(|d| millis(&d.updated_at) - millis(&d.created_at))
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let checks = Checks::run(&sys).await?;
    let trips_checked = trips::check(&sys, &done).await?.sagas;
    let mut wrong = Vec::new();
    for ((id, expect), saga) in placed.iter().zip(&done) {
        let want = match expect {
            Expect::Completed => SagaState::Completed,
            Expect::PaymentRefused | Expect::StockShort | Expect::Refused => SagaState::Compensated,
        };
        if saga.state != want as i32 {
            wrong.push(format!(
                "{id}: expected {want:?}, got {} ({})",
                saga.state, saga.reason
            ));
        }
    }
    let ok = checks.invariants.ok() && wrong.is_empty();
    println!(
        "load: sagas={} trips={trips_checked} completed={completed} compensated={compensated} failed={failed} double_applied={} invariants={} p50_ms={} p99_ms={}",
        done.len(),
        checks.double_applied(),
        if ok { "ok" } else { "FAILED" },
        pct(0.50),
        pct(0.99),
    );
    println!(
        "load: all {} terminal after {:.1}s wall time ({:.0} sagas/s)",
        done.len(),
        wall.as_secs_f64(),
        done.len() as f64 / wall.as_secs_f64()
    );
    println!("load: {}", checks.describe());
    checks.assert_ok(&sys);
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(done.len(), SAGAS);
    assert_eq!(trips_checked, SAGAS / 5);
    assert_eq!(completed + compensated + failed, SAGAS);
    assert_eq!(failed, 0);
    Ok(())
}
