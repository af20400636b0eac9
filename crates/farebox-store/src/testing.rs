//! [`TestPostgres`]: a throwaway PostgreSQL server for tests (cargo feature `testing`).
//!
//! Other crates use it from their tests with
//! `farebox-store = { workspace = true, features = ["testing"] }` in `[dev-dependencies]`:
//!
//! ```no_run
//! # async fn demo() -> Result<(), farebox_store::StoreError> {
//! let pg = farebox_store::testing::TestPostgres::start();
//! let store = farebox_store::PostgresStore::connect(pg.url()).await?;
//! // … the server is stopped and its directory deleted when `pg` is dropped.
//! # Ok(()) }
//! ```
//!
//! It runs Debian's PostgreSQL binaries (`/usr/lib/postgresql/<version>/bin`, the highest
//! version found; or the directory in `FAREBOX_PG_BINDIR`; or `initdb`/`pg_ctl` on `PATH`):
//! `initdb` into a fresh temporary directory (trust authentication, no fsync), then the server
//! on 127.0.0.1 at a free port and on a unix socket in that directory, then `createdb`.
//! PostgreSQL refuses to run as root, so when the effective user is root the server programs
//! run as the `postgres` system user (`runuser`, or `su`), and the directory is given to it.
//! Each server has its own port and directory, so parallel tests and processes are safe.
//! Durability is switched off (`fsync=off`): it is for tests only.
//!
//! When no PostgreSQL binaries exist, [`TestPostgres::try_start`] fails (and
//! [`TestPostgres::start`] panics) with a message naming `cargo xtask setup`; tests are never
//! skipped silently.

use std::fmt;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Name of the database [`TestPostgres`] creates.
pub const DATABASE: &str = "farebox_test";

/// Why a test server could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPostgresError(pub String);

impl fmt::Display for TestPostgresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestPostgresError {}

fn fail(msg: impl Into<String>) -> TestPostgresError {
    TestPostgresError(msg.into())
}

/// A running throwaway PostgreSQL server with one database; stopped and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    dir: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    url: String,
    started_in: Duration,
    running: bool,
}

