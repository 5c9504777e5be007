//! The process's log: the `tracing` subscriber (`RUST_LOG`, `LOG_FORMAT`,
//! `LOG_BUFFER_LINES`) and the writer behind it.
//!
//! No thread that serves requests writes to stderr. It formats its line
//! and hands it to a thread of its own (tracing-appender's non-blocking
//! writer), which writes the lines waiting in one buffer per wake-up. A log
//! reader that stops (a pipe nobody empties: a blocked Docker log driver, a
//! stuck collector) would otherwise stop every request of every tenant at
//! its access line once the pipe's 64 KiB are full. Past
//! `LOG_BUFFER_LINES` lines waiting, a new line is dropped and counted
//! (`tenant_gateway_log_lines_dropped_total`), and once lines flow again
//! the log says how many went missing ([`report_dropped`]).
//!
//! The lines are the default formats' bytes, written at half (text,
//! `line.rs`) and a third (`LOG_FORMAT=json`, `json.rs`) of their cost.
//!
//! A panic is a line of the log too (`panic.rs`): the default hook would
//! write it from the panicking thread, blocking on the same stderr, and
//! not as JSON.
//!
//! The writer's thread writes what is waiting when the process ends, for
//! at most about a second, as the [`Log`] that [`init`] returns is dropped:
//! `main` holds it until the command is done.

use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Writes the time as both default formats write it (RFC 3339 in
/// microseconds), by humantime (its digits into one buffer, not a
/// `write!` per part). `false`: nothing written, the time being before
/// 1970 or after 9999, which humantime does not take; the caller writes
/// the default's own.
fn time(w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> bool {
    let now = std::time::SystemTime::now();
    now >= std::time::UNIX_EPOCH && write!(w, "{}", humantime::format_rfc3339_micros(now)).is_ok()
}

/// The `Visit` methods both formats write alike: integers by itoa,
/// booleans as words, each after `self.$start(field)` (which writes what
/// comes before a value and says whether to write it).
macro_rules! plain_values {
    ($start:ident) => {
        fn record_u64(&mut self, field: &Field, value: u64) {
            if self.$start(field) {
                self.result = self.w.write_str(itoa::Buffer::new().format(value));
            }
        }

        fn record_i64(&mut self, field: &Field, value: i64) {
            if self.$start(field) {
                self.result = self.w.write_str(itoa::Buffer::new().format(value));
            }
        }

        fn record_bool(&mut self, field: &Field, value: bool) {
            if self.$start(field) {
                self.result = self.w.write_str(if value { "true" } else { "false" });
            }
        }
    };
}
use plain_values;

mod json;
mod line;
mod panic;

pub use panic::panics;

/// The filter when `RUST_LOG` is unset. rustls warns about what a peer
/// sent (an IP address as SNI, which wrk and some HTTP libraries send, is
/// one line per handshake): a client must not choose what fills the log.
/// Failed handshakes are counted (`tls_handshakes_total{result="failed"}`)
/// and logged at debug by the gateway itself.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,rustls=error";

/// Lines that may wait for the writer when `LOG_BUFFER_LINES` is unset:
/// ~5 MiB of ~300-byte access lines, a few seconds of a busy gateway.
pub const DEFAULT_BUFFER_LINES: usize = 16_384;

/// The most `LOG_BUFFER_LINES` may be.
pub const MAX_BUFFER_LINES: usize = 1 << 20;

/// The buffer between the writer's thread and stderr.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How often [`report_dropped`] looks at the count.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The lines dropped so far, once [`init`] has run.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The log's writer, running until this is dropped (which writes what is
/// still waiting).
#[must_use = "dropping it stops the log"]
pub struct Log {
    _writer: WorkerGuard,
}

/// A log setting from the environment the gateway refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("LOG_BUFFER_LINES: {value:?} is not a whole number from 1 to {MAX_BUFFER_LINES}")]
    BufferLines { value: String },
    #[error("LOG_FORMAT: {value:?} is neither \"json\" nor \"text\"")]
    Format { value: String },
    #[error("RUST_LOG: {value:?} is not a log filter: {reason}")]
    Filter { value: String, reason: String },
}

/// The log's settings, from the environment.
#[derive(Debug, PartialEq, Eq)]
pub struct Settings {
    /// `LOG_FORMAT=json`: one JSON object a line.
    pub json: bool,
    /// `LOG_BUFFER_LINES`.
    pub buffer_lines: usize,
    /// `RUST_LOG`, else [`DEFAULT_FILTER`].
    pub filter: String,
}

impl Settings {
    /// The settings the variables' values give (`None`: unset), or every
    /// one of them refused, each naming its variable.
    pub fn from_values(
        rust_log: Option<&str>,
        format: Option<&str>,
        buffer_lines: Option<&str>,
    ) -> Result<Settings, Vec<LogError>> {
        let mut errors = Vec::new();
        let filter = match rust_log.filter(|v| !v.trim().is_empty()) {
            None => DEFAULT_FILTER.to_owned(),
            Some(value) => {
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(value) {
                    errors.push(LogError::Filter {
                        value: value.to_owned(),
                        reason: e.to_string(),
                    });
                }
                value.to_owned()
            }
        };
        let json = match format.map(str::trim) {
            None | Some("" | "text") => false,
            Some("json") => true,
            Some(_) => {
                errors.push(LogError::Format {
                    value: format.unwrap_or_default().to_owned(),
                });
                false
            }
        };
        let buffer_lines = match buffer_lines.map(|v| (v, v.trim().parse::<usize>())) {
            None => DEFAULT_BUFFER_LINES,
            Some((_, Ok(n @ 1..=MAX_BUFFER_LINES))) => n,
            Some((value, _)) => {
                errors.push(LogError::BufferLines {
                    value: value.to_owned(),
                });
                DEFAULT_BUFFER_LINES
            }
        };
        match errors.is_empty() {
            true => Ok(Settings {
                json,
                buffer_lines,
                filter,
            }),
            false => Err(errors),
        }
    }

    /// [`Settings::from_values`] of the process's environment.
    pub fn from_env() -> Result<Settings, Vec<LogError>> {
        let var = |name| std::env::var(name).ok();
        Settings::from_values(
            var("RUST_LOG").as_deref(),
            var("LOG_FORMAT").as_deref(),
            var("LOG_BUFFER_LINES").as_deref(),
        )
    }
}

/// Sets up the process's log as the environment says, or says which
/// variables it refuses (nothing is logged then).
pub fn init() -> Result<Log, Vec<LogError>> {
    let settings = Settings::from_env()?;
    // The writer's thread flushes the buffer whenever no more lines are
    // waiting, so a line waits only while others are being written.
    let stderr = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(settings.buffer_lines)
        .thread_name(panic::WRITER_THREAD)
        .finish(stderr);
    let _ = DROPPED.set(writer.error_counter());
    // Checked by `from_values`.
    let filter = tracing_subscriber::EnvFilter::new(&settings.filter);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal);
    if settings.json {
        // The default's JSON at a third of its cost (`json.rs`).
        builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLine::new())
            .init();
    } else if terminal {
        builder.init();
    } else {
        // The default's line without colours, at half its cost (`line`).
        builder.fmt_fields(line::Fields).event_format(line::Line).init();
    }
    panic::install();
    Ok(Log { _writer: guard })
}

