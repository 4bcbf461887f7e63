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
