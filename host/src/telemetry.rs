//! Logs of the host through `tracing`: one subscriber for `cairn serve` and
//! `cairn restore`, writing to stderr as text lines or JSON lines
//! (`--log-format text|json`), filtered as `RUST_LOG` says (an
//! `EnvFilter`: `info` by default, e.g. `RUST_LOG=warn`,
//! `RUST_LOG=info,guest=off`, `RUST_LOG=cairn::service=debug`).
//!
//! Targets: the host's events carry their module path (`cairn::server`,
//! `cairn::service::calls`, …); guest log records have target `guest`
//! (`crate::guestlog`). Spans: `instance` (field `instance`) around each
//! run of an instance's driver, `handler_call` (fields `process`, `at`, the
//! activity path, `handler`; at debug level) around each handler call,
//! `activity_call` (fields `instance`, `activity`, `operation`, `at`, the
//! idempotency key) around each activity call.
//!
//! With the cargo feature `otel`, spans are also exported over OTLP/HTTP
//! (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (`otel::layer`).

use std::fmt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines look on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIME cairn: [warning: |error: |debug: ]message field=value … (span{field=value}: …)`.
    Text,
    /// One JSON object per line: timestamp, level, target, fields (message
    /// among them), the current span and the list of spans.
    Json,
}

/// Installs the subscriber for this process. Filters come from `RUST_LOG`
/// (default `info`); a filter that does not parse is an error naming it.
/// Called once; a second call (tests in one process) does nothing.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| anyhow::anyhow!("RUST_LOG '{spec}' is not a valid filter: {e}"))?
        }
        _ => EnvFilter::new("info"),
    };
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).event_format(Text).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otel")]
    let registry = registry.with(otel::layer()?);
    let _ = registry.try_init();
    Ok(())
}

use tracing_subscriber::Layer as _;

/// The text format: `2026-11-23T07:40:00.123Z cairn: message k=v (span{k=v}: …)`, the
/// level spelled before the message unless info (`cairn: warning: …`), and
/// for guest log records `… guest: message instance=… source=… at=… fields=…`.
struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let now = humantime_now();
        let who = if meta.target() == crate::guestlog::TARGET { "guest" } else { "cairn" };
        let level = match *meta.level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "{now} {who}: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            let mut first = true;
            for span in scope.from_root() {
                write!(writer, "{}", if first { " (" } else { ": " })?;
                first = false;
                write!(writer, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
            }
            if !first {
                write!(writer, ")")?;
            }
        }
        writeln!(writer)
    }
}

/// Now in RFC 3339, UTC, milliseconds (no clock crate: civil date from days).
fn humantime_now() -> String {
    let ms = crate::now_ms();
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = crate::civil_from_days(days as i64);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(feature = "otel")]
mod otel {
    //! OpenTelemetry export of spans (feature `otel`): OTLP over HTTP with
    //! protobuf, to `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    //! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); without either, no export.
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;

    pub fn layer<S>() -> anyhow::Result<Option<Box<dyn Layer<S> + Send + Sync>>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        let wanted = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].iter().any(|v| std::env::var_os(v).is_some());
        if !wanted {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP span exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("cairn").build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("cairn");
        opentelemetry::global::set_tracer_provider(provider);
        Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer).boxed()))
    }
}
