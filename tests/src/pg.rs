//! A throwaway PostgreSQL cluster per test (initdb + pg_ctl on a free port,
//! as the `postgres` user when run as root), a streaming replica of one,
//! freezing and thawing the server.

use crate::*;

fn am_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql (run scripts/test.sh, which installs them)",
    )
}

/// Run a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(tool: &str) -> Command {
    let path = pg_bindir().join(tool);
    if am_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run_ok(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A temporary directory the `postgres` user owns (when we are root).
fn postgres_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    if am_root() {
        let mut c = Command::new("chown");
        c.arg("postgres:postgres").arg(dir.path());
        run_ok(c, "chown")?;
    }
    Ok(dir)
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 and a free port.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
    frozen: bool,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let dir = postgres_dir("tg-pg-")?;
        let data = dir.path().join("data");
        let mut initdb = pg_command("initdb");
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run_ok(initdb, "initdb")?;
        let mut pg = Postgres {
            dir,
            port: 0,
            running: false,
            frozen: false,
        };
        pg.port = free_port();
        pg.start_server()?;
        Ok(pg)
    }

    /// A streaming replica of `primary` (pg_basebackup -R) on a free port,
    /// started and replaying.
    pub fn replica_of(primary: &Postgres) -> Result<Postgres> {
        let dir = postgres_dir("tg-pg-replica-")?;
        let mut base = pg_command("pg_basebackup");
        base.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-D",
        ])
        .arg(dir.path().join("data"));
        run_ok(base, "pg_basebackup")?;
        let mut replica = Postgres {
            dir,
            port: free_port(),
            running: false,
            frozen: false,
        };
        replica.start_server()?;
        wait_until("the replica replays", Duration::from_secs(30), || {
            replica.psql("SELECT pg_is_in_recovery()").is_ok_and(|r| r == "t")
        })?;
        Ok(replica)
    }

    /// Start the server on this cluster's data dir and port (again).
    pub fn start_server(&mut self) -> Result<()> {
        let mut ctl = pg_command("pg_ctl");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        run_ok(ctl, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            e.context(log)
        })?;
        self.running = true;
        Ok(())
    }

    /// Stop the server (fast shutdown: open sessions are disconnected).
    pub fn stop_server(&mut self) -> Result<()> {
        let mut ctl = pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        run_ok(ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's PID (first line of `postmaster.pid`).
    fn postmaster_pid(&self) -> Result<String> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))?;
        text.lines().next().map(str::to_owned).context("empty postmaster.pid")
    }

    /// A partition as the gateway sees it: SIGSTOP the postmaster and every
    /// backend, so connections stay open and nothing answers.
    pub fn freeze(&mut self) -> Result<()> {
        let pid = self.postmaster_pid()?;
        run_ok(signal_cmd("kill", &["-STOP", &pid]), "kill -STOP postmaster")?;
        // pkill exits 1 when nothing matched; the postmaster always has children.
        run_ok(signal_cmd("pkill", &["-STOP", "-P", &pid]), "pkill -STOP backends")?;
        self.frozen = true;
        Ok(())
    }

    /// Undo `freeze` (SIGCONT).
    pub fn thaw(&mut self) -> Result<()> {
        let pid = self.postmaster_pid()?;
        run_ok(signal_cmd("pkill", &["-CONT", "-P", &pid]), "pkill -CONT backends")?;
        run_ok(signal_cmd("kill", &["-CONT", &pid]), "kill -CONT postmaster")?;
        self.frozen = false;
        Ok(())
    }

    /// Run SQL with psql (from the same PostgreSQL installation).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let mut c = Command::new(pg_bindir().join("psql"));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url(),
            "-c",
            sql,
        ]);
        // A server that does not answer fails the test instead of hanging it.
        c.env("PGCONNECT_TIMEOUT", "10");
        let out = run_ok(c, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Wait (bounded) until some session waits for a lock `holder` holds:
    /// a concurrent command has reached a row or table it keeps.
    pub fn wait_until_blocked_by(&self, holder: &OpenTransaction, what: &str) {
        wait_until(what, Duration::from_secs(30), || {
            self.psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE {} = ANY(pg_blocking_pids(pid))",
                holder.pid
            ))
            .is_ok_and(|n| n != "0")
        })
        .unwrap();
    }
}

/// A session with a transaction left open, as a concurrent operator or
/// application holds one while the code under test runs.
pub struct OpenTransaction {
    rt: tokio::runtime::Runtime,
    conn: sqlx::PgConnection,
    /// Its server process.
    pid: i32,
}

impl OpenTransaction {
    /// Connect to `url`, `BEGIN` and run `sql` (statements separated by `;`).
    pub fn begin(url: &str, sql: &str) -> OpenTransaction {
        use sqlx::Connection;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (conn, pid) = rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut c)
                .await
                .expect("the session's process");
            sqlx::raw_sql(&format!("BEGIN; {sql}"))
                .execute(&mut c)
                .await
                .expect("the open transaction's statements");
            (c, pid)
        });
        OpenTransaction { rt, conn, pid }
    }

    /// Run more statements in the same transaction (`COMMIT` ends it).
    pub fn execute(&mut self, sql: &str) {
        self.rt
            .block_on(sqlx::raw_sql(sql).execute(&mut self.conn))
            .expect("the open transaction's statements");
    }
}

fn signal_cmd(tool: &str, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(args);
    c
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.thaw();
        }
        if self.running {
            let mut ctl = pg_command("pg_ctl");
            ctl.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-w", "-t", "30", "-m", "immediate", "stop"]);
            let _ = ctl.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}
