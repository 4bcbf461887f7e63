//! A participant the test serves itself, for saga types defined only by a
//! file: the booking desk. It holds a seat (undone by releasing it),
//! confirms the booking (the pivot: nothing undoes it) and notifies the
//! traveller (forward-only). It runs the participants' real contract
//! ([`Executor`]: the inbox claim, the decision, the outcome event in the
//! outbox, in one transaction) over its own fresh database; its events
//! reach the orchestrator through a relay and Pub/Sub like any other's.
//!
//! Its commands carry the saga's canonical JSON input
//! (`{"traveller": "..."}`). Business rules, all data-driven so a test can
//! change them between a refusal and a retry:
//! - `HoldSeat` refuses a traveller listed in `no_seats`;
//!   `ReleaseSeat` releases (or leaves a tombstone when it comes first);
//! - `Confirm` refuses a traveller whose seat is not held (`no_hold`) or who
//!   is listed in `banned`;
//! - `Notify` refuses while the traveller's mailbox is closed
//!   (`mailbox_closed: <traveller>`), else records a notice.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sagaflow_common::{db, outbox, testkit};
use sagaflow_participants::Error;
use sagaflow_participants::command::{
    COMPENSATED_BEFORE_ACTION, Command, Decision, Executor, INBOX_MIGRATION, Rpc, Tx,
};
use sagaflow_participants::metrics::Metrics;
use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Service, http};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// The desk's gRPC service name: its methods are `/sagaflow.test.v1.Desk/*`.
pub const SERVICE: &str = "sagaflow.test.v1.Desk";

const TABLES: db::Migration = db::Migration {
    version: 3,
    name: "desk",
    sql: r#"
CREATE TABLE holds (
    saga_id   uuid PRIMARY KEY,
    traveller text,
    status    text NOT NULL CHECK (status IN ('HELD', 'RELEASED'))
);
CREATE TABLE bookings (
    saga_id   uuid PRIMARY KEY,
    traveller text NOT NULL
);
CREATE TABLE notices (
    command_id uuid PRIMARY KEY,
    saga_id    uuid NOT NULL,
    traveller  text NOT NULL
);
CREATE TABLE mailboxes (traveller text PRIMARY KEY, open boolean NOT NULL);
CREATE TABLE no_seats (traveller text PRIMARY KEY);
CREATE TABLE banned (traveller text PRIMARY KEY);
"#,
};

/// The desk: its database and its server on a loopback port.
pub struct Desk {
    /// Its database's URL (give it to a relay).
    pub database_url: String,
    /// Where it listens (`http://127.0.0.1:PORT`).
    pub url: String,
    pool: deadpool_postgres::Pool,
    name: String,
    shutdown: CancellationToken,
}

/// What the desk's tables say of one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    /// `HELD`, `RELEASED`, or `None`.
    pub hold: Option<String>,
    pub booked: bool,
    pub notices: i64,
}

impl Desk {
    /// A fresh database, migrated, and the desk serving on a free port.
    pub async fn start(prefix: &str) -> anyhow::Result<Desk> {
        let id = Uuid::new_v4().simple().to_string();
        let name = format!("sf_{prefix}_{}_desk", &id[..12]);
        let database_url = testkit::create(&name).await?;
        let pool = db::pool(&database_url, 4)?;
        db::migrate(
            &pool,
            &[outbox::MIGRATION, INBOX_MIGRATION, TABLES, outbox::TUNING],
        )
        .await?;
        let mut registry = prometheus_client::registry::Registry::default();
        let exec = Executor::new(
            pool.clone(),
            "desk",
            SERVICE,
            Metrics::register(&mut registry, "desk"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let service = DeskService {
            exec: Arc::new(exec),
        };
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await
            {
                tracing::error!("the desk stopped: {e}");
            }
        });
        Ok(Desk {
            database_url,
            url,
            pool,
            name,
            shutdown,
        })
    }

