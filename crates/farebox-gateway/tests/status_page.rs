//! The status page as a person sees it: headless Chromium (Debian `chromium`, which `cargo xtask
//! test` installs) opens the admin listener's page, and the test reads what is rendered, through
//! the Chrome DevTools protocol spoken directly over a WebSocket: the revenue per rail and route
//! after a payment, and a payment row that appears without the page being reloaded. A
//! screenshot is saved in the test's temp dir (and copied to `$FAREBOX_SCREENSHOT_DIR` when set).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use farebox_mpp::client::MppWallet;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "status-page-admin-token-0123456789";

/// The browser, killed when the test ends.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("FAREBOX_CHROMIUM") {
        return p.into();
    }
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.into();
        }
    }
    panic!("no Chromium: `cargo xtask setup` installs Debian's chromium (or set FAREBOX_CHROMIUM)");
}

/// Starts headless Chromium with a fresh profile; returns it and its DevTools WebSocket URL.
fn launch(profile: &Path) -> (Browser, String) {
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let browser = Browser(child);
    // Chromium writes the port and the browser target's path into the profile once it listens.
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some((port, path)) = text.split_once('\n')
            && !path.trim().is_empty()
        {
            return (browser, format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
        }
        assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A DevTools protocol connection: commands by id, events skipped.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("DevTools WebSocket");
        Cdp { ws, next: 0, session: None }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            message["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(message.to_string())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer"))
                .expect("DevTools closed")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))
            .await;
        r["result"]["value"].clone()
    }

    /// What a person reads on the page.
    async fn text(&mut self) -> String {
        self.eval("document.body.innerText").await.as_str().unwrap_or("").to_string()
    }

    /// Waits until the page shows a line holding all of `words`; that line.
    async fn wait_for_line(&mut self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text().await;
            if let Some(line) = text.lines().find(|l| words.iter().all(|w| l.contains(w))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "the page never showed {words:?}:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_revenue_and_new_payments_without_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let rest = format!(
        r#"
[admin]
listen = "{admin}"
token = {{ key_file = "{}" }}

[rails.mpp]
realm = "status"
lightning = true

[[routes]]
methods = ["GET"]
path = "/joke"
price = "10 sat"
description = "a joke"

[[routes]]
methods = ["GET"]
path = "/report"
price = "25 sat"
rails = ["mpp"]
"#,
        token_file.display()
    );
    let g = common::start("", &rest).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "the admin listener never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // One payment before the page is opened.
    assert_eq!(g.payer().await.get(g.url("/joke")).send().await.unwrap().status(), 200);

    let profile = dir.path().join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let (_browser, ws) = launch(&profile);
    let mut cdp = Cdp::connect(&ws).await;
    let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" })).await;
    let attached = cdp
        .call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Page.navigate", json!({ "url": format!("http://{admin}/#token={TOKEN}") })).await;

    // What a person sees: the revenue of the L402 payment, and its row.
    let revenue = cdp.wait_for_line(&["l402", "/joke", "10 sat"]).await;
    assert!(revenue.contains('1'), "one payment: {revenue}");
    cdp.wait_for_line(&["GET /joke", "10 sat"]).await;
    assert_eq!(cdp.eval("location.hash").await, "", "the token is not left in the address bar");
    let text = cdp.text().await;
    assert!(!text.contains(TOKEN), "the token is not shown");
    assert!(text.contains("no open sessions"), "{text}");

    // Marked, so that a reload would show.
    cdp.eval("window.__stillTheSamePage = true").await;

    // A payment on another rail and route, made while the page is open.
    let wallet = g.gateway.dev_wallet().await.unwrap();
    let mpp = common::paying(MppWallet::new().lightning(wallet, 1_000));
    assert_eq!(mpp.get(g.url("/report")).send().await.unwrap().status(), 200);

    let row = cdp.wait_for_line(&["mpp", "GET /report", "25 sat"]).await;
    let revenue = cdp.wait_for_line(&["mpp", "/report", "25 sat"]).await;
    assert_ne!(row, revenue);
    assert_eq!(cdp.eval("window.__stillTheSamePage === true").await, true, "no reload happened");
    assert_eq!(cdp.eval("document.querySelectorAll('#payments tr').length").await, 2);

    let shot = cdp.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    let png =
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = dir.path().join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    if let Some(keep) = std::env::var_os("FAREBOX_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&path, Path::new(&keep).join("status-page.png")).unwrap();
    }
    eprintln!("status page screenshot: {} ({} bytes)", path.display(), png.len());
}
