//! OpenTelemetry traces: the `tracing:` section ([`TRACING_KEYS`], with the standard
//! `OTEL_*` variables it reads), the exporter (OTLP over HTTP/protobuf, built with the `otel`
//! cargo feature), and the few calls the pipeline makes to join, link and read trace context.
//!
//! Off unless asked for: without `tracing.otlp_endpoint` or an `OTEL_EXPORTER_OTLP_*ENDPOINT`
//! variable no exporter exists, no span is created for it, and every call here is a no-op. A
//! build without the feature refuses a config that asks for traces. The exporter never holds
//! up the work: spans queue in the SDK's batch processor (bounded; beyond it they are dropped
//! and the SDK logs it), are sent from its own thread, and a batch the collector does not take
//! is counted in `orchestrator_trace_spans_dropped_total` and logged when delivery starts and
//! stops failing. This module decides nothing about the queue and touches no store; spans are
//! made where the work is (`tick`, `rules`, `decide`, `executor`) with [`TARGET`].

use crate::model::TraceParent;
use crate::settings::ConfigError;
use crate::settings::key::KeyDefault::{Unset, Value};
use crate::settings::key::{Found, Key, key};

/// The target of every span made for traces. `run` and `worker` log at their own level; when
/// traces are on, spans of this target are enabled at `info` whatever that level is.
pub const TARGET: &str = "orchestrator::otel";

/// Where spans go when traces are on: `<endpoint>` is the full URL spans are posted to.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    /// `http(s)://host:port/v1/traces` (or the path `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` gave).
    pub endpoint: String,
    /// What turned traces on (`tracing.otlp_endpoint`, or the variable's name), for the log.
    pub from: String,
}

/// The `tracing:` section, resolved against the `OTEL_*` variables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracingConfig {
    pub service_name: String,
    /// The share of new traces recorded (a trace joined from a `traceparent` follows its
    /// sampled flag).
    pub sample_ratio: f64,
    /// `None`: traces are off.
    pub export: Option<Export>,
}

/// The standard variables for things this build does not do: set, they are refused rather
/// than silently ignored.
const NOT_HONOURED: &[(&str, &str)] = &[
    ("OTEL_TRACES_SAMPLER", "set tracing.sample_ratio instead (a parent-based ratio sampler)"),
    ("OTEL_TRACES_SAMPLER_ARG", "set tracing.sample_ratio instead (a parent-based ratio sampler)"),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "custom CA certificates are not supported; the system's roots are used"),
    ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "custom CA certificates are not supported; the system's roots are used"),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "client certificates are not supported"),
    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "client certificates are not supported"),
    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "client certificates are not supported"),
    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "client certificates are not supported"),
];

/// The `tracing.*` keys. The endpoint comes last: it checks the whole section against the
/// `OTEL_*` variables and against this build's features.
pub const TRACING_KEYS: &[Key<TracingConfig>] = &[
    key!(text "tracing.service_name": String = Value("orchestrator"),
    "`service.name` of the spans (else `OTEL_SERVICE_NAME`, else `orchestrator`)",
    |t, v, at| {
        at.check(!v.trim().is_empty(), || "tracing.service_name must not be empty".into())?;
        t.service_name = match (&at.source, at.env("OTEL_SERVICE_NAME")) {
            (crate::settings::Source::Default, Some(name)) if !name.trim().is_empty() => name,
            _ => v,
        };
    }),
    key!("tracing.sample_ratio": f64 = Value("1"),
    "The share of new traces recorded, 0 to 1 (a joined trace follows its parent's sampled flag)",
    |t, v, at| {
        at.check(v.is_finite() && (0.0..=1.0).contains(&v), || {
            format!("tracing.sample_ratio must be between 0 and 1, got {v}")
        })?;
        t.sample_ratio = v;
    }),
    key!(text "tracing.otlp_endpoint": Option<String> = Unset,
    "Traces on: the OTLP/HTTP collector's base URL, spans posted to `<url>/v1/traces` (else `OTEL_EXPORTER_OTLP_*ENDPOINT`)",
    |t, v, at| t.export = export(v, at)?),
];

