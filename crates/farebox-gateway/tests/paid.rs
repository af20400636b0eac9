//! Paid routes through a real gateway: L402 paid by farebox-client from the dev wallet, free
//! routes, the free tier, what the upstream learns about the payment, metrics, reloads and
//! graceful shutdown.

mod common;

use std::time::Duration;

use common::start;

const ROUTES: &str = r#"
[[routes]]
path = "/health"
free = true

[[routes]]
methods = ["GET"]
path = "/joke"
price = "10 sat"

[[routes]]
path = "/weather/*"
prices = { GET = "25 sat", POST = "40 sat" }

[[routes]]
methods = ["GET"]
path = "/whole"
price = "3 sat"
settle = "after-end"

[[routes]]
path = "/status/*"
price = "2 sat"
"#;

#[tokio::test]
async fn a_paid_route_is_served_once_paid_over_l402_and_the_upstream_learns_by_whom() {
    let g = start("", ROUTES).await;
    let node = g.gateway.dev_node().await.unwrap();
    let wallet = g.gateway.dev_wallet().await.unwrap();
    let (node_before, wallet_before) = (node.balance_msat(), wallet.balance_msat());

    // Unpaid: 402 with an L402 challenge, and the upstream never asked.
    let unpaid = reqwest::get(g.url("/joke")).await.unwrap();
    assert_eq!(unpaid.status(), 402);
    let challenges: Vec<_> =
        unpaid.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(challenges.iter().any(|c| c.starts_with("L402 ")), "{challenges:?}");
    assert_eq!(g.upstream.count(), 0);

    let client = g.payer().await;
    let answer = client.get(g.url("/joke")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().contains_key("l402-receipt"));
    let seen = g.upstream.last();
    assert_eq!(seen.path, "/joke");
    assert_eq!(seen.headers["x-farebox-rail"], "l402");
    assert_eq!(seen.headers["x-farebox-amount"], "10000");
    assert_eq!(seen.headers["x-farebox-asset"], "msat");
    assert_eq!(seen.headers["x-farebox-reference"].len(), 64, "the payment hash");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the L402 credential stayed at the gateway"
    );
    assert_eq!(node.balance_msat() - node_before, 10_000);
    assert_eq!(wallet_before - wallet.balance_msat(), 10_000);

    // The token is reused: a second request costs nothing more.
    assert_eq!(client.get(g.url("/joke")).send().await.unwrap().status(), 200);
    assert_eq!(node.balance_msat() - node_before, 10_000);

    // Two requests were served for the token, but it was paid for once: revenue is what the
    // node received.
    let m = g.gateway.metrics();
    assert_eq!(
        m.counter("farebox_gateway_paid_requests_total", &[("rail", "l402"), ("route", "/joke")]),
        2
    );
    assert!(g.gateway.flush_payments(Duration::from_secs(10)).await);
    assert_eq!(
        m.counter("farebox_gateway_payments_total", &[("rail", "l402"), ("route", "/joke")]),
        1
    );
    assert_eq!(m.counter("farebox_gateway_revenue_total", &[("route", "/joke")]), 10_000);
    assert!(m.counter("farebox_gateway_payment_required_total", &[("route", "/joke")]) >= 2);
    let text = reqwest::get(g.url("/_farebox/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("farebox_gateway_verification_seconds_count{rail=\"l402\"} 2"), "{text}");
    assert!(text.contains("farebox_gateway_upstream_seconds_count{upstream=\"test\"}"), "{text}");
}

