//! Where tracing goes: events to stderr (filtered by `RUST_LOG`, default `warn`), and — in a
//! binary built with the `otlp` feature, when `otlp_endpoint` is set — spans (WAL opens and
//! recoveries at info, every append at debug, from Sluice's own crates) exported over
//! OTLP/gRPC to a collector in batches. The exporter's queue is bounded: when the collector is
//! slow or away, spans are dropped, never the process's memory.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter alive; dropping it sends what is still queued (bounded by its timeout).
#[derive(Default)]
pub(crate) struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::TracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing the OTLP span exporter: {e}");
        }
    }
}

/// Installs the process's subscriber: stderr always, OTLP export to `otlp_endpoint` when given
/// (`role` names the process in the exported resource). Needs a Tokio runtime to be entered
/// when `otlp_endpoint` is given.
pub(crate) fn init(otlp_endpoint: Option<&str>, role: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(stderr);
    let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) else {
        let _ = registry.try_init();
        return Ok(Telemetry::default());
    };
    #[cfg(feature = "otlp")]
    {
        use anyhow::Context;
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::WithExportConfig;

        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .with_context(|| format!("otlp_endpoint {endpoint:?}"))?;
        let provider = opentelemetry_sdk::trace::TracerProvider::builder()
            .with_batch_exporter(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_resource(opentelemetry_sdk::Resource::new([
                opentelemetry::KeyValue::new("service.name", "sluice"),
                opentelemetry::KeyValue::new("sluice.role", role.to_owned()),
            ]))
            .build();
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("sluice"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_default(tracing::Level::WARN)
                    .with_target("sluice", tracing::Level::DEBUG),
            );
        let _ = registry.with(spans).try_init();
        Ok(Telemetry {
            provider: Some(provider),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (registry, role);
        anyhow::bail!(
            "otlp_endpoint {endpoint:?} needs a sluice binary built with the otlp feature \
             (cargo build --release -p sluice --features otlp)"
        )
    }
}