/// The system user the server programs run as (when we are root).
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestPostgres {
    /// Starts a server.
    ///
    /// # Panics
    ///
    /// When the server cannot be started (for example no PostgreSQL binaries are installed:
    /// run `cargo xtask setup`), with the reason.
    pub fn start() -> Self {
        match Self::try_start() {
            Ok(pg) => pg,
            Err(e) => panic!("cannot start a test PostgreSQL server: {e}"),
        }
    }

    /// Starts a server, or says why it could not.
    pub fn try_start() -> Result<Self, TestPostgresError> {
        let began = Instant::now();
        let bindir = find_bindir()?;
        let run_as = if effective_uid() == Some(0) { Some(postgres_user()?) } else { None };
        let dir = fresh_dir()?;
        let mut pg = TestPostgres {
            data: dir.join("data"),
            dir,
            bindir,
            run_as,
            port: 0,
            url: String::new(),
            started_in: Duration::ZERO,
            running: false,
        };
        // From here on, Drop cleans up whatever was made.
        if let Some(user) = &pg.run_as {
            std::os::unix::fs::chown(&pg.dir, Some(user.uid), Some(user.gid))
                .map_err(|e| fail(format!("cannot chown {}: {e}", pg.dir.display())))?;
        }
        pg.initdb()?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match pg.start_server(port) {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                // Most likely another process took the port in between: try another one.
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        pg.createdb()?;
        pg.url = format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", pg.port);
        pg.started_in = began.elapsed();
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/farebox_test` (trust authentication).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data directory, the unix socket and `postgres.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long starting took (initdb, server start, createdb).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Stops the server now (immediate shutdown; clients see their connections drop). Dropping
    /// also stops it. Idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let stopped = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !stopped {
            // Last resort: kill the postmaster named in its pid file.
            if let Ok(pidfile) = std::fs::read_to_string(self.data.join("postmaster.pid"))
                && let Some(pid) = pidfile.lines().next().map(str::trim)
                && !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
            {
                let _ = Command::new("kill")
                    .args(["-9", pid])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// A command running `program` from the PostgreSQL bin directory as the server's user.
    fn server_command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = match &self.run_as {
            None => Command::new(exe),
            Some(user) => {
                if let Some(runuser) = find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin"])
                {
                    let mut c = Command::new(runuser);
                    c.arg("-u").arg(&user.name).arg("--").arg(exe);
                    c
                } else {
                    // `su` runs a shell command line; `exec "$0" "$@"` runs the program and
                    // the arguments that follow it, unquoted by nobody.
                    let mut c = Command::new("su");
                    c.args(["-s", "/bin/sh", &user.name, "-c", "exec \"$0\" \"$@\""]).arg(exe);
                    c
                }
            }
        };
        cmd.current_dir(&self.dir).env("LC_ALL", "C").env("LANG", "C");
        cmd
    }

    fn initdb(&self) -> Result<(), TestPostgresError> {
        let log = self.dir.join("initdb.log");
        let out = File::create(&log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let status = self
            .server_command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| fail(format!("cannot run initdb: {e}")))?;
        if !status.success() {
            return Err(fail(format!("initdb failed ({status}):\n{}", read_tail(&log))));
        }
        Ok(())
    }

    fn start_server(&mut self, port: u16) -> Result<(), TestPostgresError> {
        let log = self.dir.join("pg_ctl.log");
        let out = File::create(&log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let server_log = self.dir.join("postgres.log");
        let options = format!(
            "-p {port} -k '{dir}' -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB \
             -c max_connections=60 -c max_wal_senders=0 -c wal_level=minimal",
            dir = self.dir.display()
        );
        // Mark running before pg_ctl returns: a half-started server must still be stopped.
        self.running = true;
        let status = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&server_log)
            .args(["-w", "-t", "30", "-o", &options, "start"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| fail(format!("cannot run pg_ctl: {e}")))?;
        if !status.success() {
            self.stop();
            return Err(fail(format!(
                "pg_ctl start failed ({status}):\n{}\n{}",
                read_tail(&log),
                read_tail(&server_log)
            )));
        }
        self.port = port;
        Ok(())
    }

    fn createdb(&self) -> Result<(), TestPostgresError> {
        let out = Command::new(self.bindir.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(DATABASE)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("cannot run createdb: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!(
                "createdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last lines of a log file, for error messages.
fn read_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(20);
            lines[from..].join("\n")
        }
        Err(_) => String::new(),
    }
}

fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter().map(PathBuf::from).chain(path_dirs).map(|d| d.join(name)).find(|p| p.is_file())
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres", "createdb"].iter().all(|b| dir.join(b).is_file())
}

/// The PostgreSQL bin directory: `FAREBOX_PG_BINDIR`, else the highest
/// `/usr/lib/postgresql/<version>/bin`, else the directory of `pg_ctl` on `PATH`.
fn find_bindir() -> Result<PathBuf, TestPostgresError> {
    if let Some(dir) = std::env::var_os("FAREBOX_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        return Err(fail(format!(
            "FAREBOX_PG_BINDIR={} lacks initdb, pg_ctl, postgres or createdb",
            dir.display()
        )));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(dir) = find_program("pg_ctl", &[]).and_then(|p| p.parent().map(Path::to_path_buf))
        && has_server_binaries(&dir)
    {
        return Ok(dir);
    }
    Err(fail(
        "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/<version>/bin and \
         PATH): run `cargo xtask setup` (it installs Debian's `postgresql` package), or set \
         FAREBOX_PG_BINDIR",
    ))
}

/// The effective user id, from `/proc/self/status` (no `unsafe` needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The `postgres` system user, from `/etc/passwd`.
fn postgres_user() -> Result<RunAs, TestPostgresError> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| fail(format!("cannot read /etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            if name != "postgres" {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(RunAs {
                name: name.to_owned(),
                uid,
                gid,
            })
        })
        .ok_or_else(|| {
            fail(
                "running as root, and PostgreSQL refuses to: no `postgres` system user to run it \
                 as (run `cargo xtask setup`, which installs the `postgresql` package and its user)",
            )
        })
}

/// A new, empty directory under the system temporary directory.
fn fresh_dir() -> Result<PathBuf, TestPostgresError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("farebox-pg-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(format!("cannot create {}: {e}", dir.display()))),
        }
    }
    Err(fail("cannot create a fresh temporary directory"))
}

/// A TCP port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16, TestPostgresError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| fail(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| fail(format!("cannot find a free port: {e}")))
}
