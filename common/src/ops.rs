//! The operations address every binary serves over HTTP, for probes and
//! scrapers:
//!
//! - `GET /healthz`: 200 while the process runs (liveness);
//! - `GET /readyz`: 200 only when every readiness check passes and no
//!   shutdown has begun; 503 with a short plain-text reason otherwise
//!   (`draining: shutting down`, `not ready: database: …`);
//! - `GET /metrics`: the binary's metrics in the Prometheus text format
//!   (0.0.4), or OpenMetrics when the scraper asks for it (`Accept:
//!   application/openmetrics-text`). Every name is in docs/metrics.md.
//!
//! A binary builds an [`Ops`] from its metrics [`Registry`] and the shutdown
//! token (cancelled by SIGTERM: `/readyz` turns 503 at once), adds its
//! readiness checks ([`Ops::check`]: cheap probes, each bounded by
//! [`CHECK_TIMEOUT`]) and the gauges it reads from elsewhere right before
//! each scrape ([`Ops::refresh`], bounded by [`REFRESH_TIMEOUT`]), and serves
//! [`Ops::router`] with [`serve`] until its own stop token. Each binary
//! cancels that token only once its drain has finished, so the address keeps
//! answering (503 on `/readyz`) while it drains.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest wait for one readiness check; past it the check fails.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for one refresh before a scrape; past it the scrape goes on
/// without it (the refresher decides what its gauges then say).
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// A value of an HTTP address setting that turns the server off.
pub const OFF: &str = "off";

/// Histogram buckets for operations that take milliseconds to minutes.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram of seconds over [`SECONDS_BUCKETS`].
pub fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// A family of [`seconds_histogram`]s, one per label set.
pub type SecondsFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// An empty [`SecondsFamily`].
pub fn seconds_family<L: Clone + std::hash::Hash + Eq>() -> SecondsFamily<L> {
    Family::new_with_constructor(seconds_histogram)
}

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What the operations address serves; build it, then [`router`](Self::router).
pub struct Ops {
    registry: Registry,
    /// Readiness checks by name, run concurrently on every `/readyz`.
    checks: Vec<(String, Probe)>,
    /// Run before every scrape (gauges read from a database).
    refreshers: Vec<Refresh>,
    /// Cancelled when a drain begins: `/readyz` answers 503 from then on.
    draining: CancellationToken,
}

impl Ops {
    /// Serve `registry`; `/readyz` answers 503 once `draining` is cancelled.
    pub fn new(registry: Registry, draining: CancellationToken) -> Ops {
        Ops {
            registry,
            checks: Vec::new(),
            refreshers: Vec::new(),
            draining,
        }
    }

