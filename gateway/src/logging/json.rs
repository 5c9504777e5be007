//! The JSON line of a log event (`LOG_FORMAT=json`): what
//! tracing-subscriber's JSON format writes, byte for byte, at about a
//! third of its cost per access line (bench/RESULTS.md, "The access log").
//!
//! Why not the default: it serializes through serde_json into an
//! `io::Write` adaptor over the line's `fmt::Write`, which checks every
//! piece it is handed for UTF-8 again; the access line's fourteen fields
//! cost ~30,000 instructions that way. Here the line is written as text:
//! `{"timestamp":…,"level":…,"fields":{…},"target":…}`, strings escaped as
//! serde_json escapes them, integers by itoa, floats by zmij (serde_json's
//! own; `null` when not finite), every other value as its `Debug` text in a
//! string, `log.*` fields of events from the `log` crate kept (as the
//! default keeps them). An event inside a span goes to the default format,
//! which adds the span and the list of spans.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event's JSON line; events inside spans are the default's.
pub(super) struct JsonLine {
    in_spans: Format<Json, SystemTime>,
}

impl JsonLine {
    pub(super) fn new() -> JsonLine {
        JsonLine {
            in_spans: tracing_subscriber::fmt::format().json(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some()
        {
            return self.in_spans.format_event(ctx, w, event);
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("{\"timestamp\":\"")?;
        if !super::time(&mut w) {
            let mut time = String::new();
            SystemTime.format_time(&mut Writer::new(&mut time))?;
            escaped(&mut w, &time)?;
        }
        w.write_str(match *meta.level() {
            Level::TRACE => "\",\"level\":\"TRACE\",\"fields\":{",
            Level::DEBUG => "\",\"level\":\"DEBUG\",\"fields\":{",
            Level::INFO => "\",\"level\":\"INFO\",\"fields\":{",
            Level::WARN => "\",\"level\":\"WARN\",\"fields\":{",
            Level::ERROR => "\",\"level\":\"ERROR\",\"fields\":{",
        })?;
        let mut visitor = Visitor {
            w: w.by_ref(),
            first: true,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        w.write_str("},\"target\":\"")?;
        escaped(&mut w, meta.target())?;
        w.write_str("\"}\n")
    }
}

struct Visitor<'w> {
    w: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes `"name":` (after a comma unless first); `false` if an earlier
    /// write failed.
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let comma = if std::mem::replace(&mut self.first, false) {
            "\""
        } else {
            ",\""
        };
        self.result = self
            .w
            .write_str(comma)
            .and_then(|()| escaped(&mut self.w, field.name()))
            .and_then(|()| self.w.write_str("\":"));
        self.result.is_ok()
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = string(&mut self.w, value);
        }
    }

    super::plain_values!(key);

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            self.result = match value.is_finite() {
                true => self.w.write_str(zmij::Buffer::new().format_finite(value)),
                false => self.w.write_str("null"),
            };
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = self
                .w
                .write_str("\"")
                .and_then(|()| write!(Escaping(&mut self.w), "{value:?}"))
                .and_then(|()| self.w.write_str("\""));
        }
    }
}

/// `value` as a JSON string.
fn string(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    w.write_str("\"")?;
    escaped(w, value)?;
    w.write_str("\"")
}

/// `value` escaped as serde_json escapes a string's contents: `"`, `\`
/// and the control characters below 0x20; nothing else.
fn escaped(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    let mut run = 0;
    for (i, b) in value.bytes().enumerate() {
        // One load per byte: most bytes of a line need nothing.
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        w.write_str(&value[run..i])?;
        match escape {
            "" => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                w.write_str("\\u00")?;
                w.write_char(char::from(HEX[usize::from(b >> 4)]))?;
                w.write_char(char::from(HEX[usize::from(b & 0xf)]))?;
            }
            escape => w.write_str(escape)?,
        }
        run = i + 1;
    }
    w.write_str(&value[run..])
}

/// The bytes [`escaped`] escapes.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Writes what it is given escaped ([`escaped`]).
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escaped(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::testing::{builder, events, logged};
    use tracing_subscriber::fmt::format::JsonFields;

    /// The lines with the timestamp's value cut out.
    fn without_time(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| match l.strip_prefix("{\"timestamp\":\"") {
                Some(rest) => rest.split_once('"').map(|(_, r)| r.to_owned()).unwrap_or_default(),
                None => l.to_owned(),
            })
            .collect()
    }

    #[test]
    fn lines_are_the_default_json_formats() {
        let all = || {
            events();
            json_events();
        };
        let ours = logged(
            |w| {
                builder(w)
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLine::new())
                    .finish()
            },
            all,
        );
        let default = logged(|w| builder(w).json().finish(), all);
        let (a, b) = (without_time(&ours), without_time(&default));
        assert_eq!(a.len(), 10, "{a:#?}");
        assert_eq!(a, b);
        for line in String::from_utf8_lossy(&ours).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let t = humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
            assert!(
                t.elapsed().unwrap_or_default() < std::time::Duration::from_secs(60),
                "{line}"
            );
        }
    }

    /// What JSON needs escaped, and numbers as JSON writes them.
    fn json_events() {
        tracing::info!(
            text = "quote \" backslash \\ newline \n tab \t cr \r bs \x08 ff \x0c nul \0 us \x1f del \x7f é ☃",
            quarter = 0.25f64,
            tiny = 1e-7f64,
            huge = 1e16f64,
            whole = 1.0f64,
            negative_zero = -0.0f64,
            nan = f64::NAN,
            infinite = f64::INFINITY,
            wide = 170141183460469231731687303715884105727i128,
            shown = ?"debug \"quoted\"\n",
            "message with \"quotes\" and \u{1}"
        );
    }
}
