//! Proxying through a real gateway on loopback: headers, streaming bodies, SSE, WebSocket,
//! timeouts and unreachable upstreams. What is asserted is what the upstream received and what
//! the client got, never how long anything took.

mod common;

use std::time::Duration;

use common::{LARGE, MIB, chunk, raw_request, start};
use futures_util::{SinkExt, StreamExt};

const FREE_ALL: &str = r#"
[[routes]]
path = "/*"
free = true
"#;

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross_the_gateway_in_either_direction() {
    let g = start("", FREE_ALL).await;
    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: close, x-hop\r\nx-hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic abc\r\nTE: trailers\r\nx-end-to-end: kept\r\n\r\n",
        g.addr
    );
    let answer = raw_request(g.addr, &raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = g.upstream.last();
    assert_eq!(seen.headers.get("x-end-to-end").unwrap(), "kept");
    for gone in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(seen.headers.get(gone).is_none(), "{gone} reached the upstream");
    }

    // And back: the upstream's Connection-named field stays at the gateway.
    let raw = format!("GET /hop HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", g.addr);
    let answer = raw_request(g.addr, &raw).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-end-to-end: kept"), "{answer}");
    assert!(!answer.contains("x-up-hop"), "{answer}");
}

#[tokio::test]
async fn forwarded_headers_are_the_gateways_own_unless_the_peer_is_trusted() {
    let g = start("", FREE_ALL).await;
    let http = reqwest::Client::new();
    let host = g.addr.to_string();
    http.get(g.url("/echo"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    let seen = g.upstream.last();
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), host.as_str());
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert!(seen.headers.get("forwarded").is_none());
    assert_eq!(seen.headers.get("host").unwrap(), g.upstream_addr.to_string().as_str());

    // Behind a trusted proxy, its values are kept and the chain grows.
    let trusted = common::base_config(g.upstream_addr, "").replace(
        "shutdown_grace_secs = 5",
        "shutdown_grace_secs = 5\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let t =
        common::start_with(g.upstream.clone(), g.upstream_addr, &format!("{trusted}\n{FREE_ALL}"))
            .await;
    http.get(t.url("/echo"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "api.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = t.upstream.last();
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "6.6.6.6, 127.0.0.1");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), "api.example");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
}

#[tokio::test]
async fn payment_credentials_stay_at_the_gateway_and_the_upstreams_bearer_passes() {
    let g = start("", FREE_ALL).await;
    let http = reqwest::Client::new();
    http.get(g.url("/echo")).header("authorization", "Bearer upstream-key").send().await.unwrap();
    assert_eq!(g.upstream.last().headers.get("authorization").unwrap(), "Bearer upstream-key");

    http.get(g.url("/echo"))
        .header("authorization", "L402 bWFjYXJvb24=:00")
        .header("x-farebox-rail", "l402")
        .header("x-farebox-amount", "1000000")
        .send()
        .await
        .unwrap();
    let seen = g.upstream.last();
    assert!(seen.headers.get("authorization").is_none(), "an L402 credential reached the upstream");
    assert!(
        seen.headers.get("x-farebox-rail").is_none(),
        "a client forged the gateway's payment header"
    );
    assert!(seen.headers.get("x-farebox-amount").is_none());
}

#[tokio::test]
async fn a_64_mib_upload_streams_through_to_the_upstream() {
    let g = start("max_request_bytes = 100000000", FREE_ALL).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let send = tokio::spawn(reqwest::Client::new().post(g.url("/upload")).body(body).send());
    let mut uploaded = g.upstream.uploaded.subscribe();
    for i in 0..LARGE / MIB {
        tx.send(Ok(chunk(i))).await.unwrap();
        if i == 0 {
            // The upstream reads the first MiB before the client has sent the second: the
            // gateway forwards as it receives, it does not collect the body first.
            tokio::time::timeout(Duration::from_secs(30), uploaded.wait_for(|n| *n >= MIB))
                .await
                .expect("the first MiB reached the upstream before the rest was sent")
                .unwrap();
        }
    }
    drop(tx);
    let answer = send.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let seen = g.upstream.last();
    assert_eq!(seen.body_len, LARGE);
    assert!(seen.body_is_pattern, "the upstream got the bytes that were sent, in order");
}

#[tokio::test]
async fn a_64_mib_download_streams_to_the_client() {
    let g = start("", FREE_ALL).await;
    let answer = reqwest::get(g.url("/download")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.content_length(), Some(LARGE));
    let mut stream = answer.bytes_stream();
    let mut check = common::PatternCheck::default();
    // The upstream sends each MiB only once the client has the previous one.
    while let Some(bytes) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("each MiB arrives before the next is produced")
    {
        check.feed(&bytes.unwrap());
        g.upstream.downloaded.send_replace(check.len());
    }
    assert_eq!(check.len(), LARGE);
    assert!(check.ok, "the client got the bytes the upstream sent, in order");
}

#[tokio::test]
async fn too_large_a_request_body_is_refused_with_413() {
    let g = start("max_request_bytes = 1024", FREE_ALL).await;
    let answer =
        reqwest::Client::new().post(g.url("/upload")).body(vec![1u8; 4096]).send().await.unwrap();
    assert_eq!(answer.status(), 413);
    assert_eq!(g.upstream.count(), 0, "the upstream never saw the request");
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let g = start("", FREE_ALL).await;
    let answer = reqwest::get(g.url("/sse")).await.unwrap();
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let mut stream = answer.bytes_stream();
    let mut text = String::new();
    for i in 0..5u64 {
        // Event i+1 is only produced after event i was received here.
        while !text.contains(&format!("data: event {i}\n\n")) {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("the event arrives on its own")
                .expect("the stream is still open")
                .unwrap();
            text.push_str(std::str::from_utf8(&next).unwrap());
        }
        g.upstream.events_received.send_replace(i + 1);
    }
    assert_eq!(text.matches("data: event").count(), 5);
}