#[tokio::test]
async fn the_payment_counters_show_a_paid_answer_as_soon_as_it_is_served() {
    let g = start("", ROUTES).await;
    let client = g.payer().await;
    assert_eq!(client.get(g.url("/joke")).send().await.unwrap().status(), 200);
    // No flush of the payment log: the counters count the answer as it is given.
    let text = reqwest::get(g.url("/_farebox/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("farebox_gateway_payments_total{rail=\"l402\",route=\"/joke\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "farebox_gateway_revenue_total{rail=\"l402\",route=\"/joke\",asset=\"msat\"} 10000"
    ));
    // The token again: another paid request, not another payment.
    assert_eq!(client.get(g.url("/joke")).send().await.unwrap().status(), 200);
    let m = g.gateway.metrics();
    assert_eq!(m.counter("farebox_gateway_payments_total", &[("route", "/joke")]), 1);
    assert_eq!(m.counter("farebox_gateway_revenue_total", &[("route", "/joke")]), 10_000);
    assert_eq!(m.counter("farebox_gateway_paid_requests_total", &[("route", "/joke")]), 2);
}

#[tokio::test]
async fn per_method_prices_charge_each_method_its_own() {
    let g = start("", ROUTES).await;
    let node = g.gateway.dev_node().await.unwrap();
    let before = node.balance_msat();
    let client = g.payer().await;
    assert_eq!(client.get(g.url("/weather/lisbon")).send().await.unwrap().status(), 200);
    assert_eq!(node.balance_msat() - before, 25_000);
    assert_eq!(client.post(g.url("/weather/lisbon")).send().await.unwrap().status(), 200);
    assert_eq!(g.upstream.last().headers["x-farebox-amount"], "40000");
    assert_eq!(node.balance_msat() - before, 65_000);
    // No price for PUT: no route takes it.
    assert_eq!(
        reqwest::Client::new().put(g.url("/weather/lisbon")).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn a_free_route_is_served_without_payment() {
    let g = start("", ROUTES).await;
    let answer = reqwest::get(g.url("/health")).await.unwrap();
    assert_eq!(answer.status(), 200);
    let seen = g.upstream.last();
    assert!(seen.headers.get("x-farebox-rail").is_none());
    assert_eq!(g.gateway.dev_node().await.unwrap().balance_msat(), 0);
}

#[tokio::test]
async fn a_failed_upstream_answer_settles_nothing_and_the_token_serves_again() {
    let g = start("", ROUTES).await;
    let node = g.gateway.dev_node().await.unwrap();
    let client = g.payer().await;
    // The invoice is paid to get the token, but an answer of 500 settles nothing further and the
    // gateway adds no receipt.
    let answer = client.get(g.url("/status/500")).send().await.unwrap();
    assert_eq!(answer.status(), 500);
    assert!(!answer.headers().contains_key("l402-receipt"));
    assert!(g.gateway.flush_payments(Duration::from_secs(10)).await);
    assert_eq!(
        g.gateway.metrics().counter("farebox_gateway_payments_total", &[("route", "/status/*")]),
        0
    );
    let paid_for_token = node.balance_msat();
    assert_eq!(client.get(g.url("/status/200")).send().await.unwrap().status(), 200);
    assert_eq!(node.balance_msat(), paid_for_token, "the same token serves the next request");
    assert!(g.gateway.flush_payments(Duration::from_secs(10)).await);
    assert_eq!(
        g.gateway.metrics().counter("farebox_gateway_payments_total", &[("route", "/status/*")]),
        1
    );
}

#[tokio::test]
async fn after_end_routes_deliver_whole_bodies_and_receipts() {
    let g = start("", ROUTES).await;
    let client = g.payer().await;
    let answer = client.get(g.url("/whole")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().contains_key("l402-receipt"));
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["path"], "/whole");
}

const FREE_TIER: &str = r#"
[free_tier]
requests = 2
window_secs = 3600

[[routes]]
path = "/joke"
price = "10 sat"
free_tier = true
"#;

#[tokio::test]
async fn a_free_tier_of_n_serves_n_requests_then_asks_for_payment() {
    let g = start("", FREE_TIER).await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let answer = http.get(g.url("/joke")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(g.upstream.last().headers["x-farebox-free-tier"], "1");
    }
    assert_eq!(http.get(g.url("/joke")).send().await.unwrap().status(), 402);
    assert_eq!(g.upstream.count(), 2);
    // Paying still works once the free tier is used up, and is not counted against it.
    let paid = g.payer().await.get(g.url("/joke")).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    assert!(g.upstream.last().headers.get("x-farebox-free-tier").is_none());
    assert_eq!(g.gateway.metrics().counter("farebox_gateway_free_tier_requests_total", &[]), 2);
}

#[tokio::test]
async fn the_free_tier_counts_across_instances_sharing_the_store() {
    let g = start("", FREE_TIER).await;
    // A second gateway on the same SQLite file.
    let store = g.dir.path().join("farebox-gateway.sqlite");
    let text = format!(
        "{}\n[store]\nsqlite = \"{}\"\n{FREE_TIER}",
        common::base_config(g.upstream_addr, ""),
        store.display()
    );
    let other = common::start_with(g.upstream.clone(), g.upstream_addr, &text).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(g.url("/joke")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(other.url("/joke")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(g.url("/joke")).send().await.unwrap().status(), 402);
    assert_eq!(http.get(other.url("/joke")).send().await.unwrap().status(), 402);
}

#[tokio::test]
async fn the_free_tier_identifies_clients_by_the_named_header() {
    let g = start(
        "",
        &FREE_TIER
            .replace("window_secs = 3600", "window_secs = 3600\nclient_header = \"x-client\""),
    )
    .await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(
            http.get(g.url("/joke")).header("x-client", "a").send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        http.get(g.url("/joke")).header("x-client", "a").send().await.unwrap().status(),
        402
    );
    assert_eq!(
        http.get(g.url("/joke")).header("x-client", "b").send().await.unwrap().status(),
        200
    );
    // No header, no identity: no free tier.
    assert_eq!(http.get(g.url("/joke")).send().await.unwrap().status(), 402);
}

#[tokio::test]
async fn a_reload_swaps_routes_keeps_connections_and_refuses_a_bad_file() {
    let g = start("", ROUTES).await;
    let client = g.payer().await;
    assert_eq!(client.get(g.url("/joke")).send().await.unwrap().status(), 200);
    let node = g.gateway.dev_node().await.unwrap();
    let paid = node.balance_msat();

    // A stream that is open across the reloads.
    let sse = reqwest::get(g.url("/sse")).await.unwrap();
    assert_eq!(sse.status(), 404, "no route for /sse yet");
    let base = common::base_config(g.upstream_addr, "");
    let with_sse = format!("{base}\n{ROUTES}\n[[routes]]\npath = \"/sse\"\nfree = true\n");
    g.gateway.reload(g.config(&with_sse).unwrap()).await.unwrap();
    let mut stream = reqwest::get(g.url("/sse")).await.unwrap().bytes_stream();
    use futures_util::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("event 0"));

    // A bad file is refused and the running configuration stays.
    std::fs::write(
        g.dir.path().join("farebox.toml"),
        format!("{base}\n[[routes]]\npath = \"/x\"\nprice = \"1 usd\"\n"),
    )
    .unwrap();
    let refused = g.gateway.reload_from_file().await.unwrap_err();
    assert!(refused.has("routes[0].price"), "{refused}");
    assert_eq!(client.get(g.url("/joke")).send().await.unwrap().status(), 200);

    // A good one: the new route is served, the old token still works, the stream goes on.
    let newer = format!(
        "{base}\n[[routes]]\npath = \"/sse\"\nfree = true\n[[routes]]\npath = \"/joke\"\nprice = \"10 sat\"\n[[routes]]\npath = \"/new\"\nfree = true\n"
    );
    std::fs::write(g.dir.path().join("farebox.toml"), newer).unwrap();
    g.gateway.reload_from_file().await.unwrap();
    assert_eq!(reqwest::get(g.url("/new")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(g.url("/health")).await.unwrap().status(), 404);
    assert_eq!(client.get(g.url("/joke")).send().await.unwrap().status(), 200);
    assert_eq!(node.balance_msat(), paid, "the token bought before the reloads is still good");
    g.upstream.events_received.send_replace(1);
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(&second).unwrap().contains("event 1"));
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_then_stops_accepting() {
    let mut g = start("", "[[routes]]\npath = \"/*\"\nfree = true\n").await;
    // An SSE stream is in flight when the shutdown comes.
    let answer = reqwest::get(g.url("/sse")).await.unwrap();
    let mut stream = answer.bytes_stream();
    use futures_util::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("event 0"));
    g.stop.take().unwrap().send(()).unwrap();
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(g.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the gateway kept accepting after shutdown");
    // The stream in flight is finished, all five events.
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    for i in 1..5u64 {
        g.upstream.events_received.send_replace(i);
        while !text.contains(&format!("event {i}")) {
            let next = stream.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&next).unwrap());
        }
    }
    g.upstream.events_received.send_replace(5);
    assert!(stream.next().await.is_none(), "the stream ends cleanly");
    tokio::time::timeout(Duration::from_secs(10), &mut g.served).await.unwrap().unwrap().unwrap();
}
