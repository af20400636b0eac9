//! Dynamic prices from an operator's pricer: one that answers (and whose answers are cached per
//! request facts), one that times out, one that is down, one that answers nonsense; and the
//! configuration checks of `pricer` and `on_pricer_error`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

/// A pricer: `x-model: large` costs 50 sat, anything else 10 sat; `/slow` answers after 3 s;
/// `/nonsense` names an asset nobody charges. Counts the questions it was asked.
#[derive(Clone, Default)]
struct PricerState {
    asked: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn start_pricer() -> (SocketAddr, PricerState) {
    let state = PricerState::default();
    let router = axum::Router::new()
        .route(
            "/price",
            post(|State(s): State<PricerState>, Json(facts): Json<Value>| async move {
                s.asked.fetch_add(1, Ordering::SeqCst);
                s.seen.lock().unwrap().push(facts.clone());
                let price =
                    if facts["headers"]["x-model"] == "large" { "50 sat" } else { "10 sat" };
                Json(json!({ "price": price }))
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Json(json!({ "price": "1 sat" }))
            }),
        )
        .route("/nonsense", post(|| async { Json(json!({ "price": "1 dogecoin" })) }))
        .route("/zero", post(|| async { Json(json!({ "price": "0 sat" })) }))
        .with_state(state.clone());
    (common::serve_router(router).await, state)
}

fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn a_dynamic_route_charges_what_the_pricer_says_for_the_request_and_caches_it() {
    let (pricer, state) = start_pricer().await;
    let routes = format!(
        r#"
[[routes]]
methods = ["POST"]
path = "/chat"
pricer = {{ url = "http://{pricer}/price", cache_ttl_secs = 60, headers = ["x-model"] }}
"#
    );
    let g = common::start("", &routes).await;
    let node = g.gateway.dev_node().await.unwrap();

    let unpaid = reqwest::Client::new()
        .post(g.url("/chat?stream=1"))
        .header("x-model", "large")
        .header("x-secret", "not for the pricer")
        .send()
        .await
        .unwrap();
    assert_eq!(unpaid.status(), 402);
    assert_eq!(g.upstream.count(), 0);
    let facts = state.seen.lock().unwrap()[0].clone();
    assert_eq!(
        facts,
        json!({"method": "POST", "path": "/chat", "host": "127.0.0.1", "query": "stream=1",
               "headers": {"x-model": "large"}})
    );

    // Paid: the price the pricer named for these facts, asked once (the retry hits the cache).
    let before = node.balance_msat();
    let paid = g
        .payer()
        .await
        .post(g.url("/chat?stream=1"))
        .header("x-model", "large")
        .header("x-secret", "not for the pricer")
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    assert_eq!(node.balance_msat() - before, 50_000);
    assert_eq!(g.upstream.last().headers["x-farebox-amount"], "50000");
    assert_eq!(state.asked.load(Ordering::SeqCst), 1, "the same facts are priced once per TTL");

    // Other facts, another price.
    let before = node.balance_msat();
    let small = g.payer().await.post(g.url("/chat")).send().await.unwrap();
    assert_eq!(small.status(), 200);
    assert_eq!(node.balance_msat() - before, 10_000);
    assert_eq!(state.asked.load(Ordering::SeqCst), 2);
    let m = g.gateway.metrics();
    assert_eq!(m.counter("farebox_gateway_pricer_requests_total", &[("outcome", "priced")]), 2);
    assert!(m.counter("farebox_gateway_pricer_requests_total", &[("outcome", "cached")]) >= 2);
}

#[tokio::test]
async fn a_pricer_that_times_out_charges_the_fallback_price() {
    let (pricer, _) = start_pricer().await;
    let routes = format!(
        r#"
[[routes]]
path = "/chat"
pricer = {{ url = "http://{pricer}/slow", timeout_ms = 200, fallback = "30 sat" }}
"#
    );
    let g = common::start("", &routes).await;
    let node = g.gateway.dev_node().await.unwrap();
    let before = node.balance_msat();
    let paid = g.payer().await.get(g.url("/chat")).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    assert_eq!(node.balance_msat() - before, 30_000);
    assert!(
        g.gateway
            .metrics()
            .counter("farebox_gateway_pricer_requests_total", &[("outcome", "failed")])
            >= 1
    );
}

#[tokio::test]
async fn a_pricer_that_is_down_refuses_and_serves_free_only_where_the_route_says_so() {
    let down = closed_port();
    let routes = format!(
        r#"
[[routes]]
path = "/refuse"
pricer = {{ url = "http://{down}/price" }}

[[routes]]
path = "/refuse-despite-fallback"
pricer = {{ url = "http://{down}/price", fallback = "5 sat" }}
on_pricer_error = "refuse"

[[routes]]
path = "/fallback"
pricer = {{ url = "http://{down}/price", fallback = "5 sat" }}

[[routes]]
path = "/free"
pricer = {{ url = "http://{down}/price" }}
on_pricer_error = "free"
"#
    );
    let g = common::start("", &routes).await;
    let http = reqwest::Client::new();
    for path in ["/refuse", "/refuse-despite-fallback"] {
        let answer = http.get(g.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 503, "{path}");
        assert!(answer.headers().contains_key("retry-after"), "{path}");
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(g.upstream.count(), 0, "nothing was served while the pricer is down");
    assert_eq!(http.get(g.url("/fallback")).send().await.unwrap().status(), 402);
    assert_eq!(g.upstream.count(), 0);
    let free = http.get(g.url("/free")).send().await.unwrap();
    assert_eq!(free.status(), 200);
    assert_eq!(g.upstream.last().path, "/free");
    assert!(g.upstream.last().headers.get("x-farebox-rail").is_none());
}

#[tokio::test]
async fn a_pricer_answer_that_is_not_a_chargeable_price_is_a_failure() {
    let (pricer, _) = start_pricer().await;
    let routes = format!(
        r#"
[[routes]]
path = "/nonsense"
pricer = {{ url = "http://{pricer}/nonsense" }}

[[routes]]
path = "/zero"
pricer = {{ url = "http://{pricer}/zero" }}
"#
    );
    let g = common::start("", &routes).await;
    for path in ["/nonsense", "/zero"] {
        let answer = reqwest::get(g.url(path)).await.unwrap();
        assert_eq!(answer.status(), 503, "{path}: never free, never a made-up price");
    }
    assert_eq!(g.upstream.count(), 0);
}

#[test]
fn pricer_mistakes_are_refused_at_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = common::base_config(up, "");
    let cases = [
        (
            "[[routes]]\npath = \"/a\"\npricer = { url = \"http://127.0.0.1:1/p\" }\non_pricer_error = \"fallback\"\n",
            "routes[0].on_pricer_error",
        ),
        (
            "[[routes]]\npath = \"/a\"\nprice = \"1 sat\"\npricer = { url = \"http://127.0.0.1:1/p\" }\n",
            "routes[0].pricer",
        ),
        (
            "[[routes]]\npath = \"/a\"\npricer = { url = \"https://pricer.example/p\" }\n",
            "routes[0].pricer.url",
        ),
        (
            "[[routes]]\npath = \"/a\"\npricer = { url = \"http://127.0.0.1:1/p\", fallback = \"1 usd\" }\n",
            "routes[0].pricer.fallback",
        ),
        (
            "[[routes]]\npath = \"/a\"\npricer = { url = \"http://127.0.0.1:1/p\", timeout_ms = 0 }\n",
            "routes[0].pricer.timeout_ms",
        ),
        (
            "[[routes]]\npath = \"/a\"\nprice = \"1 sat\"\non_pricer_error = \"free\"\n",
            "routes[0].on_pricer_error",
        ),
    ];
    for (routes, key) in cases {
        let refused = common::write_config(dir.path(), &format!("{base}\n{routes}")).unwrap_err();
        assert!(refused.has(key), "{key}: {refused}");
    }
}
