//! [`Participant`]: a participant described as its name, its gRPC service,
//! its own migrations and one function per step RPC; and the gRPC service
//! that routes each call by its method path to that function through the
//! [`Executor`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sagaflow_common::db::Migration;
use sagaflow_common::outbox;
use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use tonic::body::Body;
use tonic::{Request, Response, Status};
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::command::{Command, DecisionFuture, Executor, INBOX_MIGRATION, Rpc, Tx};

/// One step function: it gets the command's open transaction and the
/// command, and decides. See [`Participant::action`].
///
/// Implemented for every `Fn(&Tx, &Command) -> DecisionFuture` that is
/// `Send + Sync + 'static`; write it as a closure that calls an `async fn`
/// and boxes its future:
///
/// ```ignore
/// .action("ReserveSeat", |tx, cmd| reserve_seat(tx, cmd).boxed())
/// ```
pub trait Step: Send + Sync + 'static {
    /// Decide `cmd` inside `tx`, without committing it.
    fn run<'t>(&self, tx: &'t Tx<'t>, cmd: &'t Command) -> DecisionFuture<'t>;
}

impl<F> Step for F
where
    F: for<'t> Fn(&'t Tx<'t>, &'t Command) -> DecisionFuture<'t> + Send + Sync + 'static,
{
    fn run<'t>(&self, tx: &'t Tx<'t>, cmd: &'t Command) -> DecisionFuture<'t> {
        self(tx, cmd)
    }
}

/// The non-step methods of a participant's service (read-only look-ups):
/// a tonic service the router hands every other method of the service to.
pub type OtherMethods = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Migration versions the library uses in every participant database:
/// `1` the outbox, `2` the inbox, `10` the inbox retention index, `11` the
/// outbox's autovacuum settings. A participant's own migrations use others.
pub const RESERVED_VERSIONS: [i32; 4] = [1, 2, 10, 11];

/// A participant: what a team writes. Build it, then hand it to
/// [`crate::serve`].
///
/// ```ignore
/// let flight = Participant::new("flight", "trip.v1.FlightService")
///     .migration(SEATS)
///     .action("ReserveSeat", |tx, cmd| reserve_seat(tx, cmd).boxed())
///     .compensation("ReleaseSeat", |tx, cmd| release_seat(tx, cmd).boxed());
/// ```
#[derive(Clone)]
pub struct Participant {
    name: &'static str,
    service: &'static str,
    migrations: Vec<Migration>,
    steps: Steps,
    other: Option<Arc<MakeOther>>,
}

/// Each step method, by name.
type Steps = BTreeMap<&'static str, (Rpc, Arc<dyn Step>)>;

type MakeOther = dyn Fn(deadpool_postgres::Pool) -> OtherMethods + Send + Sync;

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("name", &self.name)
            .field("service", &self.service)
            .field(
                "migrations",
                &self
                    .migrations
                    .iter()
                    .map(|m| m.version)
                    .collect::<Vec<_>>(),
            )
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("other_methods", &self.other.is_some())
            .finish()
    }
}

impl Participant {
    /// Participant `name` (in its events, its metrics and its
    /// `SAGAFLOW_<NAME>_*` settings: lower-case letters, digits, `-`),
    /// serving the gRPC service `service` (fully qualified:
    /// `trip.v1.FlightService`). A definition file names its steps'
    /// methods as `/<service>/<Method>`.
    pub fn new(name: &'static str, service: &'static str) -> Self {
        Self {
            name,
            service,
            migrations: Vec::new(),
            steps: BTreeMap::new(),
            other: None,
        }
    }

    /// Add one of the participant's own migrations (its business tables,
    /// its seed data), applied once per database in the order added, after
    /// the library's inbox and outbox. Versions must be unique and must not
    /// be one of [`RESERVED_VERSIONS`].
    pub fn migration(mut self, migration: Migration) -> Self {
        self.migrations.push(migration);
        self
    }

