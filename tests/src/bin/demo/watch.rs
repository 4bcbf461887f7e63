//! Sagas as they end, from the orchestrator's `WatchSagas` stream (no
//! polling): every saga created or changed arrives as a change; those that
//! reach an end are handed out once.
//!
//! A broken stream (the orchestrator says "resume", or the connection
//! drops) is resumed with the last cursor received, which gives every
//! change since exactly once. A cursor too old to resume from answers with
//! a fresh snapshot (`reset`): the caller then asks for the sagas it still
//! waits for with `GetSaga`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sagaflow_protos::orchestrator::v1::{
    SagaState, SagasSnapshot, WatchSagasRequest, WatchSagasResponse,
};
use sagaflow_tests::system::Client;
use tonic::Streaming;

pub use sagaflow_protos::orchestrator::v1::Saga;

/// How long the stream may stay broken before the demo gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

pub enum Seen {
    /// A saga reached an end: COMPLETED, COMPENSATED, or paused
    /// (COMPENSATION_FAILED, SUSPENDED: a person has to act).
    Ended(Box<Saga>),
    /// Changes were lost to a reset: ask for what is still awaited.
    Reset,
}

pub struct Watch {
    client: Client,
    stream: Streaming<WatchSagasResponse>,
    cursor: String,
    /// Ended sagas already handed out (a paused saga may end again later).
    seen: HashSet<(String, i32)>,
    pending: std::collections::VecDeque<Seen>,
}

/// Whether the demo counts a saga in `state` as done.
pub fn ended(state: i32) -> bool {
    matches!(
        SagaState::try_from(state),
        Ok(SagaState::Completed
            | SagaState::Compensated
            | SagaState::CompensationFailed
            | SagaState::Suspended)
    )
}

impl Watch {
    /// Start watching every saga; returns the snapshot (what the databases
    /// held before).
    pub async fn open(mut client: Client) -> anyhow::Result<(Watch, SagasSnapshot)> {
        let mut stream = client
            .watch_sagas(WatchSagasRequest {
                snapshot_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("WatchSagas ended before its snapshot"))?;
        let watch = Watch {
            client,
            stream,
            cursor: first.cursor,
            seen: HashSet::new(),
            pending: Default::default(),
        };
        Ok((watch, first.snapshot.unwrap_or_default()))
    }

    /// The next saga that ended (or a reset), waiting as long as it takes.
    pub async fn next(&mut self) -> anyhow::Result<Seen> {
        loop {
            if let Some(seen) = self.pending.pop_front() {
                return Ok(seen);
            }
            let message = match self.stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.resume("the stream ended").await?;
                    continue;
                }
                Err(status) => {
                    self.resume(status.message()).await?;
                    continue;
                }
            };
            self.take(message);
        }
    }

    fn take(&mut self, message: WatchSagasResponse) {
        self.cursor = message.cursor;
        if message.snapshot.is_some_and(|s| s.reset) {
            self.pending.push_back(Seen::Reset);
        }
        for change in message.changes {
            let Some(saga) = change.saga else { continue };
            if ended(saga.state) && self.seen.insert((saga.saga_id.clone(), saga.state)) {
                self.pending.push_back(Seen::Ended(Box::new(saga)));
            }
        }
    }

    /// Reconnect after the last cursor, backing off from 0.25 s to 5 s.
    async fn resume(&mut self, why: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let request = WatchSagasRequest {
                snapshot_size: 1,
                cursor: self.cursor.clone(),
                ..Default::default()
            };
            match self.client.watch_sagas(request).await {
                Ok(response) => {
                    self.stream = response.into_inner();
                    return Ok(());
                }
                Err(e) if start.elapsed() > RECONNECT_FOR => {
                    anyhow::bail!(
                        "watching the sagas: the stream broke ({why}) and could not be resumed for {RECONNECT_FOR:?}: {}",
                        e.message()
                    );
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
