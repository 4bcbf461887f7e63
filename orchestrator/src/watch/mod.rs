//! Watching sagas live: `WatchSaga` ([`saga`]) and `WatchSagas` ([`list`]).
//!
//! Every saga change commits a history row and `NOTIFY sagaflow_saga` with
//! the saga id ([`crate::store`]), whichever instance made it. Each
//! orchestrator instance keeps ONE `LISTEN` connection ([`Hub::listen`]) and
//! fans the notifications out to its watchers as wake-ups: a watcher of one
//! saga is woken by that saga's notifications, a list watcher by any. A woken
//! watcher reads what it has not sent yet from the database through the
//! shared pool (a short query, no connection held) and sends it. So:
//!
//! - nothing is lost when notifications are: a wake-up only says "read
//!   again", and the read starts from the last history seq (or, for lists,
//!   the database snapshot) the watcher sent; after the LISTEN connection
//!   comes back every watcher is woken once;
//! - wake-ups coalesce (a channel of one), and the fan-out never waits on
//!   a watcher: the engine's `NOTIFY` costs the same with 0 or 10,000
//!   watchers;
//! - each watcher's outgoing buffer is bounded ([`Settings::buffer`]
//!   messages); a watcher whose client does not read it is ended with
//!   `UNAVAILABLE` and a message saying to resume from the last seq (or
//!   cursor) it received. A shutting-down orchestrator ends its streams the
//!   same way, so clients resume on another instance.

pub mod list;
pub mod saga;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::store::HISTORY_CHANNEL;

/// How watchers behave.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Messages queued per watcher before it counts as too slow
    /// (`SAGAFLOW_WATCH_BUFFER`).
    pub buffer: usize,
    /// A `WatchSagas` cursor older than this is not resumed from (the history
    /// it needs may have been deleted): the client gets a fresh snapshot
    /// flagged `reset`. The history retention.
    pub cursor_max_age: Duration,
}

/// The fan-out of one instance's `LISTEN` connection to its watchers.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    listening: AtomicBool,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    sagas: HashMap<Uuid, Vec<(u64, mpsc::Sender<()>)>>,
    lists: HashMap<u64, mpsc::Sender<()>>,
}

/// A watcher's wake-ups; dropping it unregisters the watcher.
pub struct Wakeups {
    hub: Arc<Hub>,
    id: u64,
    saga: Option<Uuid>,
    rx: mpsc::Receiver<()>,
}

impl Wakeups {
    /// The next wake-up (`None` never happens while the hub lives).
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        let mut inner = self.hub.inner.lock().unwrap_or_else(|e| e.into_inner());
        match self.saga {
            Some(saga) => {
                if let Some(list) = inner.sagas.get_mut(&saga) {
                    list.retain(|(id, _)| *id != self.id);
                    if list.is_empty() {
                        inner.sagas.remove(&saga);
                    }
                }
            }
            None => {
                inner.lists.remove(&self.id);
            }
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Register a watcher of one saga (`Some`) or of every saga (`None`).
    /// Register before the first read, so a change committed in between
    /// wakes the watcher.
    pub fn register(self: &Arc<Self>, saga: Option<Uuid>) -> Wakeups {
        let (tx, rx) = mpsc::channel(1);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next_id += 1;
        let id = inner.next_id;
        match saga {
            Some(s) => inner.sagas.entry(s).or_default().push((id, tx)),
            None => {
                inner.lists.insert(id, tx);
            }
        }
        Wakeups {
            hub: self.clone(),
            id,
            saga,
            rx,
        }
    }

    /// How many watchers are registered (sagas, lists).
    pub fn watchers(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.sagas.values().map(Vec::len).sum(), inner.lists.len())
    }

