//! `LISTEN sagaflow_outbox` on a dedicated connection, turned into wake-ups
//! for the claim loop.
//!
//! Notifications only shorten the wait: the claim loop polls as well, so a
//! notification lost while this connection is down costs at most one poll
//! interval. After every (re)connect the loop is woken once to catch up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use sagaflow_common::outbox::NOTIFY_CHANNEL;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Keep a LISTEN connection to `url` open until `stop`, reconnecting with
/// backoff, and call `wake.notify_one()` on every notification. `up` says
/// whether the connection is listening (for readiness).
pub(crate) async fn listen(
    url: String,
    label: String,
    wake: Arc<Notify>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let err = tokio::select! {
            () = stop.cancelled() => {
                up.store(false, Ordering::Relaxed);
                return;
            }
            r = listen_once(&url, &label, &wake, &up, &mut backoff) => match r {
                Ok(()) => anyhow::anyhow!("the connection closed"),
                Err(e) => e,
            },
        };
        up.store(false, Ordering::Relaxed);
        let delay = backoff.next_delay();
        tracing::warn!(
            db = %label,
            error = format!("{err:#}"),
            retry_in_ms = delay.as_millis() as u64,
            "LISTEN connection lost; falling back to polling until it is back"
        );
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life: connect, LISTEN, forward notifications until the
/// connection ends.
async fn listen_once(
    url: &str,
    label: &str,
    wake: &Notify,
    up: &AtomicBool,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting")?;
    // Driving the connection through `poll_message` is what surfaces
    // notifications; it also carries the LISTEN query below.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql = format!("LISTEN {NOTIFY_CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.context("LISTEN")?;
                listening = true;
                up.store(true, Ordering::Relaxed);
                backoff.reset();
                tracing::debug!(db = %label, channel = NOTIFY_CHANNEL, "listening for outbox inserts");
                // Rows may have arrived while we were not listening.
                wake.notify_one();
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_notice)) => {}
                Some(Err(e)) => return Err(e).context("LISTEN connection failed"),
                None => return Ok(()),
            },
        }
    }
}
