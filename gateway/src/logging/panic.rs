//! Panics as lines of the log: the hook [`super::init`] installs.
//!
//! Rust's default hook writes a panic's message to stderr itself, from the
//! panicking thread, in its own multi-line text. Behind a log reader that
//! stopped (what `super` is about) that write blocks, and the thread with
//! it: a request's worker, with every connection it serves. And with
//! `LOG_FORMAT=json` it is the one thing on stderr that is not JSON, so a
//! collector that parses lines drops or mangles exactly the line an
//! operator needs. The hook makes a panic one `ERROR` event of the log
//! instead, handed to the log's thread like any other line:
//!
//! - `thread`: the panicking thread's name (`<unnamed>` as the default hook
//!   says it); `location`: `file:line:column`; `panic`: the payload's text
//!   as a string field, so a message with line breaks stays one line (text
//!   quotes and escapes it, JSON escapes it); `backtrace`: only when one
//!   was captured (`RUST_BACKTRACE` or `RUST_LIB_BACKTRACE`, as
//!   `std::backtrace::Backtrace::capture` reads them).
//! - The default hook still writes the panics nothing else would write:
//!   those of the log's own thread, and any the log's filter leaves out
//!   (a `RUST_LOG` that does not enable this module's errors).
//!
//! Every panic is counted ([`panics`], `tenant_gateway_panics_total`): a
//! request's panic ends only its own task, and the gateway goes on, so
//! without a count only the log would tell.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics since the hook was installed.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics of any thread so far (0 before the hook is installed).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// The name of the log's writer thread (a panic there has no log to go to).
pub(super) const WRITER_THREAD: &str = "log-writer";

/// Makes every later panic a line of the log (see the module header).
pub(super) fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let current = std::thread::current();
        let thread = current.name();
        let logged = thread != Some(WRITER_THREAD) && tracing::enabled!(tracing::Level::ERROR);
        match logged {
            true => log(info, thread.unwrap_or("<unnamed>")),
            false => default(info),
        }
    }));
}

/// The panic's event.
fn log(info: &PanicHookInfo<'_>, thread: &str) {
    let backtrace = Backtrace::capture();
    let backtrace = (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string());
    tracing::error!(
        thread,
        location = info.location().map(tracing::field::display),
        panic = payload(info),
        backtrace = backtrace.as_deref(),
        "a thread panicked"
    );
}

/// The payload's text as the default hook writes it.
fn payload<'a>(info: &'a PanicHookInfo<'_>) -> &'a str {
    info.payload_as_str().unwrap_or("Box<dyn Any>")
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    /// The child process's log format (its presence: this is the child).
    const CHILD: &str = "TENANT_GATEWAY_PANIC_CHILD";
    const MESSAGE: &str = "boom\nsecond line \"quoted\"";
    /// Generous: the child logs a few thousand lines and panics once.
    const WAIT: Duration = Duration::from_secs(60);

    /// What the child logged once it was allowed to finish, after it said
    /// its panicking thread had ended (which it must while nothing reads its
    /// stderr).
    fn child_log(format: &str, backtrace: bool) -> String {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe);
        child
            .args([
                "--exact",
                "logging::panic::tests::panicking_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD, format)
            .env("LOG_FORMAT", format)
            .env("LOG_BUFFER_LINES", "100000")
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        if backtrace {
            child.env("RUST_BACKTRACE", "1");
        }
        let mut child = child
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child");
        let (said, heard) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = said.send(line);
            }
        });
        let joined = loop {
            match heard.recv_timeout(WAIT) {
                Ok(line) if line == "joined" => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if !joined {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the panicking thread did not end within {WAIT:?} while stderr was full");
        }
        // Now read its stderr, and let it end (its log writes what waits).
        let mut stderr = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            stderr.read_to_string(&mut all).map(|_| all)
        });
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(b"go\n").expect("tell the child to end");
        drop(stdin);
        let status = child.wait().expect("the child ends");
        let log = reader.join().expect("reader").expect("the child's stderr");
        assert!(status.success(), "child: {status}\n{log}");
        log
    }

    #[test]
    fn a_panic_is_one_json_line_and_never_waits_for_a_full_stderr() {
        let log = child_log("json", false);
        let mut panics = Vec::new();
        for line in log.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            if v["fields"]["panic"].is_string() {
                panics.push(v);
            }
        }
        assert_eq!(panics.len(), 1, "{log}");
        let p = &panics[0];
        assert_eq!(p["level"], "ERROR");
        assert_eq!(p["fields"]["message"], "a thread panicked");
        assert_eq!(p["fields"]["panic"], MESSAGE);
        assert_eq!(p["fields"]["thread"], "doomed");
        let at = p["fields"]["location"].as_str().expect("a location");
        assert!(at.contains("logging/panic.rs:"), "{at}");
        assert!(p["fields"].get("backtrace").is_none(), "{p}");
        // The lines logged before the panic are all there (none dropped).
        assert_eq!(log.lines().filter(|l| l.contains("filling the pipe")).count(), FILLER);
    }

    #[test]
    fn a_panic_is_one_text_line_with_its_backtrace_when_asked() {
        let log = child_log("text", true);
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("a thread panicked")).collect();
        assert_eq!(panics.len(), 1, "{log}");
        let line = panics[0];
        assert!(line.contains(" ERROR "), "{line}");
        assert!(line.contains(r#"panic="boom\nsecond line \"quoted\"""#), "{line}");
        assert!(line.contains("thread=\"doomed\""), "{line}");
        let backtrace = line.split_once(" backtrace=\"").expect("a backtrace").1;
        assert!(backtrace.contains("\\n"), "{backtrace}");
        assert!(!log.contains("panicked at"), "the default hook wrote: {log}");
    }

    const FILLER: usize = 3000;

    /// The child of the tests above (run only by them, with [`CHILD`] set):
    /// fills its stderr pipe through the log, panics on a thread, says
    /// `joined` on stdout once that thread has ended, and ends when told.
    #[test]
    #[ignore = "the child process of the panic tests"]
    fn panicking_child() {
        assert!(std::env::var(CHILD).is_ok(), "run by the panic tests only");
        let log = crate::logging::init().expect("the log's settings");
        for i in 0..FILLER {
            tracing::info!(i, "filling the pipe nobody reads yet with a line of some length");
        }
        let doomed = std::thread::Builder::new()
            .name("doomed".into())
            .spawn(|| std::panic::panic_any(MESSAGE.to_owned()))
            .expect("spawn");
        assert!(doomed.join().is_err());
        assert_eq!(super::panics(), 1);
        println!("joined");
        std::io::stdout().flush().expect("stdout");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("stdin");
        drop(log);
    }
}