    /// Open or close `traveller`'s mailbox.
    pub async fn set_mailbox(&self, traveller: &str, open: bool) -> anyhow::Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO mailboxes (traveller, open) VALUES ($1, $2)
                 ON CONFLICT (traveller) DO UPDATE SET open = EXCLUDED.open",
                &[&traveller, &open],
            )
            .await?;
        Ok(())
    }

    /// List `traveller` in `table` (`no_seats` or `banned`).
    pub async fn list(&self, table: &str, traveller: &str) -> anyhow::Result<()> {
        anyhow::ensure!(matches!(table, "no_seats" | "banned"), "no table {table}");
        self.pool
            .get()
            .await?
            .execute(
                &format!("INSERT INTO {table} (traveller) VALUES ($1) ON CONFLICT DO NOTHING"),
                &[&traveller],
            )
            .await?;
        Ok(())
    }

    /// The desk's rows of one saga.
    pub async fn rows(&self, saga_id: Uuid) -> anyhow::Result<Rows> {
        let client = self.pool.get().await?;
        let hold = client
            .query_opt("SELECT status FROM holds WHERE saga_id = $1", &[&saga_id])
            .await?
            .map(|r| r.get(0));
        let booked = client
            .query_opt("SELECT 1 FROM bookings WHERE saga_id = $1", &[&saga_id])
            .await?
            .is_some();
        let notices = client
            .query_one(
                "SELECT count(*) FROM notices WHERE saga_id = $1",
                &[&saga_id],
            )
            .await?
            .get(0);
        Ok(Rows {
            hold,
            booked,
            notices,
        })
    }

    /// Commands the desk handled for one saga (its inbox rows).
    pub async fn commands(&self, saga_id: Uuid) -> anyhow::Result<i64> {
        Ok(self
            .pool
            .get()
            .await?
            .query_one("SELECT count(*) FROM inbox WHERE saga_id = $1", &[&saga_id])
            .await?
            .get(0))
    }
}

impl Drop for Desk {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if std::env::var_os("SAGAFLOW_KEEP_DATABASES").is_none() {
            testkit::drop_now(vec![std::mem::take(&mut self.name)]);
        }
    }
}

/// The traveller named by a command's JSON input.
fn traveller(cmd: &Command) -> Result<String, Error> {
    let input: serde_json::Value = serde_json::from_slice(&cmd.raw_input)
        .map_err(|e| Error::invalid("input", format!("not JSON: {e}")))?;
    input["traveller"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::invalid("input", "has no traveller"))
}

async fn listed(tx: &Tx<'_>, table: &str, traveller: &str) -> Result<bool, Error> {
    Ok(tx
        .query_opt(
            &format!("SELECT 1 FROM {table} WHERE traveller = $1"),
            &[&traveller],
        )
        .await?
        .is_some())
}

async fn hold_seat(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = traveller(cmd)?;
    if listed(tx, "no_seats", &who).await? {
        return Ok(Decision::refused("no_seats", json!({})));
    }
    let inserted = tx
        .execute(
            "INSERT INTO holds (saga_id, traveller, status) VALUES ($1, $2, 'HELD')
             ON CONFLICT (saga_id) DO NOTHING",
            &[&cmd.saga_id, &who],
        )
        .await?;
    if inserted == 1 {
        return Ok(Decision::succeeded(json!({ "hold": "HELD" })));
    }
    let status: String = tx
        .query_one(
            "SELECT status FROM holds WHERE saga_id = $1 FOR UPDATE",
            &[&cmd.saga_id],
        )
        .await?
        .get(0);
    Ok(match status.as_str() {
        "RELEASED" => Decision::refused(COMPENSATED_BEFORE_ACTION, json!({})),
        _ => Decision::succeeded(json!({ "hold": status, "existing": true })),
    })
}