/// Where traces go, from the key (which wins) or the standard variables; `None` when nothing
/// asks for them or `OTEL_SDK_DISABLED=true` / `OTEL_TRACES_EXPORTER=none` says not to.
fn export(configured: Option<String>, at: &Found<'_>) -> Result<Option<Export>, ConfigError> {
    let env_error = |name: &str, message: String| ConfigError::Value {
        source_: crate::settings::Source::Env(name.to_string()),
        message: format!("{name}: {message}"),
    };
    for (name, why) in NOT_HONOURED {
        if at.env(name).is_some() {
            return Err(env_error(name, format!("not honoured by orchestrator: {why}; unset it")));
        }
    }
    for name in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Some(p) = at.env(name).filter(|p| p.trim() != "http/protobuf") {
            return Err(env_error(
                name,
                format!("{p:?} is not supported: traces go over OTLP/HTTP as protobuf (http/protobuf)"),
            ));
        }
    }
    for name in ["OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"] {
        if let Some(c) = at.env(name).filter(|c| c.trim() != "none") {
            return Err(env_error(name, format!("{c:?} is not supported: spans are sent uncompressed (none)")));
        }
    }
    let disabled = at.env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    match at.env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(env_error("OTEL_TRACES_EXPORTER", format!("{other:?} is not supported: only otlp (or none)")));
        }
    }
    let found = match configured {
        Some(base) => Some((traces_url(&base, true).map_err(|e| at.invalid(e))?, "tracing.otlp_endpoint".to_string())),
        None => {
            let mut found = None;
            for (name, append) in [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", false), ("OTEL_EXPORTER_OTLP_ENDPOINT", true)]
            {
                if let Some(url) = at.env(name).filter(|u| !u.trim().is_empty()) {
                    found = Some((traces_url(&url, append).map_err(|e| env_error(name, e))?, name.to_string()));
                    break;
                }
            }
            found
        }
    };
    let Some((endpoint, from)) = found else { return Ok(None) };
    if disabled {
        return Ok(None);
    }
    if !cfg!(feature = "otel") {
        let message = format!(
            "traces are asked for ({from}), but this build has no OpenTelemetry support (cargo feature `otel`): \
             install a build with it, or remove {from}"
        );
        return Err(if from.starts_with("OTEL_") { env_error(&from, message) } else { at.fail(message) });
    }
    Ok(Some(Export { endpoint, from }))
}

/// `url` checked (http or https, a host, no query), with `/v1/traces` appended to a base URL.
fn traces_url(url: &str, append: bool) -> Result<String, String> {
    let url = url.trim();
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not an http:// or https:// URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} must be an http:// or https:// URL with a host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{url:?} must not have a query or a fragment"));
    }
    Ok(if append { format!("{}/v1/traces", url.trim_end_matches('/')) } else { url.to_string() })
}

/// The log directives a process adds while traces are on: its spans enabled whatever the log
/// level, and the SDK's own messages (a full queue, a failed export) at `warn`.
pub const TRACE_DIRECTIVES: &str = "orchestrator::otel=info,opentelemetry_sdk=warn,opentelemetry=warn";

#[cfg(feature = "otel")]
pub use exporting::{TraceLayer, Traces, join, link, traceparent_of};
#[cfg(not(feature = "otel"))]
pub use off::{TraceLayer, Traces, join, link, traceparent_of};

/// The `traceparent` of the span the caller runs in (a rule's `enqueue` stores the tick's).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current()).map(|tp| tp.to_string())
}

/// The builds with OpenTelemetry: the exporter and the span context calls.
#[cfg(feature = "otel")]
mod exporting {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Registry;

    use super::{TraceParent, TracingConfig};

    /// How long the spans still queued at exit may take to leave.
    const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

    /// The layer that turns spans into OpenTelemetry spans, for `main` to put under the log
    /// writer.
    pub type TraceLayer = Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>;

    /// The exporter of this process, while traces are on.
    pub struct Traces {
        provider: Option<SdkTracerProvider>,
    }

    impl Traces {
        /// Starts the exporter `config` asks for (none when traces are off). Call it outside
        /// the async runtime: the HTTP client it builds is a blocking one, driven from the
        /// SDK's own thread.
        pub fn start(config: &TracingConfig) -> Result<Traces, String> {
            let Some(export) = &config.export else { return Ok(Traces { provider: None }) };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(export.endpoint.clone())
                .build()
                .map_err(|e| format!("tracing: cannot set up the OTLP exporter for {}: {e}", export.endpoint))?;
            let processor = BatchSpanProcessor::builder(Counted { inner: exporter, failing: Arc::default() }).build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
                .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
                .build();
            Ok(Traces { provider: Some(provider) })
        }

