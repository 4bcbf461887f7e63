//! The orchestrator's HTTP address: the web console (the built `console/`
//! folder, served as files), `GET /config.json`, which tells the console
//! where the API is, whether it needs a token and where Jaeger's UI is, and
//! the operations routes every binary serves (`/healthz`, `/readyz`,
//! `/metrics`: `sagaflow_common::ops`).
//!
//! The console calls the API itself with gRPC-Web on the gRPC port (no
//! proxy); that port lets the browser origins of [`cors_origins_from_env`]
//! call it.
//!
//! `cargo build` never needs npm: the console is found at run time
//! ([`ConsoleSettings::from_env`]) and, when it is not built, the
//! orchestrator says so in its log and at `/`.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Security;

/// What the HTTP address serves.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// The built console, or why there is none.
    pub dir: Result<PathBuf, String>,
    /// `SAGAFLOW_CONSOLE_API_URL`, when set.
    pub api_url: Option<String>,
    /// The API's scheme and port, for the default API URL.
    pub api_scheme: &'static str,
    pub api_port: u16,
    pub token_required: bool,
    pub jaeger_ui_url: Option<String>,
}

impl ConsoleSettings {
    pub fn from_env(listen: &str, security: &Security) -> anyhow::Result<ConsoleSettings> {
        let api_port = listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("SAGAFLOW_ORCHESTRATOR_LISTEN: {listen:?} has no port")
            })?;
        let secure = matches!(security, Security::Secure(_));
        let api_url = non_empty("SAGAFLOW_CONSOLE_API_URL");
        if let Some(u) = &api_url {
            anyhow::ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "SAGAFLOW_CONSOLE_API_URL: {u:?} is not an http:// or https:// URL"
            );
        }
        let jaeger_ui_url =
            non_empty("SAGAFLOW_JAEGER_UI_URL").map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &jaeger_ui_url {
            anyhow::ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "SAGAFLOW_JAEGER_UI_URL: {u:?} is not an http:// or https:// URL"
            );
        }
        Ok(ConsoleSettings {
            dir: console_dir(),
            api_url,
            api_scheme: if secure { "https" } else { "http" },
            api_port,
            token_required: secure,
            jaeger_ui_url,
        })
    }

    /// The API URL for a browser that reached us as `host`.
    fn api_url_for(&self, host: &str) -> String {
        if let Some(u) = &self.api_url {
            return u.clone();
        }
        // "127.0.0.1:8080", "[::1]:8080", "example.com"; anything else
        // (a forged Host header) gets the loopback address.
        let host = if !host.is_empty()
            && host.len() <= 255
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            host
        } else {
            "127.0.0.1"
        };
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !port.contains(']') => name,
            _ => host,
        };
        format!("{}://{}:{}", self.api_scheme, name, self.api_port)
    }
}

fn non_empty(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `SAGAFLOW_CONSOLE_DIR`, else `console/dist` under the working directory,
/// else under the source tree the binary was built in (`target/<profile>/`'s
/// grandparent).
fn console_dir() -> Result<PathBuf, String> {
    let has_index = |d: &Path| d.join("index.html").is_file();
    if let Some(dir) = non_empty("SAGAFLOW_CONSOLE_DIR") {
        let dir = PathBuf::from(dir);
        return if has_index(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "SAGAFLOW_CONSOLE_DIR={} has no index.html (build the console: `npm ci && npm run build` in console/)",
                dir.display()
            ))
        };
    }
    let mut looked = Vec::new();
    let mut candidates = vec![PathBuf::from("console/dist")];
    if let Some(tree) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.parent().map(Path::to_path_buf))
    {
        candidates.push(tree.join("console/dist"));
    }
    for c in candidates {
        if has_index(&c) {
            return Ok(std::fs::canonicalize(&c).unwrap_or(c));
        }
        looked.push(c.display().to_string());
    }
    Err(format!(
        "the console is not built (looked in {}); build it with `npm ci && npm run build` in console/, or set SAGAFLOW_CONSOLE_DIR",
        looked.join(", ")
    ))
}

/// `SAGAFLOW_CORS_ALLOWED_ORIGINS` (`None`: any origin, from `*`); by
/// default the console's own origins.
pub fn cors_origins_from_env(http_listen: Option<&str>) -> anyhow::Result<Option<Vec<String>>> {
    let Some(list) = non_empty("SAGAFLOW_CORS_ALLOWED_ORIGINS") else {
        return Ok(Some(default_origins(http_listen)));
    };
    if list == "*" {
        return Ok(None);
    }
    let mut origins = Vec::new();
    for o in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        check_origin(o)
            .map_err(|why| anyhow::anyhow!("SAGAFLOW_CORS_ALLOWED_ORIGINS: {o:?} {why}"))?;
        origins.push(o.to_owned());
    }
    Ok(Some(origins))
}