    /// Whether the `LISTEN` connection is up.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Wake the watchers of `saga` and every list watcher. Never waits.
    fn notify(&self, saga: Uuid) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = inner.sagas.get(&saga) {
            for (_, tx) in list {
                let _ = tx.try_send(());
            }
        }
        for tx in inner.lists.values() {
            let _ = tx.try_send(());
        }
    }

    /// Wake everyone: after the `LISTEN` connection (re)connects, since
    /// notifications sent while it was down are lost.
    fn notify_all(&self) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (_, tx) in inner.sagas.values().flatten() {
            let _ = tx.try_send(());
        }
        for tx in inner.lists.values() {
            let _ = tx.try_send(());
        }
    }

    /// Keep the instance's one `LISTEN` connection open until `stop`,
    /// reconnecting with backoff.
    pub async fn listen(self: Arc<Self>, url: String, stop: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        loop {
            let err = tokio::select! {
                () = stop.cancelled() => return,
                r = self.listen_once(&url, &mut delay) => match r {
                    Ok(()) => anyhow::anyhow!("the connection closed"),
                    Err(e) => e,
                },
            };
            self.listening.store(false, Ordering::Relaxed);
            tracing::warn!(
                error = format!("{err:#}"),
                retry_in_ms = delay.as_millis() as u64,
                "watch: LISTEN connection lost; watchers wait until it is back"
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    async fn listen_once(&self, url: &str, delay: &mut Duration) -> anyhow::Result<()> {
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting")?;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let sql = format!("LISTEN {HISTORY_CHANNEL}");
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        let mut listening = false;
        loop {
            tokio::select! {
                r = &mut listen, if !listening => {
                    r.context("LISTEN")?;
                    listening = true;
                    *delay = Duration::from_millis(100);
                    self.listening.store(true, Ordering::Relaxed);
                    tracing::debug!(channel = HISTORY_CHANNEL, "watch: listening");
                    self.notify_all();
                }
                m = messages.next() => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if let Ok(saga) = Uuid::parse_str(n.payload()) {
                            self.notify(saga);
                        }
                    }
                    Some(Ok(_notice)) => {}
                    Some(Err(e)) => return Err(e).context("LISTEN connection failed"),
                    None => return Ok(()),
                },
            }
        }
    }
}

/// The stream a watch RPC returns.
pub type Outgoing<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The sending half of a watcher's bounded buffer.
pub struct Sink<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    end: Arc<Mutex<Option<Status>>>,
}

/// Why a watcher stops sending.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The client went away.
    Gone,
    /// The buffer is full: the client does not keep up.
    Full,
}

/// A bounded buffer of `capacity` messages and the stream that drains it.
/// After the sink is dropped the stream ends, with the status given to
/// [`Sink::end`] if any.
pub fn buffer<T: Send + 'static>(capacity: usize) -> (Sink<T>, Outgoing<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let end = Arc::new(Mutex::new(None));
    let stream = futures::stream::unfold(
        (rx, end.clone(), false),
        |(mut rx, end, done): (mpsc::Receiver<Result<T, Status>>, _, bool)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(item) => Some((item, (rx, end, false))),
                None => {
                    let status = end.lock().unwrap_or_else(|e| e.into_inner()).take();
                    status.map(|s| (Err(s), (rx, end, true)))
                }
            }
        },
    );
    (Sink { tx, end }, Box::pin(stream))
}

impl<T> Sink<T> {
    /// Queue a message without waiting.
    pub fn send(&self, item: T) -> Result<(), Stop> {
        match self.tx.try_send(Ok(item)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Stop::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Gone),
        }
    }

    /// End the stream with `status`, after the messages already queued.
    pub fn end(self, status: Status) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The status that tells a client to reconnect and resume.
pub fn resume(why: &str, from: &str) -> Status {
    Status::unavailable(format!("{why}; resume with {from}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_buffer_refuses_and_the_end_status_follows_the_queued_messages() {
        let (sink, mut stream) = buffer::<u32>(2);
        assert_eq!(sink.send(1), Ok(()));
        assert_eq!(sink.send(2), Ok(()));
        assert_eq!(sink.send(3), Err(Stop::Full));
        sink.end(resume("too slow", "after_seq=2"));
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("resume with after_seq=2"));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_sink_ends_the_stream_cleanly() {
        let (sink, mut stream) = buffer::<u32>(2);
        sink.send(7).unwrap();
        drop(sink);
        assert_eq!(stream.next().await.unwrap().unwrap(), 7);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn wakeups_reach_the_saga_s_watchers_and_every_list_and_coalesce() {
        let hub = Hub::new();
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let mut wa = hub.register(Some(a));
        let mut wb = hub.register(Some(b));
        let mut wl = hub.register(None);
        assert_eq!(hub.watchers(), (2, 1));
        hub.notify(a);
        hub.notify(a);
        assert!(wa.rx.try_recv().is_ok());
        assert!(wa.rx.try_recv().is_err(), "two notifications, one wake-up");
        assert!(wb.rx.try_recv().is_err());
        assert!(wl.rx.try_recv().is_ok());
        hub.notify_all();
        assert!(wb.rx.try_recv().is_ok());
        drop(wa);
        drop(wl);
        assert_eq!(hub.watchers(), (1, 0));
        drop(wb);
        assert!(hub.inner.lock().unwrap().sagas.is_empty());
    }
}
