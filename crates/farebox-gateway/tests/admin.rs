//! The admin listener (bearer token, payments, L402 tokens, revocation across instances, MPP
//! sessions listed and closed) and the rate limits, through real gateways on loopback.

#[path = "../../../specs/schemas/harness.rs"]
mod harness;

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use farebox_mpp::client::MppWallet;
use farebox_mpp::client::session::LightningSessionPolicy;
use serde_json::Value;

const TOKEN: &str = "admin-token-for-the-tests-0123456789";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `[admin]` on a free port with the test token in a file of `dir`, and a fixed L402 root key
/// (so that instances sharing a store accept each other's tokens).
fn admin_section(dir: &std::path::Path, admin: SocketAddr) -> String {
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("root.key"), "11".repeat(32)).unwrap();
    format!(
        "[admin]\nlisten = \"{admin}\"\ntoken = {{ key_file = \"{}\" }}\n",
        dir.join("admin.token").display()
    )
}

fn with_root_key(base: &str, dir: &std::path::Path) -> String {
    base.replace(
        "service = \"test\"",
        &format!(
            "service = \"test\"\nroot_key = {{ key_file = \"{}\" }}",
            dir.join("root.key").display()
        ),
    )
}

const ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/joke"
price = "10 sat"
description = "a joke"
"#;

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(addr: SocketAddr) -> Admin {
        Admin { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> Value {
        let answer =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        answer.json().await.unwrap()
    }

    async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.unwrap()
    }
}

/// A gateway with `[admin]`, the L402 root key file, and `rest` (routes and more).
async fn start_admin(
    keys: &tempfile::TempDir,
    rest: &str,
    store: Option<&str>,
) -> (common::Running, Admin) {
    let upstream = common::Upstream::default();
    let upstream_addr = common::serve_router(common::upstream_router(upstream.clone())).await;
    let admin = free_addr();
    let base = with_root_key(&common::base_config(upstream_addr, ""), keys.path());
    let store = store.map(|s| format!("[store]\nsqlite = \"{s}\"\n")).unwrap_or_default();
    let text = format!("{base}\n{}\n{store}\n{rest}", admin_section(keys.path(), admin));
    let g = common::start_with(upstream, upstream_addr, &text).await;
    // The admin listener is bound by the serving task.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "the admin listener never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (g, Admin::new(admin))
}

