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

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

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
}
