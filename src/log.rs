//! The service's log writer: every line (one per request, and the rest) is appended to a memory
//! buffer under a short lock, and a flusher thread writes the buffer to stderr every
//! [`FLUSH_EVERY`], or sooner once it holds [`FLUSH_AT`] bytes. Under load one `write` carries
//! hundreds of lines instead of a syscall per request; at rest a line reaches stderr within
//! [`FLUSH_EVERY`]. Nothing is dropped: past [`MAX_BUFFER`] (stderr blocked or too slow), the
//! logging request writes the buffer out itself, which slows it down instead of losing lines.
//! Order is kept: chunks are written in the order they were taken from the buffer.
//!
//! (`tracing-appender`'s non-blocking writer flushes after every drained burst, which at this
//! service's rates was still a write per one or two requests, plus a channel wake-up each.)
//!
//! JSON lines are formatted by [`JsonLines`], which writes each field straight into the line.
//! tracing-subscriber's JSON formatter formats a timestamp string, allocates a `String` per `Debug`
//! field and goes through serde per field; on a cache hit the request line cost 2-3 µs of the
//! service's ~18.8 µs of CPU with it, about 1.5 µs less with this (BENCHMARKS.md).

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{Datelike, Timelike};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// How long a line may wait in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is flushed at once.
pub const FLUSH_AT: usize = 256 * 1024;
/// Past this, a logging thread writes the buffer out itself.
pub const MAX_BUFFER: usize = 8 * 1024 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    /// Wakes the flusher early (a full buffer, or the end).
    wake: Condvar,
    /// Where lines go (stderr). Held while a chunk is taken from the buffer and written, so
    /// chunks go out in order.
    out: Mutex<Box<dyn Write + Send>>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what is buffered and writes it out, in order with every other chunk.
    fn write_out(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = std::mem::take(&mut *self.lock());
        if !chunk.is_empty() {
            // Nowhere to report a failing stderr; the lines are gone either way.
            let _ = out.write_all(&chunk);
            let _ = out.flush();
        }
    }
}

/// The writer `tracing_subscriber::fmt` is given (see [`BatchLog::new`]).
#[derive(Clone)]
pub struct BatchLog {
    shared: Arc<Shared>,
}

/// Writes out what is left and stops the flusher when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl BatchLog {
    /// The writer (to stderr) and the guard that must live as long as logging does.
    pub fn new() -> (BatchLog, FlushGuard) {
        BatchLog::with_sink(Box::new(std::io::stderr()))
    }

    /// [`BatchLog::new`] writing to `sink`.
    pub fn with_sink(sink: Box<dyn Write + Send>) -> (BatchLog, FlushGuard) {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            wake: Condvar::new(),
            out: Mutex::new(sink),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("imgmirror-log".into())
            .spawn(move || loop {
                {
                    let buf = s.lock();
                    if buf.len() < FLUSH_AT && !s.stop.load(Ordering::Acquire) {
                        let _ = s.wake.wait_timeout(buf, FLUSH_EVERY);
                    }
                }
                s.write_out();
                if s.stop.load(Ordering::Acquire) {
                    s.write_out();
                    return;
                }
            })
            .ok();
        (
            BatchLog {
                shared: shared.clone(),
            },
            FlushGuard { shared, flusher },
        )
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        match self.flusher.take() {
            Some(t) => {
                let _ = t.join();
            }
            // No flusher thread could be started: what is buffered goes out now.
            None => self.shared.write_out(),
        }
    }
}

/// One event's writer (the fmt layer writes a whole line at once).
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let len = {
            let mut buf = self.0.lock();
            buf.extend_from_slice(bytes);
            buf.len()
        };
        if len >= MAX_BUFFER {
            self.0.write_out();
        } else if len >= FLUSH_AT {
            self.0.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchLog {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.shared)
    }
}

/// The JSON line format: one object per event, flat, in the shape of tracing-subscriber's
/// `json().flatten_event(true)`: `timestamp` (RFC 3339 UTC, microseconds), `level`, the event's
/// fields in order (`message` among them; numbers and booleans as JSON values, everything else as
/// strings), `target`. Events from the `log` crate get their own target and no `log.*` fields.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // The fields one by one: chrono's `format` parses its pattern again on every call.
        let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
        write!(
            writer,
            "{{\"timestamp\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\",\"level\":\"{}\"",
            now.year(),
            now.month(),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            // A leap second shows as 59.999999, not as a 7-digit fraction.
            (now.nanosecond() / 1000).min(999_999),
            meta.level()
        )?;
        let mut fields = JsonFields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_str(&mut writer, format_args!("{}", meta.target()))?;
        writer.write_str("}\n")
    }
}

