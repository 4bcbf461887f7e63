//! Bearer tokens on the public API.
//!
//! Every `SagaService` call must carry `authorization: Bearer <token>` with
//! a configured client token (`SAGAFLOW_API_TOKENS`) or operator token
//! (`SAGAFLOW_OPERATOR_TOKENS`); the operator actions ([`OPERATOR_METHODS`])
//! need an operator token. The check wraps the service itself ([`Guarded`]),
//! before any handler runs, so a handler cannot forget it; gRPC health is a
//! separate service and stays open for probes.
//!
//! Missing or unknown token: `UNAUTHENTICATED`. A client token on an
//! operator action: `PERMISSION_DENIED`. Every configured token is compared
//! (in constant time) whatever the first match, and no token is ever logged.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use sagaflow_common::security::Required;
use sagaflow_common::security::secret::{self, Secret};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;

/// `SagaService` methods only an operator may call.
pub const OPERATOR_METHODS: [&str; 4] = [
    "RetrySaga",
    "CancelSaga",
    "ListDeadLetters",
    "RedriveDeadLetters",
];

/// The configured tokens; `Debug` shows only how many there are.
#[derive(Clone)]
pub struct Tokens {
    clients: Vec<Secret>,
    operators: Vec<Secret>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("clients", &self.clients.len())
            .field("operators", &self.operators.len())
            .finish()
    }
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Operator,
}

impl Tokens {
    pub fn new(clients: Vec<Secret>, operators: Vec<Secret>) -> Self {
        Tokens { clients, operators }
    }

    /// `SAGAFLOW_API_TOKENS` and `SAGAFLOW_OPERATOR_TOKENS` (or their
    /// `_FILE` forms); a missing one is noted in `required`.
    pub fn from_env(required: &mut Required) -> anyhow::Result<Tokens> {
        let mut list = |var: &str| -> anyhow::Result<Vec<Secret>> {
            let tokens = secret::tokens_from_env(var)?;
            if tokens.is_none() {
                required.missing(format!("{var} (or {var}_FILE)"));
            }
            Ok(tokens.unwrap_or_default())
        };
        Ok(Tokens::new(
            list("SAGAFLOW_API_TOKENS")?,
            list("SAGAFLOW_OPERATOR_TOKENS")?,
        ))
    }

    /// The role of a presented token, comparing it with every token.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let any = |tokens: &[Secret]| {
            tokens
                .iter()
                .fold(false, |found, t| found | t.matches(presented))
        };
        let operator = any(&self.operators);
        let client = any(&self.clients);
        if operator {
            Some(Role::Operator)
        } else if client {
            Some(Role::Client)
        } else {
            None
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
    NotOperator { method: &'static str },
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Missing => tonic::Status::unauthenticated(
                "authorization: a bearer token is required (authorization: Bearer <token>)",
            ),
            Refusal::Unknown => tonic::Status::unauthenticated("authorization: unknown token"),
            Refusal::NotOperator { method } => tonic::Status::permission_denied(format!(
                "authorization: {method} needs an operator token"
            )),
        }
    }
}

/// Decide on a call to gRPC `path` with this `authorization` header.
pub fn authorize(
    tokens: &Tokens,
    path: &str,
    authorization: Option<&[u8]>,
) -> Result<Role, Refusal> {
    let token = authorization
        .and_then(secret::bearer_of)
        .ok_or(Refusal::Missing)?;
    let role = tokens.role_of(token).ok_or(Refusal::Unknown)?;
    let method = path.rsplit('/').next().unwrap_or_default();
    match OPERATOR_METHODS.iter().find(|m| **m == method) {
        Some(method) if role != Role::Operator => Err(Refusal::NotOperator { method }),
        _ => Ok(role),
    }
}

/// A gRPC service behind the token check; `None` tokens let every call
/// through (insecure mode).
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, tokens: Option<Tokens>) -> Self {
        Guarded {
            inner,
            tokens: tokens.map(Arc::new),
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(refusal) = authorize(tokens, request.uri().path(), header) {
                let path: String = request.uri().path().chars().take(128).collect();
                tracing::info!(?refusal, path, "API call refused");
                let status = tonic::Status::from(refusal);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "client-token-0123456789";
    const OPERATOR: &str = "operator-token-0123456789";
    const SVC: &str = "/sagaflow.orchestrator.v1.SagaService/";

    fn tokens() -> Tokens {
        Tokens::new(vec![Secret::new(CLIENT)], vec![Secret::new(OPERATOR)])
    }

    fn call(method: &str, header: Option<String>) -> Result<Role, Refusal> {
        authorize(
            &tokens(),
            &format!("{SVC}{method}"),
            header.as_deref().map(str::as_bytes),
        )
    }

    #[test]
    fn every_call_needs_a_known_token() {
        assert_eq!(call("GetSaga", None), Err(Refusal::Missing));
        assert_eq!(
            call("GetSaga", Some(format!("Basic {CLIENT}"))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            call("GetSaga", Some("Bearer not-a-configured-token".into())),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            call("PlaceOrder", Some(format!("Bearer {CLIENT}"))),
            Ok(Role::Client)
        );
        assert_eq!(
            call("ListSagas", Some(format!("bearer {OPERATOR}"))),
            Ok(Role::Operator)
        );
    }

    #[test]
    fn operator_actions_need_an_operator_token() {
        for method in OPERATOR_METHODS {
            assert_eq!(
                call(method, Some(format!("Bearer {CLIENT}"))),
                Err(Refusal::NotOperator { method })
            );
            assert_eq!(
                call(method, Some(format!("Bearer {OPERATOR}"))),
                Ok(Role::Operator)
            );
        }
    }

    #[test]
    fn refusals_are_statuses_that_echo_no_token() {
        let status = tonic::Status::from(Refusal::NotOperator {
            method: "RetrySaga",
        });
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "authorization: RetrySaga needs an operator token"
        );
        let unknown = tonic::Status::from(Refusal::Unknown);
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            format!("{:?}", tokens()),
            "Tokens { clients: 1, operators: 1 }"
        );
    }
}
