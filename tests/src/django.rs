//! A real Django + django-tenants app (tests/django/) under gunicorn (WSGI)
//! or uvicorn (ASGI), from
//! the venv `scripts/python-env.sh` builds (target/python-venv), with the
//! `tenant-gateway-django` package installed from python/.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{common_env, free_port, wait_healthy, Proc};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A program of the test venv.
pub fn venv_bin(name: &str) -> PathBuf {
    let p = root().join("target/python-venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/python-env.sh first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn project_dir() -> PathBuf {
    root().join("tests/django")
}

fn django_env(cmd: &mut Command, db_url: &str) {
    common_env(cmd, db_url);
    cmd.current_dir(project_dir())
        .env("DJANGO_SETTINGS_MODULE", "djproject.settings")
        .env("PYTHONDONTWRITEBYTECODE", "1");
}

/// `python manage.py <args>` against `db_url`; panics with its output on failure.
pub fn manage(db_url: &str, args: &[&str]) -> String {
    let mut c = Command::new(venv_bin("python"));
    django_env(&mut c, db_url);
    let out = c
        .arg("manage.py")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run manage.py");
    assert!(
        out.status.success(),
        "manage.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The app on a free port (shared schema migrated first).
pub struct Django {
    pub proc_: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Django {
    /// Migrate the shared apps, then serve with `workers` gunicorn workers.
    pub fn start(db_url: &str, workers: u32) -> Result<Django> {
        Django::serve(db_url, "gunicorn", |c, port| {
            c.args(["djproject.wsgi", "--bind", &format!("127.0.0.1:{port}"), "--workers"])
                .arg(workers.to_string())
                .args(["--access-logfile", "-", "--log-level", "info"]);
        })
    }

    /// Migrate the shared apps, then serve under uvicorn (ASGI: the
    /// middleware reads the scope's method and raw path).
    pub fn start_asgi(db_url: &str) -> Result<Django> {
        Django::serve(db_url, "uvicorn", |c, port| {
            c.args(["djproject.asgi:application", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--log-level", "info"]);
        })
    }

    fn serve(db_url: &str, server: &str, args: impl FnOnce(&mut Command, u16)) -> Result<Django> {
        manage(db_url, &["migrate_schemas", "--shared", "--noinput"]);
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut c = Command::new(venv_bin(server));
        django_env(&mut c, db_url);
        args(&mut c, port);
        let mut proc_ = Proc::spawn(server, c, dir.path().join(format!("{server}.log")))?;
        // The middleware answers its health path without a stamp.
        wait_healthy(&mut proc_, port, "/healthz", Duration::from_secs(60))
            .with_context(|| format!("{server} did not start"))?;
        Ok(Django { proc_, port, _dir: dir })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