/// Writes an event's fields as `,"name":value` pairs.
struct JsonFields<'a, W: fmt::Write> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonFields<'_, W> {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>, quoted: bool) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            self.out.write_char(',')?;
            json_str(self.out, format_args!("{name}"))?;
            self.out.write_char(':')?;
            if quoted {
                json_str(self.out, value)
            } else {
                self.out.write_fmt(value)
            }
        })();
    }
}

impl<W: fmt::Write> Visit for JsonFields<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, format_args!("{value}"), false);
        } else {
            // JSON has no NaN or infinity (serde_json writes null too).
            self.field(field, format_args!("null"), false);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, format_args!("{value}"), false);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, format_args!("{value}"), false);
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.field(field, format_args!("{value}"), false);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.field(field, format_args!("{value}"), false);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, format_args!("{value}"), false);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, format_args!("{value}"), true);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, format_args!("{value}"), true);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"), true);
    }
}

/// Writes `value` as a JSON string: quoted, with `"`, `\` and control characters escaped, as it
/// is formatted (no intermediate `String`).
fn json_str(out: &mut impl fmt::Write, value: fmt::Arguments<'_>) -> fmt::Result {
    struct Escaped<'a, W: fmt::Write>(&'a mut W);
    impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let mut plain = 0;
            for (i, b) in s.bytes().enumerate() {
                let escape = match b {
                    b'"' => "\\\"",
                    b'\\' => "\\\\",
                    b'\n' => "\\n",
                    b'\r' => "\\r",
                    b'\t' => "\\t",
                    0..=0x1f => "",
                    _ => continue,
                };
                self.0.write_str(&s[plain..i])?;
                if escape.is_empty() {
                    write!(self.0, "\\u{b:04x}")?;
                } else {
                    self.0.write_str(escape)?;
                }
                plain = i + 1;
            }
            self.0.write_str(&s[plain..])
        }
    }
    out.write_char('"')?;
    Escaped(out).write_fmt(value)?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// A sink the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, Arc<std::sync::atomic::AtomicUsize>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_in_few_writes() {
        let sink = Sink::default();
        let (log, guard) = BatchLog::with_sink(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        log.make_writer()
                            .write_all(format!("t{t} line {i:05}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 80_000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            assert_eq!(mine.len(), 20_000);
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "thread {t} out of order"
            );
        }
        let writes = sink.1.load(Ordering::Relaxed);
        assert!(writes < 1_000, "{writes} writes for 80,000 lines");
    }

    #[test]
    fn a_line_reaches_the_sink_without_more_traffic() {
        let sink = Sink::default();
        let (log, _guard) = BatchLog::with_sink(Box::new(sink.clone()));
        log.make_writer().write_all(b"alone\n").unwrap();
        for _ in 0..100 {
            if !sink.0.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(FLUSH_EVERY);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"alone\n");
    }

    /// Every kind of field comes out as valid JSON with its type, strings escaped, in the shape
    /// of tracing-subscriber's flattened JSON.
    #[test]
    fn json_lines_are_json_with_typed_fields() {
        let sink = Sink::default();
        let (log, guard) = BatchLog::with_sink(Box::new(sink.clone()));
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(log)
            .finish();
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} \u{e9}\u{1F600}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                id = nasty,
                status = 200u16,
                delta = -3i64,
                ms = 1.25f64,
                nan = f64::NAN,
                hit = true,
                shown = %"display",
                debugged = ?Some(1),
                "request {}", "line"
            );
            tracing::warn!(r#type = "raw", "second");
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "request line");
        assert_eq!(first["id"], nasty);
        assert_eq!(first["status"], 200);
        assert_eq!(first["delta"], -3);
        assert_eq!(first["ms"], 1.25);
        assert!(first["nan"].is_null());
        assert_eq!(first["hit"], true);
        assert_eq!(first["shown"], "display");
        assert_eq!(first["debugged"], "Some(1)");
        assert_eq!(first["target"], module_path!());
        let ts = first["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.len() == 27 && ts.ends_with('Z'),
            "{ts}"
        );
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["type"], "raw");
    }
}