#[tokio::test]
async fn the_admin_api_needs_its_bearer_token_and_is_not_on_the_public_listener() {
    let keys = tempfile::tempdir().unwrap();
    let (g, admin) = start_admin(&keys, ROUTES, None).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/status", admin.base);
    for auth in [None, Some("Bearer wrong-token-of-some-length"), Some("Basic YWRtaW46eA==")] {
        let mut request = http.get(&url);
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401, "{auth:?}");
        assert!(answer.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        harness::assert_valid("problem-details", &answer.json::<Value>().await.unwrap());
    }
    let revoke = http.post(format!("{}/api/l402/tokens/{}/revoke", admin.base, "00".repeat(32)));
    assert_eq!(revoke.send().await.unwrap().status(), 401, "revoking needs the token too");
    let status = admin.get("/api/status").await;
    assert!(status["revenue"].as_array().unwrap().is_empty());

    // The status page's shell has no data and needs no token; it allows only itself.
    let page = http.get(format!("{}/", admin.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"), "{csp}");
    assert!(page.text().await.unwrap().contains("Revenue per rail and route"));

    // None of it on the public listener.
    assert_eq!(
        http.get(g.url("/api/status")).bearer_auth(TOKEN).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn payments_and_l402_tokens_are_listed_and_a_token_is_revenue_once() {
    let keys = tempfile::tempdir().unwrap();
    let (g, admin) = start_admin(&keys, ROUTES, None).await;
    let first = g.payer().await;
    assert_eq!(first.get(g.url("/joke")).send().await.unwrap().status(), 200);
    assert_eq!(first.get(g.url("/joke")).send().await.unwrap().status(), 200);
    let second = g.payer().await;
    assert_eq!(second.get(g.url("/joke")).send().await.unwrap().status(), 200);
    assert!(g.gateway.flush_payments(Duration::from_secs(10)).await);

    let payments = admin.get("/api/payments?limit=10").await;
    let payments = payments["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 2, "two tokens bought, three requests served");
    for p in payments {
        assert_eq!(p["rail"], "l402");
        assert_eq!(p["route"], "/joke");
        assert_eq!(p["path"], "/joke");
        assert_eq!(p["money"]["display"], "10 sat");
        assert_eq!(p["token_id"].as_str().unwrap().len(), 64);
    }
    let tokens = admin.get("/api/l402/tokens").await;
    let mut uses: Vec<i64> =
        tokens["tokens"].as_array().unwrap().iter().map(|t| t["uses"].as_i64().unwrap()).collect();
    uses.sort();
    assert_eq!(uses, vec![1, 2]);
    let status = admin.get("/api/status").await;
    let revenue = &status["revenue"][0];
    assert_eq!(revenue["rail"], "l402");
    assert_eq!(revenue["payments"], 2);
    assert_eq!(revenue["money"]["amount"], "20000");
    assert_eq!(revenue["money"]["display"], "20 sat");
    assert_eq!(g.gateway.dev_node().await.unwrap().balance_msat(), 20_000, "what the node got");

    let bad =
        admin.http.get(format!("{}/api/payments?limit=100000", admin.base)).bearer_auth(TOKEN);
    assert_eq!(bad.send().await.unwrap().status(), 400);
}

/// Buys an L402 token for `/joke` on `g` by hand (402, pay the invoice from the dev wallet) and
/// returns its `Authorization` value.
async fn buy_token(g: &common::Running) -> String {
    use farebox_lightning::LightningBackend;
    let unpaid = reqwest::get(g.url("/joke")).await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let values: Vec<String> = unpaid
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let challenges =
        farebox_core::auth::parse_challenges(values.iter().map(String::as_str)).unwrap();
    let l402 = challenges
        .iter()
        .find_map(|c| farebox_l402::parse_challenge(c).ok())
        .expect("an L402 challenge");
    let wallet = g.gateway.dev_wallet().await.unwrap();
    let paid = wallet.pay(&l402.invoice, 1_000).await.unwrap();
    farebox_l402::format_credential(&l402.macaroon, &paid.preimage)
}

async fn status_with(g: &common::Running, credential: &str) -> u16 {
    reqwest::Client::new()
        .get(g.url("/joke"))
        .header("authorization", credential)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Two gateways with admin listeners on one SQLite file in `keys`.
async fn two_instances(
    keys: &tempfile::TempDir,
) -> ((common::Running, Admin), (common::Running, Admin)) {
    let shared = keys.path().join("shared.sqlite");
    let shared = shared.to_str().unwrap();
    (start_admin(keys, ROUTES, Some(shared)).await, start_admin(keys, ROUTES, Some(shared)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_refused_on_every_instance_within_a_second() {
    let keys = tempfile::tempdir().unwrap();
    let ((a, admin_a), (b, _admin_b)) = two_instances(&keys).await;
    let token = buy_token(&a).await;
    let other = buy_token(&a).await;
    assert_eq!(status_with(&a, &token).await, 200);
    assert_eq!(status_with(&b, &token).await, 200, "a token bought on A serves on B");
    assert_eq!(status_with(&b, &other).await, 200);
    assert!(a.gateway.flush_payments(Duration::from_secs(10)).await);
    let id = farebox_gateway::l402_token::presented_token(&{
        let mut h = http::HeaderMap::new();
        h.insert("authorization", token.parse().unwrap());
        h
    })
    .unwrap()
    .token_id;
    let token_id = hex::encode(id);
    let listed = admin_a.get("/api/l402/tokens").await;
    let row = |listed: &Value| {
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["token_id"] == token_id.as_str())
            .cloned()
    };
    assert_eq!(row(&listed).expect("the token is listed")["revoked"], false);

    let revoked = admin_a.post(&format!("/api/l402/tokens/{token_id}/revoke")).await;
    assert_eq!(revoked.status(), 200);
    let at = Instant::now();
    // At once on A, where it was revoked: a fresh 402.
    assert_eq!(status_with(&a, &token).await, 402);
    // On B within a second.
    let mut refused_after = None;
    while at.elapsed() < Duration::from_secs(3) {
        match status_with(&b, &token).await {
            402 => {
                refused_after = Some(at.elapsed());
                break;
            }
            status => assert_eq!(status, 200),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = refused_after.expect("B refuses the revoked token");
    assert!(after <= Duration::from_secs(1), "B still served the revoked token after {after:?}");
    // The other token is untouched, and the listing says which is revoked.
    assert_eq!(status_with(&b, &other).await, 200);
    assert_eq!(row(&admin_a.get("/api/l402/tokens").await).unwrap()["revoked"], true);
    assert_eq!(admin_a.post("/api/l402/tokens/not-hex/revoke").await.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_used_on_every_instance_is_one_payment_between_them_as_soon_as_served() {
    let keys = tempfile::tempdir().unwrap();
    let ((a, admin_a), (b, _admin_b)) = two_instances(&keys).await;
    let token = buy_token(&a).await;
    // Its first paid answer on both instances at once, then again on each.
    let (on_a, on_b) = tokio::join!(status_with(&a, &token), status_with(&b, &token));
    assert_eq!((on_a, on_b), (200, 200));
    assert_eq!(status_with(&b, &token).await, 200);
    assert_eq!(status_with(&a, &token).await, 200);
    // Counted as served, without waiting for the payment log.
    let payments = |g: &common::Running| {
        g.gateway.metrics().counter("farebox_gateway_payments_total", &[("route", "/joke")])
    };
    let revenue = |g: &common::Running| {
        g.gateway.metrics().counter("farebox_gateway_revenue_total", &[("route", "/joke")])
    };
    assert_eq!(payments(&a) + payments(&b), 1, "one token bought, four requests served");
    assert_eq!(revenue(&a) + revenue(&b), 10_000);
    let paid = |g: &common::Running| {
        g.gateway.metrics().counter("farebox_gateway_paid_requests_total", &[("route", "/joke")])
    };
    assert_eq!(paid(&a) + paid(&b), 4);

    assert!(a.gateway.flush_payments(Duration::from_secs(10)).await);
    assert!(b.gateway.flush_payments(Duration::from_secs(10)).await);
    let logged = admin_a.get("/api/payments?limit=10").await;
    assert_eq!(logged["payments"].as_array().unwrap().len(), 1, "{logged}");
    let tokens = admin_a.get("/api/l402/tokens").await;
    assert_eq!(tokens["tokens"][0]["uses"], 4, "{tokens}");
}

/// A payment answered an instant before a graceful shutdown is in the payment log when the
/// gateway starts again: the shutdown writes what the log gathered (it commits every 50 ms).
/// The first gateway runs on a runtime of its own, dropped as soon as `serve` returns, as the
/// `farebox serve` process exits then; its admin listener keeps its state alive until then, as
/// the process's other tasks do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_served_just_before_shutdown_is_in_the_payment_log_after_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let shared = keys.path().join("shared.sqlite");
    let (served, logged_on_return) = {
        let (keys, shared) = (keys.path().to_path_buf(), shared.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let keys = tempfile::TempDir::new_in(keys).unwrap();
                let (mut g, _admin) = start_admin(&keys, ROUTES, shared.to_str()).await;
                let token = buy_token(&g).await;
                assert_eq!(status_with(&g, &token).await, 200);
                g.stop.take().unwrap().send(()).unwrap();
                (&mut g.served).await.unwrap().unwrap();
                // What the next process finds, read as `serve` returns, with the gateway alive.
                let db = farebox_gateway::db::GatewayDb::sqlite(&shared).await.unwrap();
                let logged = db.recent_payments(10).await.unwrap().len();
                (g.gateway.metrics().counter("farebox_gateway_payments_total", &[]), logged)
            })
        })
        .join()
        .unwrap()
    };
    assert_eq!(served, 1, "one payment served before the shutdown");
    assert_eq!(logged_on_return, 1, "the payment log was written before `serve` returned");

    let (_g, admin) = start_admin(&keys, ROUTES, shared.to_str()).await;
    let logged = admin.get("/api/payments?limit=10").await;
    let logged = logged["payments"].as_array().unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["rail"], "l402");
    assert_eq!(logged[0]["money"]["amount"], "10000");
    let status = admin.get("/api/status").await;
    assert_eq!(status["revenue"][0]["payments"], 1, "{status}");
    assert_eq!(status["revenue"][0]["money"]["amount"], "10000", "{status}");
}

const RATE_LIMITED: &str = r#"
[rate_limit]
per_ip = { requests = 3, window_secs = 60 }

[[routes]]
path = "/free"
free = true

[[routes]]
methods = ["GET"]
path = "/joke"
price = "10 sat"
rate_limit = { per_ip = { requests = 100, window_secs = 60 }, per_token = { requests = 2, window_secs = 60 } }
"#;

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_ip_and_per_token() {
    let g = common::start("", RATE_LIMITED).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(http.get(g.url("/free")).send().await.unwrap().status(), 200);
    }
    let limited = http.get(g.url("/free")).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(limited.headers()["content-type"], "application/problem+json");
    harness::assert_valid("problem-details", &limited.json::<Value>().await.unwrap());
    assert_eq!(g.upstream.count(), 3, "the limited request never reached the upstream");

    // The priced route has limits of its own: its IP limit is not the free route's, and one
    // token serves at most 2 requests a minute, whoever presents it.
    let token = buy_token(&g).await;
    assert_eq!(status_with(&g, &token).await, 200);
    assert_eq!(status_with(&g, &token).await, 200);
    assert_eq!(status_with(&g, &token).await, 429);
    let fresh = buy_token(&g).await;
    assert_eq!(status_with(&g, &fresh).await, 200, "another token has its own bucket");
    let m = g.gateway.metrics();
    assert_eq!(m.counter("farebox_gateway_rate_limited_total", &[("limit", "per_ip")]), 1);
    assert_eq!(m.counter("farebox_gateway_rate_limited_total", &[("limit", "per_token")]), 1);
}

// Multi-threaded: farebox-client's session book closes what is left when it drops, and on a
// current-thread runtime that is shutting down that close recurses until the stack overflows
// (reported; not this crate's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_closed_from_the_admin_api_with_the_rest_refunded() {
    let keys = tempfile::tempdir().unwrap();
    let rest = r#"
[rails.mpp]
realm = "test"
lightning = true

[rails.mpp.lightning_session]
deposit_units = 5

[[routes]]
methods = ["GET"]
path = "/ticks/*"
price = "10 sat"
rails = ["mpp"]
"#;
    let (g, admin) = start_admin(&keys, rest, None).await;
    let wallet = g.gateway.dev_wallet().await.unwrap();
    let client = common::paying(
        MppWallet::new()
            .lightning(wallet.clone(), 1_000)
            .lightning_sessions(LightningSessionPolicy::default()),
    );
    assert_eq!(client.get(g.url("/ticks/a")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(g.url("/ticks/b")).send().await.unwrap().status(), 200);

    let listed = admin.get("/api/sessions").await;
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{listed}");
    let s = &sessions[0];
    assert_eq!(s["status"], "open");
    assert_eq!(s["deposit"]["display"], "50 sat");
    assert_eq!(s["spent"]["display"], "20 sat");
    assert_eq!(s["available"]["display"], "30 sat");
    let (namespace, id) = (s["namespace"].as_str().unwrap(), s["id"].as_str().unwrap());

    let before = wallet.balance_msat();
    let closed = admin.post(&format!("/api/sessions/{namespace}/{id}/close")).await;
    assert_eq!(closed.status(), 202);
    // The rail's upkeep closes it and refunds the 30 sat left to the wallet's return invoice.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wallet.balance_msat() < before + 30_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(wallet.balance_msat() - before, 30_000, "the unspent deposit came back");
    let listed = admin.get("/api/sessions").await;
    assert!(listed["sessions"].as_array().unwrap().is_empty(), "{listed}");
    let again = admin.post(&format!("/api/sessions/{namespace}/{id}/close")).await;
    assert_eq!(again.status(), 409);
    let unknown = admin.post(&format!("/api/sessions/{namespace}/{}/close", "ab".repeat(32))).await;
    assert_eq!(unknown.status(), 404);
}
