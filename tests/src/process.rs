//! Child processes stopped by PID, readiness by polling with a bound, free
//! ports (and a backend thread on one), the project's binaries, files and
//! environment for them.

use crate::*;

/// A port nobody listens on right now, for a server a test starts.
///
/// Handed out outside the kernel's ephemeral range: a port the kernel gave
/// for `bind(0)` and that we released can become the source port of any
/// outgoing connection (to PostgreSQL, a backend) before the server binds
/// it, and the server then refuses to start ("address in use", seen in
/// CI). Outside that range only a listener can hold a port. Each port is
/// handed out once per test process (tests run in parallel threads), from
/// a start that differs per process, and is checked free by binding it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (lo, hi) = test_ports();
    let span = u32::from(hi - lo);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = lo + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {lo}..{hi}");
}

/// The ports [`free_port`] hands out: from 10,000 to the start of the
/// ephemeral range, or above it when there is little room below (and, on a
/// machine whose ephemeral range leaves no room, 10,000 to 32,000 anyway).
fn test_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().map(|b| b.parse::<u16>().ok());
    let (lo, hi) = match (bounds.next().flatten(), bounds.next().flatten()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32_768, 60_999),
    };
    if lo >= 12_000 {
        (10_000, lo)
    } else if hi < 63_000 {
        (hi.max(1_023) + 1, 65_535)
    } else {
        (10_000, 32_000)
    }
}

/// The bound on a change reaching every gateway through NOTIFY. The product
/// aims at well under a second (docs/operations.md); the tests allow five on
/// a noisy 2-core machine. With the default 60 s positive TTL that still
/// proves NOTIFY did it: without one, the cached answer would stay.
pub const PROPAGATION: Duration = Duration::from_secs(5);

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// The workspace's target directory, derived from the running test binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// Path of a workspace binary (built by `cargo build --workspace` before tests).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A child process stopped by PID when dropped (SIGTERM, then SIGKILL).
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once `ready` holds for it, waiting up to `timeout` (panics
    /// with the log then). The gateway's lines are written by a thread of
    /// their own, a moment after what they tell of: a test that looks for
    /// one waits for it.
    pub fn log_when(&self, what: &str, timeout: Duration, ready: impl Fn(&str) -> bool) -> String {
        let mut log = String::new();
        wait_until(&format!("{} to log {what}", self.name), timeout, || {
            log = self.log();
            ready(&log)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        log
    }

    /// Send a signal by PID.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM and wait (bounded) for exit; returns whether it exited in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && !self.terminate(Duration::from_secs(5)) {
            self.kill();
        }
    }
}

/// Wait until `GET http://127.0.0.1:<port><path>` answers 200, or the process dies.
pub fn wait_healthy(proc_: &mut Proc, port: u16, path: &str, timeout: Duration) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = http::client();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc_.exited() {
            bail!(
                "{} exited ({status}) before becoming healthy:\n{}",
                proc_.name,
                proc_.log()
            );
        }
        if client.get(&url).send().is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not healthy at {url} after {timeout:?}:\n{}",
                proc_.name,
                proc_.log()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Write a file into `dir` and return its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create file");
    f.write_all(contents.as_bytes()).expect("write file");
    p
}

/// Environment every binary gets: database URL and both stamp secrets.
pub fn common_env(cmd: &mut Command, db_url: &str) {
    cmd.env("DATABASE_URL", db_url)
        .env("TG_STAMP_KEY_K1", STAMP_SECRET)
        .env("TG_STAMP_KEY_K2", STAMP_SECRET2)
        .env("TG_CERT_KEY", CERT_KEY_HEX)
        .env("TG_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("UPSTREAM_APP_CONFIG");
}

/// A backend on a free port of its own: `serve` gets each connection on a
/// thread of its own, until the test ends. Its port.
pub fn serve_each(serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    let port = listener.local_addr().expect("backend address").port();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_not_ephemeral() {
        let (lo, hi) = test_ports();
        assert!(lo < hi);
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!((lo..hi).contains(&p), "{p} outside {lo}..{hi}");
            // Held by a listener: an outgoing connection's source port comes
            // from the ephemeral range, which this one is outside of.
            let _held = TcpListener::bind(("127.0.0.1", p)).expect("bindable");
        }
    }
}
