//! `farebox serve` as an operator runs it: `--check` exit codes, and a real gateway process that
//! reloads on SIGHUP (refusing a bad file and keeping the old one) and stops on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn farebox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farebox"))
}

const GOOD: &str = r#"
[lightning]
backend = "dev"

[rails.l402]
service = "cli"

[[routes]]
path = "/health"
free = true

[[routes]]
path = "/joke"
price = "10 sat"
"#;

const BAD: &str = r#"
[lightning]
backend = "dev"

[rails.l402]
service = "cli"

[[routes]]
path = "/joke"
price = "10 dollars"
"#;

#[test]
fn check_exits_0_for_a_good_file_and_2_with_the_key_path_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("farebox.toml");
    std::fs::write(&file, GOOD).unwrap();
    let out = farebox().args(["serve", "--check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(&file, BAD).unwrap();
    let out = farebox().args(["serve", "--check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("farebox.toml:10:1: routes[0].price"), "{stderr}");

    // The example in the repository checks as it is.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../farebox-gateway/farebox.example.toml");
    let out = farebox().args(["serve", "--check", "--config", example]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Kills the gateway if a test fails half-way.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
    assert!(status.unwrap().success(), "kill -{name}");
}

fn status_of(url: &str) -> Option<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { reqwest::get(url).await.ok().map(|r| r.status().as_u16()) })
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_contains(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

#[test]
fn a_gateway_process_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("farebox.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    std::fs::write(&file, GOOD).unwrap();
    let log = dir.path().join("gateway.log");
    let child = farebox()
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--listen", &listen])
        .env("FAREBOX_STATE_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut gateway = Gateway(child);
    let base = format!("http://{listen}");
    wait_until("the gateway to listen", || status_of(&format!("{base}/health")) == Some(200));
    assert_eq!(status_of(&format!("{base}/joke")), Some(402));
    assert!(dir.path().join("farebox-gateway.sqlite").exists());

    // A bad file is refused; the running configuration keeps serving.
    std::fs::write(&file, BAD).unwrap();
    signal(&gateway.0, "HUP");
    wait_until("the refusal", || log_contains(&log, "routes[0].price"));
    assert_eq!(status_of(&format!("{base}/health")), Some(200));

    // A good one is taken.
    std::fs::write(&file, format!("{GOOD}\n[[routes]]\npath = \"/report\"\nfree = true\n"))
        .unwrap();
    signal(&gateway.0, "HUP");
    wait_until("the new route", || status_of(&format!("{base}/report")) == Some(200));

    signal(&gateway.0, "TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the gateway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