    /// Serve `method` as an action: `step` does the business change and
    /// answers [`Decision::succeeded`](crate::Decision::succeeded) (with an
    /// output for later steps, if any) or
    /// [`Decision::refused`](crate::Decision::refused).
    ///
    /// `step` runs inside the command's one transaction, after its command
    /// id was claimed in the inbox and only the first time it is seen; it
    /// must not commit. An error rolls everything back: an
    /// [`Error::invalid`](crate::Error::invalid) answers `INVALID_ARGUMENT`
    /// (nothing written; the sender is wrong), a database error
    /// `UNAVAILABLE` (the orchestrator re-sends the same command).
    ///
    /// Key every business row by `saga_id` and insert with
    /// `ON CONFLICT DO NOTHING`: when the row is the compensation's
    /// tombstone, refuse with
    /// [`COMPENSATED_BEFORE_ACTION`](crate::COMPENSATED_BEFORE_ACTION).
    pub fn action<F>(self, method: &'static str, step: F) -> Self
    where
        F: for<'t> Fn(&'t Tx<'t>, &'t Command) -> DecisionFuture<'t> + Send + Sync + 'static,
    {
        self.step(Rpc::action(method), step)
    }

    /// Serve `method` as a compensation: `step` undoes what the action of
    /// the same saga did. When it comes first (the action is late, or never
    /// arrives), it leaves a tombstone row keyed by `saga_id`, so the
    /// action, if it ever comes, is refused. Undoing what never happened is
    /// a success.
    pub fn compensation<F>(self, method: &'static str, step: F) -> Self
    where
        F: for<'t> Fn(&'t Tx<'t>, &'t Command) -> DecisionFuture<'t> + Send + Sync + 'static,
    {
        self.step(Rpc::compensation(method), step)
    }

    fn step<S: Step>(mut self, rpc: Rpc, step: S) -> Self {
        self.steps.insert(rpc.method, (rpc, Arc::new(step)));
        self
    }

    /// Serve the service's other methods (read-only look-ups a caller makes
    /// outside any saga) with the tonic server of the same gRPC service
    /// that `service` makes from the participant's pool. Step methods never
    /// reach it: the library serves those.
    pub fn other_methods<F, S>(mut self, service: F) -> Self
    where
        F: Fn(deadpool_postgres::Pool) -> S + Send + Sync + 'static,
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.other = Some(Arc::new(move |pool| {
            BoxCloneSyncService::new(service(pool))
        }));
        self
    }

    /// The participant's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its gRPC service's fully qualified name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The step methods it serves, with their kinds.
    pub fn steps(&self) -> impl Iterator<Item = Rpc> + '_ {
        self.steps.values().map(|(rpc, _)| *rpc)
    }

    /// Every migration of its database, in the order applied: the
    /// library's outbox and inbox, its own, then the library's inbox
    /// retention index and outbox tuning.
    pub fn migrations(&self) -> Vec<Migration> {
        let mut all = vec![outbox::MIGRATION, INBOX_MIGRATION];
        all.extend(self.migrations.iter().cloned());
        all.extend([crate::retention::MIGRATION, outbox::TUNING]);
        all
    }

    /// Whether the description can be served: names in their alphabets,
    /// at least one step, migration versions unique and not reserved.
    pub fn check(&self) -> anyhow::Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        anyhow::ensure!(
            name_ok,
            "participant name {:?}: use 1 to 63 lower-case letters, digits and '-'",
            self.name
        );
        let dotted = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|part| {
                    part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        };
        anyhow::ensure!(
            dotted(self.service),
            "participant {}: service {:?} is not a fully qualified gRPC service name",
            self.name,
            self.service
        );
        anyhow::ensure!(
            !self.steps.is_empty(),
            "participant {}: no step methods",
            self.name
        );
        for method in self.steps.keys() {
            anyhow::ensure!(
                !method.contains('.') && dotted(method),
                "participant {}: method {method:?} is not a gRPC method name",
                self.name
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.migrations {
            anyhow::ensure!(
                !RESERVED_VERSIONS.contains(&m.version),
                "participant {}: migration {} ({}) uses a version the library keeps ({RESERVED_VERSIONS:?})",
                self.name,
                m.version,
                m.name
            );
            anyhow::ensure!(
                seen.insert(m.version),
                "participant {}: migration version {} is used twice",
                self.name,
                m.version
            );
        }
        Ok(())
    }

    /// The gRPC service serving every method of [`Self::service`] by path.
    pub(crate) fn router(&self, exec: Executor) -> Router {
        Router {
            prefix: Arc::from(format!("/{}/", self.service)),
            steps: Arc::new(self.steps.clone()),
            other: self.other.as_ref().map(|make| make(exec.pool().clone())),
            exec: Arc::new(exec),
        }
    }
}

