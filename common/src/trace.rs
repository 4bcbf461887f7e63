//! W3C trace context in and out of the places it travels: gRPC metadata,
//! outbox rows and Pub/Sub attributes (all as a `traceparent` string).

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header / attribute name.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of an OpenTelemetry context, if it holds a valid span.
pub fn traceparent_of(cx: &opentelemetry::Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current tracing span.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current().context())
}

/// A context whose remote parent is `traceparent` (empty if it is malformed).
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    TraceContextPropagator::new().extract(&carrier)
}

/// Make `span` a child of the remote `traceparent`, when there is one.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let cx = context_from_traceparent(tp);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// Link `span` to the remote `traceparent` (nothing when it is malformed).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    let cx = context_from_traceparent(traceparent);
    span.add_link(cx.span().span_context().clone());
}

/// The OpenTelemetry span kinds the spans use (`otel.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Client,
    Server,
    Producer,
    Consumer,
}

impl SpanKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            SpanKind::Client => "client",
            SpanKind::Server => "server",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// A gRPC span per the OpenTelemetry RPC conventions: named
/// `package.Service/Method` after the method path (`/package.Service/Method`),
/// with `rpc.system=grpc`, `rpc.service` and `rpc.method`. Record the end
/// with [`rpc_status`].
pub fn rpc_span(path: &str, kind: SpanKind) -> tracing::Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::info_span!(
        "rpc",
        otel.name = name,
        otel.kind = kind.as_str(),
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    )
}

/// Record how an RPC ended: `rpc.grpc.status_code`, and the span's status
/// ERROR for codes that are errors on that side (every non-OK code for a
/// client; for a server the codes that mean it failed, not the caller).
pub fn rpc_status(span: &tracing::Span, kind: SpanKind, code: tonic::Code, message: &str) {
    use tonic::Code::*;
    span.set_attribute("rpc.grpc.status_code", code as i64);
    let error = match kind {
        SpanKind::Server => matches!(
            code,
            Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
        ),
        _ => code != Ok,
    };
    if error {
        fail(span, &format!("{code:?}"), message);
    }
}

/// Mark `span` failed: status ERROR with `description`, and `error.type`.
pub fn fail(span: &tracing::Span, error_type: &str, description: &str) {
    span.set_status(opentelemetry::trace::Status::error(description.to_owned()));
    span.set_attribute("error.type", error_type.to_owned());
}

struct MetadataCarrier<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The remote context carried by incoming gRPC metadata.
pub fn context_from_metadata(md: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataCarrier(md))
}

/// Put the current span's context into outgoing gRPC metadata.
pub fn inject_current(md: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(md));
}

/// Put `traceparent` into outgoing gRPC metadata.
pub fn inject_traceparent(md: &mut tonic::metadata::MetadataMap, traceparent: &str) {
    if let Ok(v) = traceparent.parse() {
        md.insert(TRACEPARENT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_a_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_from_traceparent(tp);
        assert_eq!(traceparent_of(&cx).as_deref(), Some(tp));
    }

    #[test]
    fn malformed_traceparent_gives_no_parent() {
        let cx = context_from_traceparent("not-a-traceparent");
        assert_eq!(traceparent_of(&cx), None);
    }

    #[test]
    fn metadata_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut md = tonic::metadata::MetadataMap::new();
        inject_traceparent(&mut md, tp);
        assert_eq!(
            traceparent_of(&context_from_metadata(&md)).as_deref(),
            Some(tp)
        );
    }
}
