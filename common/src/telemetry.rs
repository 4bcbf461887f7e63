//! One `init` for every binary and the tests: structured logs, and traces
//! through `tracing-opentelemetry`.
//!
//! Spans always get real OpenTelemetry ids (so `traceparent` can travel
//! through gRPC, the outbox and Pub/Sub even when nothing is exported). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP/gRPC in
//! batches; otherwise nothing is exported.
//!
//! `SAGAFLOW_LOG_FORMAT=json` switches logs to JSON lines; `RUST_LOG` filters
//! (default `info`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config;

/// Keeps the tracer provider alive; dropping it flushes pending spans.
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Install the global subscriber, tracer provider and W3C propagator.
pub fn init(service: &str) -> anyhow::Result<Guard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = config::var_opt("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service.to_owned());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,h2=warn,hyper=warn,tonic=warn,tower=warn,google_cloud=warn")
    });
    let fmt = match config::var_or("SAGAFLOW_LOG_FORMAT", "text").as_str() {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Spans are exported whatever `RUST_LOG` says: it filters the log only.
    // Libraries' own spans stay out (they would be traces of their own).
    let spans = EnvFilter::new(
        "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,google_cloud=off,\
         google_cloud_pubsub=off,google_cloud_gax=off,tokio_postgres=off,deadpool=off",
    );
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans),
        )
        .try_init()?;
    Ok(Guard { provider })
}