/// Lines dropped because `LOG_BUFFER_LINES` were waiting (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Logs, every [`REPORT_EVERY`], how many lines were dropped since it last
/// did. Its own line may be dropped too while the reader is stuck: that
/// raises the count again, so it says so again until a line gets through.
pub async fn report_dropped() {
    let mut said = dropped_lines();
    let mut every = tokio::time::interval(REPORT_EVERY);
    loop {
        every.tick().await;
        let now = dropped_lines();
        if now > said {
            tracing::warn!(
                dropped = now - said,
                total = now,
                "log lines dropped: the log's reader did not keep up (LOG_BUFFER_LINES lines were waiting)"
            );
            said = now;
        }
    }
}

/// What the formatters' tests share: a writer to a buffer, and events of
/// every kind the gateway and its libraries log.
#[cfg(test)]
mod testing {
    use std::fmt;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    pub(super) struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Buf {
        pub(super) fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A subscriber of every level without colours, writing to `w`: what
    /// both formats' tests build on.
    pub(super) fn builder(
        w: Buf,
    ) -> tracing_subscriber::fmt::SubscriberBuilder<
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        tracing::level_filters::LevelFilter,
        Buf,
    > {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(w)
    }

    /// What `events` logs through the subscriber `make` builds on a buffer.
    pub(super) fn logged<S>(make: impl FnOnce(Buf) -> S, events: impl FnOnce()) -> Vec<u8>
    where
        S: tracing::Subscriber + Send + Sync + 'static,
    {
        let buf = Buf::default();
        tracing::subscriber::with_default(make(buf.clone()), events);
        buf.bytes()
    }

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \x1b[31m failed")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("inner cause")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    /// Every kind of event the gateway and its libraries log.
    pub(super) fn events() {
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        tracing::info!(
            target: "access",
            tenant = %"ferrari",
            host = %"ferrari.myapp.localhost",
            method = %http::Method::GET,
            status = 200u16,
            attempts = 1usize,
            latency_ms = 0.25f64,
            small = 1e-7f64,
            negative = -3i64,
            up = true,
            backend = %ip,
            request_id = %"0f3a",
            error = %"-",
        );
        tracing::warn!(
            name = "quoted \"str\"",
            r#type = 3u8,
            "a message with {} and \x1b[2J escapes \u{9b}",
            "args"
        );
        tracing::error!(error = &Outer(Inner) as &(dyn std::error::Error + 'static), "failed");
        tracing::error!(error = &Inner as &(dyn std::error::Error + 'static));
        tracing::error!(r#err = &Outer(Inner) as &(dyn std::error::Error + 'static));
        tracing::debug!(detail = ?Some("x"), list = ?vec![1, 2]);
        from_the_log_crate();
        let span = tracing::info_span!("conn", peer = %ip, id = 7u64);
        let _in = span.enter();
        let inner = tracing::info_span!("empty");
        let _in2 = inner.enter();
        tracing::info!("inside spans");
        from_the_log_crate();
    }

    /// An event as the `log` crate's records arrive (Pingora logs through
    /// `log`): its target and place are `log.*` fields.
    fn from_the_log_crate() {
        tracing_log::format_trace(
            &log::Record::builder()
                .args(format_args!("from the log crate: {}", 42))
                .level(log::Level::Warn)
                .target("a_library::x")
                .module_path(Some("a_library::x"))
                .file(Some("x.rs"))
                .line(Some(7))
                .build(),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_parses_and_silences_peer_induced_rustls_warnings() {
        let filter = tracing_subscriber::EnvFilter::try_new(DEFAULT_FILTER).expect("a valid filter");
        let text = filter.to_string();
        assert!(text.contains("rustls=error"), "{text}");
        assert!(text.contains("sqlx=warn"), "{text}");
    }

    fn buffer_lines(value: Option<&str>) -> Result<usize, Vec<LogError>> {
        Settings::from_values(None, None, value).map(|s| s.buffer_lines)
    }

    #[test]
    fn buffer_lines_default_bounds_and_refusals_name_the_variable() {
        assert_eq!(buffer_lines(None), Ok(DEFAULT_BUFFER_LINES));
        assert_eq!(buffer_lines(Some("1")), Ok(1));
        assert_eq!(buffer_lines(Some(" 256 ")), Ok(256));
        assert_eq!(buffer_lines(Some("1048576")), Ok(MAX_BUFFER_LINES));
        for bad in ["0", "1048577", "-1", "many", "", "1e3"] {
            let e = buffer_lines(Some(bad)).unwrap_err();
            assert_eq!(e, [LogError::BufferLines { value: bad.to_owned() }]);
            assert!(e[0].to_string().starts_with("LOG_BUFFER_LINES: "), "{}", e[0]);
        }
    }

    #[test]
    fn defaults_formats_filters_and_every_refusal_at_once() {
        let s = Settings::from_values(None, None, None).unwrap();
        assert_eq!((s.json, s.filter.as_str()), (false, DEFAULT_FILTER));
        let s = Settings::from_values(Some("warn,access=info"), Some("json"), Some("64")).unwrap();
        assert_eq!(
            (s.json, s.filter.as_str(), s.buffer_lines),
            (true, "warn,access=info", 64)
        );
        for text in ["text", "", " text "] {
            assert!(!Settings::from_values(None, Some(text), None).unwrap().json, "{text:?}");
        }
        // Every variable refused is named, not only the first.
        let e = Settings::from_values(Some("info,[{"), Some("JSON"), Some("0")).unwrap_err();
        let names: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 3, "{names:?}");
        for (error, name) in names.iter().zip(["RUST_LOG: ", "LOG_FORMAT: ", "LOG_BUFFER_LINES: "]) {
            assert!(error.starts_with(name), "{error}");
        }
    }
}