        /// Whether spans are exported.
        pub fn on(&self) -> bool {
            self.provider.is_some()
        }

        /// The subscriber layer that feeds the exporter (`None` when off).
        pub fn layer(&self) -> Option<TraceLayer> {
            let tracer = self.provider.as_ref()?.tracer("orchestrator");
            Some(Box::new(tracing_opentelemetry::layer().with_tracer(tracer)))
        }

        /// Sends what is queued, waiting at most [`SHUTDOWN_WAIT`]; a collector that does not
        /// answer costs that wait, never more.
        pub fn shutdown(self) {
            if let Some(provider) = self.provider
                && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_WAIT)
            {
                tracing::warn!(error = %e, "tracing: the spans still queued at exit were not all sent");
            }
        }
    }

    /// The OTLP exporter, counting the spans of every batch it could not deliver.
    #[derive(Debug)]
    struct Counted {
        inner: opentelemetry_otlp::SpanExporter,
        /// Whether the last batch failed: a warning when delivery starts failing, a line when it
        /// works again, not one per batch.
        failing: Arc<AtomicBool>,
    }

    impl SpanExporter for Counted {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let spans = batch.len() as u64;
            let result = self.inner.export(batch).await;
            match &result {
                Err(e) => {
                    crate::metrics::trace_spans_dropped().inc_by(spans);
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, spans, "tracing: the collector did not take a batch of spans; dropped and counted in orchestrator_trace_spans_dropped_total until it does");
                    }
                }
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("tracing: the collector takes spans again");
                    }
                }
            }
            result
        }

        fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
            self.inner.shutdown_with_timeout(timeout)
        }

        fn force_flush(&mut self) -> OTelSdkResult {
            self.inner.force_flush()
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.inner.set_resource(resource);
        }
    }

    fn remote(tp: &TraceParent) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(tp.trace_id()),
            SpanId::from_bytes(tp.span_id()),
            TraceFlags::new(tp.flags()),
            true,
            TraceState::default(),
        )
    }

    /// Makes `span` (not yet entered, with no child yet) a child of the remote `tp`.
    pub fn join(span: &tracing::Span, tp: &TraceParent) {
        // Fails only for a span no layer records (traces off): then there is nothing to join.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote(tp)));
    }

    /// Links `span` to the span `tp` names (a retry's new trace to the first attempt's).
    pub fn link(span: &tracing::Span, tp: &TraceParent) {
        span.add_link(remote(tp));
    }

    /// The trace context of `span`, as a `traceparent`; `None` when traces are off.
    pub fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        TraceParent::new(sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.trace_flags().to_u8())
    }
}

/// The builds without OpenTelemetry: the same calls, doing nothing (a config asking for
/// traces was refused when it was read).
#[cfg(not(feature = "otel"))]
mod off {
    use super::{TraceParent, TracingConfig};

    pub type TraceLayer = tracing_subscriber::layer::Identity;

    pub struct Traces;

    impl Traces {
        pub fn start(_config: &TracingConfig) -> Result<Traces, String> {
            Ok(Traces)
        }

        pub fn on(&self) -> bool {
            false
        }

        pub fn layer(&self) -> Option<TraceLayer> {
            None
        }

        pub fn shutdown(self) {}
    }

    pub fn join(_span: &tracing::Span, _tp: &TraceParent) {}

    pub fn link(_span: &tracing::Span, _tp: &TraceParent) {}

    pub fn traceparent_of(_span: &tracing::Span) -> Option<TraceParent> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_bad_one_is_refused() {
        assert_eq!(traces_url("http://h:4318", true).unwrap(), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/", true).unwrap(), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/x/traces", false).unwrap(), "http://h:4318/x/traces");
        for bad in ["h:4318", "ftp://h/", "http://h/?a=1", "not a url"] {
            assert!(traces_url(bad, true).is_err(), "{bad}");
        }
    }
}
