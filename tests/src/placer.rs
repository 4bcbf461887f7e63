//! Placing many sagas while orchestrators come and go: each one is retried
//! (same idempotency key, so at most one saga per request) against the
//! next orchestrator until one accepts it. Orders go through `PlaceOrder`,
//! other saga types (a trip) through `StartSaga`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sagaflow_protos::orchestrator::v1::{PlaceOrderRequest, StartSagaRequest};
use tokio::sync::Semaphore;

use crate::clients::Client;
use crate::orders::Expect;

/// A saga to start: an order, or a saga of any type by its input.
#[derive(Debug, Clone)]
pub enum Start {
    Order(PlaceOrderRequest),
    Saga(StartSagaRequest),
}

impl From<PlaceOrderRequest> for Start {
    fn from(r: PlaceOrderRequest) -> Self {
        Start::Order(r)
    }
}

impl From<StartSagaRequest> for Start {
    fn from(r: StartSagaRequest) -> Self {
        Start::Saga(r)
    }
}

/// One accepted saga (an order or another type).
#[derive(Debug, Clone)]
pub struct Placed {
    /// Its position in the batch.
    pub index: usize,
    pub saga_id: uuid::Uuid,
    pub expect: Expect,
    /// Calls it took (1 when the first was accepted).
    pub calls: u32,
}

/// How to place a batch.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Sagas started per second (0: all at once).
    pub per_second: f64,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// Longest time one order may keep being retried.
    pub give_up_after: Duration,
    /// Timeout of one PlaceOrder or StartSaga call.
    pub call_timeout: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            per_second: 0.0,
            concurrency: 32,
            give_up_after: Duration::from_secs(120),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Start `orders` (orders or other sagas, [`Start`]) through `clients`,
/// one per orchestrator, lazily connected (`System::orchestrator_clients`: an orchestrator that is down
/// now is retried later). Order `i` starts with client `i % clients.len()`
/// and moves to the next one after a failed call. Returns the accepted
/// orders in batch order.
pub async fn place_all<R: Into<Start>>(
    clients: &[Client],
    orders: Vec<(R, Expect)>,
    pace: Pace,
) -> anyhow::Result<Vec<Placed>> {
    anyhow::ensure!(!clients.is_empty(), "no orchestrator to place orders with");
    let clients: Arc<Vec<Client>> = Arc::new(clients.to_vec());
    let permits = Arc::new(Semaphore::new(pace.concurrency.max(1)));
    let mut ticker = (pace.per_second > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / pace.per_second));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (req, expect)) in orders.into_iter().enumerate() {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let clients = clients.clone();
        let pace = pace.clone();
        let req = req.into();
        tasks.spawn(async move {
            let placed = place_one(&clients, index, req, expect, &pace).await;
            drop(permit);
            placed
        });
    }
    let mut placed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        placed.push(r??);
    }
    placed.sort_by_key(|p| p.index);
    Ok(placed)
}

async fn place_one(
    clients: &[Client],
    index: usize,
    req: Start,
    expect: Expect,
    pace: &Pace,
) -> anyhow::Result<Placed> {
    let start = Instant::now();
    let mut calls = 0u32;
    loop {
        let mut client = clients[(index + calls as usize) % clients.len()].clone();
        calls += 1;
        let call = async {
            match &req {
                Start::Order(r) => client
                    .place_order(r.clone())
                    .await
                    .map(|r| r.into_inner().saga_id),
                Start::Saga(r) => client
                    .start_saga(r.clone())
                    .await
                    .map(|r| r.into_inner().saga_id),
            }
        };
        let last = match tokio::time::timeout(pace.call_timeout, call).await {
            Ok(Ok(saga_id)) => {
                let saga_id = uuid::Uuid::parse_str(&saga_id)?;
                return Ok(Placed {
                    index,
                    saga_id,
                    expect,
                    calls,
                });
            }
            // Bad input, or a token refused, will not get better.
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                ) =>
            {
                anyhow::bail!("saga {index} refused: {s}")
            }
            Ok(Err(s)) => format!("{}: {}", s.code(), s.message()),
            Err(_) => format!("no answer within {:?}", pace.call_timeout),
        };
        if start.elapsed() > pace.give_up_after {
            anyhow::bail!("saga {index} not accepted after {calls} calls: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