async fn release_seat(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    // A tombstone when the release comes first; else release the hold.
    tx.execute(
        "INSERT INTO holds (saga_id, status) VALUES ($1, 'RELEASED')
         ON CONFLICT (saga_id) DO UPDATE SET status = 'RELEASED'",
        &[&cmd.saga_id],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "hold": "RELEASED" })))
}

async fn confirm(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = traveller(cmd)?;
    let held = tx
        .query_opt(
            "SELECT 1 FROM holds WHERE saga_id = $1 AND status = 'HELD' FOR UPDATE",
            &[&cmd.saga_id],
        )
        .await?
        .is_some();
    if !held {
        return Ok(Decision::refused("no_hold", json!({})));
    }
    if listed(tx, "banned", &who).await? {
        return Ok(Decision::refused(format!("banned: {who}"), json!({})));
    }
    tx.execute(
        "INSERT INTO bookings (saga_id, traveller) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&cmd.saga_id, &who],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "booked": true })))
}

async fn notify(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = traveller(cmd)?;
    let closed = tx
        .query_opt(
            "SELECT 1 FROM mailboxes WHERE traveller = $1 AND NOT open",
            &[&who],
        )
        .await?
        .is_some();
    if closed {
        return Ok(Decision::refused(
            format!("mailbox_closed: {who}"),
            json!({}),
        ));
    }
    tx.execute(
        "INSERT INTO notices (command_id, saga_id, traveller) VALUES ($1, $2, $3)",
        &[&cmd.command_id, &cmd.saga_id, &who],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "notified": who })))
}

type Decide = for<'t> fn(&'t Tx<'t>, &'t Command) -> BoxFuture<'t, Result<Decision, Error>>;

/// The desk's step RPCs by method name.
fn routes() -> HashMap<&'static str, (Rpc, Decide)> {
    HashMap::from([
        (
            "HoldSeat",
            (
                Rpc::action("HoldSeat", false),
                (|tx, cmd| hold_seat(tx, cmd).boxed()) as Decide,
            ),
        ),
        (
            "ReleaseSeat",
            (
                Rpc::compensation("ReleaseSeat"),
                (|tx, cmd| release_seat(tx, cmd).boxed()) as Decide,
            ),
        ),
        (
            "Confirm",
            (
                Rpc::action("Confirm", false),
                (|tx, cmd| confirm(tx, cmd).boxed()) as Decide,
            ),
        ),
        (
            "Notify",
            (
                Rpc::action("Notify", false),
                (|tx, cmd| notify(tx, cmd).boxed()) as Decide,
            ),
        ),
    ])
}

/// Serves every method of [`SERVICE`] by path, each a `StepCommand` in and
/// a `CommandAck` out, through the executor.
#[derive(Clone)]
struct DeskService {
    exec: Arc<Executor>,
}

impl tonic::server::NamedService for DeskService {
    const NAME: &'static str = SERVICE;
}

/// One step RPC as a tonic unary service.
struct Step {
    exec: Arc<Executor>,
    rpc: Rpc,
    decide: Decide,
}

impl tonic::server::UnaryService<StepCommand> for Step {
    type Response = CommandAck;
    type Future = BoxFuture<'static, Result<Response<CommandAck>, Status>>;

    fn call(&mut self, request: Request<StepCommand>) -> Self::Future {
        let exec = self.exec.clone();
        let (rpc, decide) = (self.rpc, self.decide);
        async move { exec.handle(rpc, request, decide).await }.boxed()
    }
}

impl<B> Service<http::Request<B>> for DeskService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix(&format!("/{SERVICE}/"))
            .unwrap_or_default()
            .to_owned();
        let exec = self.exec.clone();
        async move {
            let Some((rpc, decide)) = routes().remove(method.as_str()) else {
                return Ok(Status::unimplemented(format!("no method {method}")).into_http());
            };
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Step { exec, rpc, decide }, req).await)
        }
        .boxed()
    }
}