    /// A readiness check named `name`: `Err(reason)` makes `/readyz` 503.
    pub fn check<F, Fut>(mut self, name: impl Into<String>, probe: F) -> Ops
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.into(), Arc::new(move || Box::pin(probe()))));
        self
    }

    /// Run `refresh` before every scrape of `/metrics`.
    pub fn refresh<F, Fut>(mut self, refresh: F) -> Ops
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refreshers.push(Arc::new(move || Box::pin(refresh())));
        self
    }

    /// The routes `/healthz`, `/readyz` and `/metrics`, to serve alone
    /// ([`serve`]) or merged into a binary's own router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }

    /// Why the process is not ready, or `None` when it is.
    pub async fn not_ready(&self) -> Option<String> {
        if self.draining.is_cancelled() {
            return Some("draining: shutting down".to_owned());
        }
        let results = futures::future::join_all(self.checks.iter().map(|(name, probe)| {
            let probe = probe.clone();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, probe()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                outcome.err().map(|why| format!("{name}: {why}"))
            }
        }))
        .await;
        let failed: Vec<String> = results.into_iter().flatten().collect();
        (!failed.is_empty()).then(|| format!("not ready: {}", failed.join("; ")))
    }

    /// The metrics, refreshed, in the Prometheus text format or, with
    /// `openmetrics`, in OpenMetrics.
    pub async fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        futures::future::join_all(self.refreshers.iter().map(|refresh| {
            let refresh = refresh.clone();
            async move {
                if tokio::time::timeout(REFRESH_TIMEOUT, refresh())
                    .await
                    .is_err()
                {
                    tracing::debug!("a metrics refresh took longer than {REFRESH_TIMEOUT:?}");
                }
            }
        }))
        .await;
        let mut out = String::with_capacity(16 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_owned())
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.not_ready().await {
        None => text(StatusCode::OK, "ready\n".to_owned()),
        Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

const OPENMETRICS: &str = "application/openmetrics-text";

async fn metrics(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(OPENMETRICS));
    match ops.encode(openmetrics).await {
        Ok(body) => {
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response()
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// An HTTP address setting: `default` when unset or empty, `None` when set
/// to [`OFF`] (no HTTP server).
pub fn listen_from_env(var: &str, default: &str) -> Option<String> {
    listen(crate::config::var_opt(var), default)
}

/// [`listen_from_env`] of a value read.
fn listen(value: Option<String>, default: &str) -> Option<String> {
    let value = value.unwrap_or_else(|| default.to_owned());
    (!value.eq_ignore_ascii_case(OFF)).then_some(value)
}

/// Bind the HTTP address `addr`, read from `var` (named in the error).
pub async fn bind(var: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr} ({var}): {e}"))
}

/// Serve `router` on `listener` until `stop` is cancelled, then finish the
/// requests in hand.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}

/// Start serving `ops` on `listener` in the background; the address logs as
/// `what`. Stops when `stop` is cancelled.
pub fn spawn(
    listener: TcpListener,
    ops: Ops,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(url = %format!("http://{addr}/"), "serving /healthz, /readyz and /metrics");
    }
    tokio::spawn(serve(listener, ops.router(), stop))
}

/// A readiness probe of one database: `SELECT 1` on a connection of its
/// own (never queued behind a busy pool), bounded by [`CHECK_TIMEOUT`] by
/// the caller.
#[derive(Clone)]
pub struct DbProbe {
    pool: deadpool_postgres::Pool,
}

impl DbProbe {
    /// A probe of the database at `url` (connects on first use).
    pub fn new(url: &str) -> anyhow::Result<DbProbe> {
        Ok(DbProbe {
            pool: crate::db::pool(url, 1)?,
        })
    }

    /// The probe's own pool (one connection), for reads at scrape time.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// `Ok` when the database answered `SELECT 1`.
    pub async fn check(&self) -> Result<(), String> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| format!("unreachable: {}", crate::error::chain(&e)))?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("SELECT 1 failed: {}", crate::error::chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(router: Router, path: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        use tower::ServiceExt as _;
        let mut request = axum::http::Request::get(path);
        if let Some(a) = accept {
            request = request.header(header::ACCEPT, a);
        }
        let response = router
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn registry() -> (Registry, prometheus_client::metrics::counter::Counter) {
        let mut registry = Registry::with_prefix("sagaflow_test");
        let counter = prometheus_client::metrics::counter::Counter::default();
        registry.register("things", "Things done", counter.clone());
        (registry, counter)
    }

    #[tokio::test]
    async fn readyz_names_every_failing_check_and_says_when_draining() {
        let draining = CancellationToken::new();
        let ops = Ops::new(registry().0, draining.clone())
            .check("database", || async { Ok(()) })
            .check("pubsub", || async { Err("no stream is up".to_owned()) });
        let router = ops.router();
        let (status, _, body) = get(router.clone(), "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: pubsub: no stream is up\n");
        let (status, _, body) = get(router.clone(), "/healthz", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));

        let ready = Ops::new(registry().0, draining.clone())
            .check("database", || async { Ok(()) })
            .router();
        let (status, _, body) = get(ready.clone(), "/readyz", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        draining.cancel();
        let (status, _, body) = get(ready, "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "draining: shutting down\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_after_its_timeout() {
        let ops = Ops::new(registry().0, CancellationToken::new()).check("database", || async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let why = ops.not_ready().await.unwrap();
        assert!(
            why.starts_with("not ready: database: no answer within"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_or_openmetrics_when_asked() {
        let (registry, counter) = registry();
        counter.inc_by(3);
        let refreshed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = refreshed.clone();
        let router = Ops::new(registry, CancellationToken::new())
            .refresh(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .router();
        let (status, content_type, body) = get(router.clone(), "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(
            body.contains("# TYPE sagaflow_test_things_total counter"),
            "{body}"
        );
        assert!(body.contains("\nsagaflow_test_things_total 3\n"), "{body}");
        let (_, content_type, body) = get(
            router,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        )
        .await;
        assert!(content_type.starts_with(OPENMETRICS), "{content_type}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(refreshed.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn an_http_address_can_be_turned_off() {
        let default = "127.0.0.1:8081";
        assert_eq!(listen(None, default).as_deref(), Some(default));
        assert_eq!(
            listen(Some("0.0.0.0:9000".into()), default).as_deref(),
            Some("0.0.0.0:9000")
        );
        assert_eq!(listen(Some("off".into()), default), None);
        assert_eq!(listen(Some("OFF".into()), default), None);
        assert_eq!(
            listen_from_env("SAGAFLOW_OPS_TEST_UNSET", default).as_deref(),
            Some(default)
        );
    }
}