#[tokio::test]
async fn websocket_frames_pass_both_ways() {
    // A WebSocket echo upstream.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let reply = format!("echo: {}", msg.into_text().unwrap());
                        ws.send(reply.into()).await.unwrap();
                    }
                }
            });
        }
    });
    let g = start(
        &format!("\n[upstreams.ws]\nurl = \"http://{ws_addr}\"\n"),
        r#"
[[routes]]
path = "/ws"
upstream = "ws"
free = true

[[routes]]
path = "/paid-ws"
upstream = "ws"
price = "5 sat"
"#,
    )
    .await;
    let url = format!("ws://{}/ws", g.addr);
    let (mut ws, answer) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(answer.status(), 101);
    for i in 0..3 {
        ws.send(format!("hello {i}").into()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: hello {i}"));
    }
    ws.close(None).await.unwrap();

    // A priced WebSocket route asks for payment before any upgrade.
    let err =
        tokio_tungstenite::connect_async(format!("ws://{}/paid-ws", g.addr)).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 402),
        other => panic!("expected a 402, got {other}"),
    }
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_a_504() {
    let g = start("response_timeout_ms = 300", FREE_ALL).await;
    let answer = reqwest::get(g.url("/slow")).await.unwrap();
    assert_eq!(answer.status(), 504);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], 504);
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_502_and_not_ready() {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let upstream = common::Upstream::default();
    let text = format!("{}\n{FREE_ALL}", common::base_config(closed, ""));
    let g = common::start_with(upstream, closed, &text).await;
    let answer = reqwest::get(g.url("/anything")).await.unwrap();
    assert_eq!(answer.status(), 502);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");

    let ready = reqwest::get(g.url("/_farebox/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    let upstream =
        body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "upstream:test").unwrap();
    assert_eq!(upstream["ok"], false);
    assert_eq!(reqwest::get(g.url("/_farebox/healthz")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn non_canonical_paths_are_refused_before_routing() {
    let g = start("", FREE_ALL).await;
    for path in ["/a/../b", "//b", "/%61"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", g.addr);
        let answer = raw_request(g.addr, &raw).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn requests_no_route_takes_are_refused_not_served() {
    let g = start(
        "",
        r#"
[[routes]]
path = "/open"
free = true
"#,
    )
    .await;
    assert_eq!(reqwest::get(g.url("/open")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(g.url("/closed")).await.unwrap().status(), 404);
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn ops_endpoints_can_live_on_a_listener_of_their_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let upstream = common::Upstream::default();
    let upstream_addr = common::serve_router(common::upstream_router(upstream.clone())).await;
    let text = format!(
        "{}\n[ops]\nlisten = \"127.0.0.1:{port}\"\n{FREE_ALL}",
        common::base_config(upstream_addr, "")
    );
    let g = common::start_with(upstream, upstream_addr, &text).await;
    // On the main listener the prefix is an ordinary path, proxied like any other.
    let main = reqwest::get(g.url("/_farebox/metrics")).await.unwrap();
    assert_eq!(main.status(), 200);
    assert_eq!(g.upstream.last().path, "/_farebox/metrics");
    let mut ops = None;
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            ops = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ops = ops.expect("the ops listener answers");
    assert_eq!(ops.status(), 200);
    assert!(
        ops.text()
            .await
            .unwrap()
            .contains("farebox_gateway_requests_total{route=\"/*\",status=\"200\"} 1")
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// A raw HTTP/1.1 upstream that answers `ok` to every request and counts its connections;
/// with `close_after_answer` it closes each connection after its first answer, without saying
/// so (as an upstream whose keep-alive timeout ran out does), and reports each close.
async fn counting_upstream(
    close_after_answer: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Bodiless requests: each ends at its blank line.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if close_after_answer {
                            drop(stream);
                            let _ = closed.send(());
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections, closes)
}

#[tokio::test]
async fn a_client_connections_requests_share_one_upstream_connection() {
    use std::sync::atomic::Ordering;
    let (upstream_addr, connections, _) = counting_upstream(false).await;
    let text = format!("{}\n{FREE_ALL}", common::base_config(upstream_addr, ""));
    let g = common::start_with(common::Upstream::default(), upstream_addr, &text).await;
    let (one, two) = (reqwest::Client::new(), reqwest::Client::new());
    for _ in 0..5 {
        assert_eq!(one.get(g.url("/x")).send().await.unwrap().text().await.unwrap(), "ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one client connection, one upstream one");
    for _ in 0..5 {
        assert_eq!(two.get(g.url("/y")).send().await.unwrap().text().await.unwrap(), "ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2, "a second client connection has its own");
}

#[tokio::test]
async fn an_upstream_that_closed_the_kept_connection_gets_the_next_request_on_a_new_one() {
    let (upstream_addr, _, mut closes) = counting_upstream(true).await;
    let text = format!("{}\n{FREE_ALL}", common::base_config(upstream_addr, ""));
    let g = common::start_with(common::Upstream::default(), upstream_addr, &text).await;
    let client = reqwest::Client::new();
    for i in 0..3 {
        let answer = client.get(g.url("/x")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "request {i}");
        assert_eq!(answer.text().await.unwrap(), "ok");
        // The upstream has closed the connection that answered before the next request comes.
        closes.recv().await.unwrap();
    }
}