/// Serves a participant's service: each step method through the executor,
/// other methods by [`Participant::other_methods`], else `UNIMPLEMENTED`.
#[derive(Clone)]
pub(crate) struct Router {
    prefix: Arc<str>,
    steps: Arc<Steps>,
    other: Option<OtherMethods>,
    exec: Arc<Executor>,
}

/// One step RPC as a tonic unary service.
struct Unary {
    exec: Arc<Executor>,
    rpc: Rpc,
    step: Arc<dyn Step>,
}

impl tonic::server::UnaryService<StepCommand> for Unary {
    type Response = CommandAck;
    type Future = BoxFuture<'static, Result<Response<CommandAck>, Status>>;

    fn call(&mut self, request: Request<StepCommand>) -> Self::Future {
        let (exec, rpc, step) = (self.exec.clone(), self.rpc, self.step.clone());
        async move {
            exec.handle(rpc, request, move |tx, cmd| step.run(tx, cmd))
                .await
        }
        .boxed()
    }
}

impl Service<http::Request<axum::body::Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix(&*self.prefix)
            .unwrap_or_default();
        match self.steps.get(method) {
            Some((rpc, step)) => {
                let unary = Unary {
                    exec: self.exec.clone(),
                    rpc: *rpc,
                    step: step.clone(),
                };
                async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.unary(unary, req).await)
                }
                .boxed()
            }
            None => match &self.other {
                Some(other) => other.clone().call(req.map(Body::new)).boxed(),
                None => {
                    let status = Status::unimplemented(format!(
                        "{}{method} is not a method of this participant",
                        self.prefix
                    ));
                    async move { Ok(status.into_http()) }.boxed()
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;

    fn step<'t>(_: &'t Tx<'t>, _: &'t Command) -> DecisionFuture<'t> {
        async { Ok(Decision::succeeded(serde_json::json!({}))) }.boxed()
    }

    const OWN: Migration = Migration {
        version: 100,
        name: "seats",
        sql: "CREATE TABLE seats (id text)",
    };

    #[test]
    fn a_good_description_passes_and_lists_every_migration_in_order() {
        let p = Participant::new("car-rental", "trip.v1.CarService")
            .migration(OWN)
            .action("Reserve", step)
            .compensation("Return", |tx, cmd| step(tx, cmd));
        p.check().unwrap();
        let versions: Vec<i32> = p.migrations().iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 100, 10, 11]);
        let kinds: Vec<_> = p.steps().map(|r| (r.method, r.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("Reserve", crate::CommandKind::Action),
                ("Return", crate::CommandKind::Compensation)
            ]
        );
    }

    #[test]
    fn bad_descriptions_are_refused_with_the_reason() {
        let refused = |p: Participant| p.check().unwrap_err().to_string();
        let ok = || Participant::new("flight", "trip.v1.FlightService").action("Reserve", step);
        assert!(
            refused(Participant::new("Flight!", "a.B").action("R", step))
                .contains("participant name \"Flight!\"")
        );
        assert!(
            refused(Participant::new("flight", "a..B").action("R", step))
                .contains("not a fully qualified gRPC service name")
        );
        assert!(refused(Participant::new("flight", "trip.v1.F")).contains("no step methods"));
        assert!(refused(ok().action("a/b", step)).contains("not a gRPC method name"));
        let inbox = Migration { version: 2, ..OWN };
        assert!(refused(ok().migration(inbox)).contains("a version the library keeps"));
        assert!(refused(ok().migration(OWN).migration(OWN)).contains("used twice"));
    }
}
