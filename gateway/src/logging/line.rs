//! The text line of a log event: what tracing-subscriber's default format
//! (`Full`, colours off) writes, byte for byte, at about half its cost per
//! access line (bench/RESULTS.md, "The access log's line").
//!
//! Why not the default: with colours off it still paints every field name
//! and its `=` through nu_ansi_term's styles, and writes each field with a
//! three-argument `write!`; a request's access line has fourteen fields.
//! Here names and separators are written as they are, integers and
//! booleans without the formatting machinery. What a value's own
//! `Display`/`Debug` writes is unchanged. A terminal still gets the
//! default, coloured; `LOG_FORMAT=json` the default JSON.
//!
//! The rules kept: `timestamp LEVEL span{fields}:…: target: fields`, the
//! level padded to five, `message` first without its name and with
//! terminal escapes shown escaped (ESC, BEL, BS, FF, DEL and C1 controls),
//! other strings quoted (`Debug`), a raw identifier's `r#` dropped, the
//! `log.*` fields of events from the `log` crate (Pingora's) left out, an
//! error's sources after it as `name.sources=[…]`. The tests compare with
//! the default formatter.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event's line: time, level, spans, target, then its fields.
pub(super) struct Line;

/// The fields: `name=value`, separated by one space.
pub(super) struct Fields;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if !super::time(&mut w) && SystemTime.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        w.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                w.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                    write!(w, "{{{fields}}}")?;
                }
                w.write_char(':')?;
            }
            if seen {
                w.write_char(' ')?;
            }
        }
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        ctx.format_fields(w.by_ref(), event)?;
        w.write_char('\n')
    }
}

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, w: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            sanitize: w.sanitizes_ansi_escapes(),
            w,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    w: Writer<'w>,
    /// Whether terminal escapes in messages and errors are shown escaped.
    sanitize: bool,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes what comes before the field's value (a space after another
    /// field, `name=` unless it is the message). `false`: the field is not
    /// written (a `log.*` field, or an earlier write failed).
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        let mut out = Ok(());
        if !std::mem::replace(&mut self.first, false) {
            out = self.w.write_str(" ");
        }
        if name != "message" {
            out = out
                .and_then(|()| self.w.write_str(name.strip_prefix("r#").unwrap_or(name)))
                .and_then(|()| self.w.write_str("="));
        }
        self.result = out;
        out.is_ok()
    }

    /// Writes `value` escaped if sanitising.
    fn escaped(&mut self, value: fmt::Arguments<'_>) -> fmt::Result {
        if self.sanitize {
            Escaping(&mut self.w).write_fmt(value)
        } else {
            self.w.write_fmt(value)
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            if self.sanitize {
                Escaping(&mut self.w).write_str(value)
            } else {
                self.w.write_str(value)
            }
        } else {
            write!(self.w, "{value:?}")
        };
    }

    super::plain_values!(start);

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        let mut out = self.escaped(format_args!("{value}"));
        if let Some(mut source) = value.source() {
            // The name as it is, `r#` included, as the default writes it here.
            out = out.and_then(|()| write!(self.w, " {}.sources=[", field.name()));
            let mut first = true;
            loop {
                if !std::mem::replace(&mut first, false) {
                    out = out.and_then(|()| self.w.write_str(", "));
                }
                out = out.and_then(|()| self.escaped(format_args!("{source}")));
                match source.source() {
                    Some(next) => source = next,
                    None => break,
                }
            }
            out = out.and_then(|()| self.w.write_char(']'));
        }
        self.result = out;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            self.escaped(format_args!("{value:?}"))
        } else {
            write!(self.w, "{value:?}")
        };
    }
}

/// Writes terminal escapes shown escaped, as the default formatter does.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most text has none: one scan, one write.
        if !s.chars().any(needs_escape) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c if needs_escape(c) => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::testing::{builder, events, logged};

    /// The lines with their timestamps cut off (each line's first field).
    fn without_time(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| l.split_once(' ').map(|(_, rest)| rest.to_owned()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn lines_are_the_default_formats_without_colours() {
        let ours = logged(|w| builder(w).fmt_fields(Fields).event_format(Line).finish(), events);
        let default = logged(|w| builder(w).finish(), events);
        let (a, b) = (without_time(&ours), without_time(&default));
        assert_eq!(a.len(), 9, "{a:#?}");
        assert_eq!(a, b);
        // Time first, in the default's form (the two ran one after the other).
        let (ours, default) = (String::from_utf8_lossy(&ours), String::from_utf8_lossy(&default));
        let (t, d) = (ours.split(' ').next().unwrap(), default.split(' ').next().unwrap());
        assert_eq!((t.len(), d.len()), (27, 27), "{t} {d}");
        let (t, d) = (
            humantime::parse_rfc3339(t).unwrap(),
            humantime::parse_rfc3339(d).unwrap(),
        );
        assert!(
            d.duration_since(t).unwrap_or_default() < std::time::Duration::from_secs(5),
            "{t:?} {d:?}"
        );
        let text = ours;
        assert!(text.contains("\\x1b[2J") && !text.contains('\x1b'), "{text}");
    }
}
