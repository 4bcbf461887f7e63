//! The system-test harness and the demo: a whole Sagaflow system as real
//! processes on loopback.
//!
//! Layout:
//! - [`emulator`]: the Google Pub/Sub emulator on a free port.
//! - [`databases`]: a fresh set of four databases per run, dropped after.
//! - [`definitions`]: the order saga's file with a test's step policies.
//! - [`desk`]: a participant the test serves itself (on the participants'
//!   contract), for saga types defined only by files.
//! - [`system`]: the services as child processes (killable with SIGKILL),
//!   clients, and helpers to wait for sagas to settle.
//! - [`credentials`]: each system's own CA, certificates and tokens.
//! - [`clients`]: API clients with a token, channels with an identity.
//! - [`checks`]: everything checked once sagas settled, in one report:
//!   - [`reconcile`]: the operator's `reconcile` command, run and read back
//!     (each finished saga against what its participants say they did);
//!   - [`books`]: each order saga's final state against its business rows;
//!   - [`invariants`]: cross-database business totals;
//!   - [`audit`]: where sagas ended, which fault paths their histories show,
//!     history gap-free and no transition recorded twice.
//! - [`outcomes`]: each saga's end against a clean run's.
//! - [`placer`]: placing many orders while orchestrators come and go.
//! - [`faults`]: seeded fault schedules: sequential kills of processes and
//!   the emulator, and overlapping outages and refund holds;
//!   [`injector`] carries them out; [`paused`] is the operator's part
//!   (list paused sagas, retry them).
//! - [`history`]: step latencies and re-sends, from sagas' histories.
//! - [`duplicator`]: duplicate and late event deliveries, injected.
//! - [`otlp`]: an OTLP/gRPC trace receiver the trace tests export to.

pub mod audit;
pub mod books;
pub mod business;
pub mod checks;
pub mod clients;
pub mod credentials;
pub mod databases;
pub mod definitions;
pub mod desk;
pub mod duplicator;
pub mod emulator;
pub mod faults;
pub mod history;
pub mod injector;
pub mod invariants;
pub mod orders;
pub mod otlp;
pub mod outcomes;
pub mod paused;
pub mod placer;
pub mod reconcile;
pub mod system;
pub mod trips;

use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released), for a service to
/// listen on. Drawn below Linux's ephemeral range (32768..=60999): a port
/// from that range, once released, can be taken as the local port of any
/// outgoing connection (to Postgres, to the emulator) before the service
/// binds it. Never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = rand::random_range(15_000..32_000);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port found below the ephemeral range");
}

/// Poll `check` until it returns `Some`, or fail after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_for(
        &format!("{addr} to accept connections"),
        timeout,
        || async { Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())) },
    )
    .await
}