/// An origin is `scheme://host[:port]`, nothing more.
fn check_origin(o: &str) -> Result<(), &'static str> {
    let rest = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
        .ok_or("is not an http:// or https:// origin")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) || o.chars().any(char::is_control) {
        return Err("is not an origin (scheme://host[:port], no path)");
    }
    if HeaderValue::from_str(o).is_err() {
        return Err("is not a valid header value");
    }
    Ok(())
}

fn default_origins(http_listen: Option<&str>) -> Vec<String> {
    let Some(addr) = http_listen else {
        return Vec::new();
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Vec::new();
    };
    let mut out = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    let unspecified = matches!(host, "0.0.0.0" | "[::]" | "" | "127.0.0.1" | "localhost");
    if !unspecified {
        out.push(format!("http://{host}:{port}"));
    }
    out
}

/// The CORS layer for the gRPC port.
pub fn cors(origins: Option<&[String]>) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    let allow = match origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            http::HeaderName::from_static("grpc-status"),
            http::HeaderName::from_static("grpc-message"),
            http::HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Log where the console is, or why it is not there.
pub fn announce(settings: &ConsoleSettings, addr: std::net::SocketAddr) {
    match &settings.dir {
        Ok(dir) => tracing::info!(
            url = %format!("http://{addr}/"),
            dir = %dir.display(),
            "web console"
        ),
        Err(why) => {
            tracing::warn!(url = %format!("http://{addr}/"), "web console not served: {why}")
        }
    }
}

/// Serve the HTTP address, with the `operations` routes, until `stop`.
pub async fn serve(
    listener: TcpListener,
    settings: ConsoleSettings,
    operations: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut app = Router::new().route("/config.json", get(config_json));
    app = match &settings.dir {
        Ok(dir) => app.fallback_service(
            tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true),
        ),
        Err(_) => app.fallback(not_built),
    };
    sagaflow_common::ops::serve(listener, app.with_state(settings).merge(operations), stop).await
}

async fn config_json(State(s): State<ConsoleSettings>, headers: HeaderMap, uri: Uri) -> Response {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let body = serde_json::json!({
        "apiUrl": s.api_url_for(&host),
        "tokenRequired": s.token_required,
        "jaegerUiUrl": s.jaeger_ui_url,
    });
    (
        [(http::header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

async fn not_built(State(s): State<ConsoleSettings>) -> Response {
    let why = s.dir.err().unwrap_or_default();
    (
        StatusCode::NOT_FOUND,
        format!("The web console is not served: {why}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(api_url: Option<&str>) -> ConsoleSettings {
        ConsoleSettings {
            dir: Err("x".into()),
            api_url: api_url.map(str::to_owned),
            api_scheme: "http",
            api_port: 50051,
            token_required: false,
            jaeger_ui_url: None,
        }
    }

    #[test]
    fn the_api_url_follows_the_host_the_browser_used() {
        let s = settings(None);
        assert_eq!(s.api_url_for("127.0.0.1:8080"), "http://127.0.0.1:50051");
        assert_eq!(s.api_url_for("localhost:8080"), "http://localhost:50051");
        assert_eq!(s.api_url_for("[::1]:8080"), "http://[::1]:50051");
        assert_eq!(s.api_url_for("[::1]"), "http://[::1]:50051");
        assert_eq!(s.api_url_for("sagas.example"), "http://sagas.example:50051");
        assert_eq!(s.api_url_for("evil\"/x"), "http://127.0.0.1:50051");
        let s = settings(Some("https://api.example"));
        assert_eq!(s.api_url_for("anything:1"), "https://api.example");
    }

    #[test]
    fn origins_are_checked() {
        assert!(check_origin("http://localhost:5173").is_ok());
        assert!(check_origin("https://console.example").is_ok());
        for bad in [
            "localhost:5173",
            "http://",
            "http://a/b",
            "https://a?x",
            "ftp://a",
            "http://a b",
            "http://a\0",
        ] {
            assert!(check_origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn by_default_the_console_s_own_origins_may_call() {
        assert_eq!(
            default_origins(Some("127.0.0.1:8080")),
            vec!["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        assert_eq!(
            default_origins(Some("10.0.0.5:80")),
            vec![
                "http://127.0.0.1:80",
                "http://localhost:80",
                "http://10.0.0.5:80"
            ]
        );
        assert!(default_origins(None).is_empty());
    }
}
