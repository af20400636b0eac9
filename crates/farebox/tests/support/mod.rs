//! What the process-level tests share: a `farebox serve` gateway process with the dev Lightning
//! node's wallet API, stopped when dropped, and the counters it keeps.
// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `url`: its status and body, or `None` when it does not answer.
pub fn get(url: &str) -> Option<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let r = reqwest::get(url).await.ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    })
}

/// Writes a file only its owner may read, as wallet and key files must be.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A child process, stopped when dropped, pass or fail: SIGTERM first, so that it tears down
/// what it started (its own anvil…); SIGKILL only if it does not exit in time.
pub struct Process(pub Child);

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        Process(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until every URL of `urls` answers 200.
pub fn wait_for(urls: &[String]) {
    let start = Instant::now();
    while !urls.iter().all(|u| get(u).map(|r| r.0) == Some(200)) {
        assert!(start.elapsed() < Duration::from_secs(60), "{urls:?} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `farebox serve` process serving `/health` free and running the dev Lightning node with its
/// wallet API; stopped when dropped.
pub struct Gateway {
    _process: Process,
    pub base: String,
    /// The dev wallet's API.
    pub wallet: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway on a free port with the dev Lightning node and `/health`, plus
    /// `config` (rails, routes…), and waits until it and its dev wallet answer.
    pub fn spawn(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (port, wallet_port) = (free_port(), free_port());
        let path = dir.path().join("farebox.toml");
        let base = format!(
            r#"
[gateway]
listen = "127.0.0.1:{port}"

[lightning]
backend = "dev"

[lightning.dev]
wallet_sats = 100000
wallet_listen = "127.0.0.1:{wallet_port}"

[[routes]]
path = "/health"
free = true
"#
        );
        std::fs::write(&path, base + config).unwrap();
        let process = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_farebox"))
                .args(["serve", "--config"])
                .arg(&path)
                .env("FAREBOX_STATE_DIR", dir.path()),
        );
        let g = Gateway {
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            wallet: format!("http://127.0.0.1:{wallet_port}"),
            _dir: dir,
        };
        wait_for(&[g.url("/health"), format!("{}/v1/balance", g.wallet)]);
        g
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The sum of the metric `name`'s series whose labels contain `labels`.
    fn metric(&self, name: &str, labels: &str) -> u64 {
        let (_, text) = get(&self.url("/_farebox/metrics")).expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Settled payments, as the server counts them.
    pub fn payments(&self) -> u64 {
        self.metric("farebox_gateway_payments_total", "")
    }

    /// Requests to `route` answered 200: its handler ran.
    pub fn served(&self, route: &str) -> u64 {
        self.metric("farebox_gateway_requests_total", &format!("route=\"{route}\",status=\"200\""))
    }

    /// What the dev wallet holds, msat.
    pub fn wallet_msat(&self) -> u64 {
        let (_, text) = get(&format!("{}/v1/balance", self.wallet)).expect("wallet balance");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["balance_msat"].as_u64().unwrap()
    }
}
