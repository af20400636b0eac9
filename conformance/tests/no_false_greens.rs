//! The suite says green only when it checked what it claims: a URL that is not priced, a rail
//! that is not offered, checks that could not run, checks whose prerequisite failed and
//! refusals for some other reason than the rule under test never end in a pass.

use std::sync::Arc;

use axum::body::Body;
use farebox_conformance::probe::builtin::{Wallets, probes};
use farebox_conformance::{Outcome, Target, Verdict};
use farebox_core::{Money, Price};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::{MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::{HeaderValue, Request, StatusCode};
use serde_json::json;

/// Serves `app`; the URL of `path` on it.
async fn serve(app: axum::Router, path: &str) -> reqwest::Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url.parse().unwrap()
}

/// A farebox server charging 10 sat on L402 and MPP (Lightning) at `/data`, and its node.
async fn lightning_server(network: &DevNetwork) -> (reqwest::Url, Arc<DevNode>) {
    let node = Arc::new(DevNode::random(network, 0));
    let l402 = L402Rail::new(
        L402Config::new("nfg", Arc::new(DerivedRootKeys::new(&[3; 32]).unwrap())),
        node.clone(),
    )
    .unwrap();
    let mpp = MppRail::new(
        MppConfig::new("nfg.test", b"a-no-false-greens-secret-32-bytes!".to_vec()),
        node.clone(),
        Arc::new(MemoryStore::new()),
    )
    .unwrap();
    let paywall = Paywall::builder()
        .rail(l402)
        .rail(mpp)
        .route(PricedRoute::new(None, "/data", Price::one(Money::sats(10))).unwrap())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .route("/free", axum::routing::get(|| async { "free" }))
        .layer(PaywallLayer::new(paywall));
    (serve(app, "/data").await, node)
}

fn with_wallet(wallet: Arc<DevNode>) -> Wallets {
    Wallets { lightning: Some(wallet), ..Wallets::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_does_not_answer_402_fails_the_run() {
    let network = DevNetwork::new();
    let (url, _) = lightning_server(&network).await;
    let free = url.join("/free").unwrap();
    let report = farebox_conformance::run(&Target::new(free), &probes(&Wallets::default())).await;
    assert_eq!(report.verdict(false), Verdict::Error, "{}", report.table());
    assert_ne!(report.verdict(false).exit_status(), 0);
    assert!(report.results.is_empty(), "nothing was checked, so nothing is reported as checked");
    assert!(report.to_junit().contains("<error message="), "CI sees an error, not an empty suite");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["verdict"], "error");
    // Nor does a URL where nothing answers.
    let nothing = "http://127.0.0.1:9/data".parse().unwrap();
    let report =
        farebox_conformance::run(&Target::new(nothing), &probes(&Wallets::default())).await;
    assert_eq!(report.verdict(false), Verdict::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rail_the_server_does_not_offer_fails_the_run() {
    let network = DevNetwork::new();
    let (url, _) = lightning_server(&network).await;
    let mut target = Target::new(url);
    target.rails = vec!["x402".into()];
    let builtin = || probes(&Wallets::default());
    let report = farebox_conformance::run(&target, &builtin()).await;
    assert_eq!(report.verdict(false), Verdict::Error, "{}", report.table());
    assert!(report.results.is_empty());
    // A rail the suite does not know is as much an error.
    target.rails = vec!["bitcoin".into()];
    assert_eq!(farebox_conformance::run(&target, &builtin()).await.verdict(false), Verdict::Error);
    // One it offers runs.
    target.rails = vec!["l402".into()];
    let report = farebox_conformance::run(&target, &builtin()).await;
    assert_ne!(report.verdict(false), Verdict::Error);
    assert!(report.results.iter().all(|r| r.rail == "l402") && !report.results.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_checks_that_could_not_run_make_the_verdict_incomplete() {
    let network = DevNetwork::new();
    let (url, node) = lightning_server(&network).await;
    let report = farebox_conformance::run(&Target::new(url), &probes(&Wallets::default())).await;
    println!("{}", report.table());
    assert_eq!(report.verdict(false), Verdict::Incomplete);
    assert_eq!(report.verdict(false).exit_status(), 3);
    for id in ["l402.paid", "mpp.paid", "mpp.flow.concurrent_copies"] {
        assert!(matches!(report.get(id).unwrap().outcome, Outcome::NotRun(_)), "{id}");
    }
    // What builds on them is not passed either.
    assert!(matches!(report.get("mpp.replay").unwrap().outcome, Outcome::Inconclusive(_)));
    assert!(node.settled_invoices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_penniless_wallet_blames_the_wallet_and_replay_is_inconclusive() {
    let network = DevNetwork::new();
    let (url, node) = lightning_server(&network).await;
    let penniless = Arc::new(DevNode::random(&network, 0));
    let report =
        farebox_conformance::run(&Target::new(url), &probes(&with_wallet(penniless))).await;
    println!("{}", report.table());
    assert_eq!(report.verdict(false), Verdict::Incomplete, "the server did nothing wrong");
    for (paid, replay) in [("l402.paid", "l402.reuse"), ("mpp.paid", "mpp.replay")] {
        assert!(
            matches!(report.get(paid).unwrap().outcome, Outcome::Inconclusive(_)),
            "{paid}: the wallet could not pay, which says nothing of the server"
        );
        assert!(
            matches!(report.get(replay).unwrap().outcome, Outcome::Inconclusive(_)),
            "{replay}: {:?}",
            report.get(replay).unwrap().outcome
        );
    }
    assert!(node.settled_invoices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_checks_spend_no_more_than_max_price() {
    let network = DevNetwork::new();
    let (url, node) = lightning_server(&network).await;
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let target = Target::new(url);
    let mut wallets = with_wallet(wallet);
    wallets.max_price.set("9sat").unwrap();
    let quotes = farebox_conformance::plan(&target, &probes(&wallets)).await.unwrap();
    // L402's `paid`; MPP's `paid` and the new payment its race of copies answers.
    assert_eq!(
        quotes.len(),
        3,
        "the run says up front what each paying check would pay: {quotes:?}"
    );
    assert!(quotes.iter().all(|q| q.amount == 10_000 && !q.within(&wallets.max_price)));
    let report = farebox_conformance::run(&target, &probes(&wallets)).await;
    println!("{}", report.table());
    assert!(node.settled_invoices().is_empty(), "nothing paid over the cap");
    for id in ["l402.paid", "mpp.paid", "mpp.flow.concurrent_copies"] {
        assert!(matches!(report.get(id).unwrap().outcome, Outcome::NotRun(_)), "{id}");
    }
    assert_eq!(report.verdict(false), Verdict::Incomplete);

    // At the price, each paying check pays once.
    wallets.max_price.set("10sat").unwrap();
    let report = farebox_conformance::run(&target, &probes(&wallets)).await;
    assert_eq!(report.verdict(true), Verdict::Pass, "{}", report.table());
    assert_eq!(node.settled_invoices().len(), 3);
    let paid: u64 = node.settled_invoices().iter().map(|i| i.amount_msat).sum();
    assert_eq!(paid, 30_000);
}

/// An x402 server that refuses every payment with the reason `code`.
async fn x402_refusing_with(code: &'static str) -> reqwest::Url {
    x402_refusing_and_keeping(code, Arc::default()).await
}

/// [`x402_refusing_with`], keeping every payment header it is sent in `kept`.
async fn x402_refusing_and_keeping(
    code: &'static str,
    kept: Arc<std::sync::Mutex<Vec<String>>>,
) -> reqwest::Url {
    let required = |error: &str| {
        let body = json!({
            "x402Version": 2, "error": error,
            "resource": {"url": "http://127.0.0.1/data"},
            "accepts": [{"scheme": "exact", "network": "eip155:84532", "amount": "10000",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}}]
        });
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(body.to_string())
    };
    let app = axum::Router::new().route(
        "/data",
        axum::routing::get(move |request: Request<Body>| async move {
            let payment = request.headers().get("payment-signature");
            if let Some(p) = payment.and_then(|p| p.to_str().ok()) {
                kept.lock().unwrap().push(p.to_owned());
            }
            let error = if payment.is_some() { code } else { "" };
            let mut response = http::Response::new(Body::from("{}"));
            *response.status_mut() = StatusCode::PAYMENT_REQUIRED;
            let header = HeaderValue::from_str(&required(error)).unwrap();
            response.headers_mut().insert("payment-required", header);
            response
        }),
    );
    serve(app, "/data").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_for_another_reason_than_the_rule_proves_nothing() {
    // Refused for want of funds: the refusal checks prove nothing, and say so.
    let url = x402_refusing_with("insufficient_funds").await;
    let report = farebox_conformance::run(&Target::new(url), &probes(&Wallets::default())).await;
    println!("{}", report.table());
    for id in ["x402.reject.unknown_version", "x402.reject.wrong_recipient", "x402.reject.expired"]
    {
        let r = report.get(id).unwrap();
        assert!(matches!(r.outcome, Outcome::Inconclusive(_)), "{id}: {:?}", r.outcome);
        assert_eq!(r.reason.as_deref(), Some("insufficient_funds"), "the server's reason is shown");
    }
    assert_eq!(report.verdict(false), Verdict::Incomplete);

    // Refused for a reason that is another rule's: only that rule's check passes.
    let url = x402_refusing_with("invalid_exact_evm_payload_recipient_mismatch").await;
    let report = farebox_conformance::run(&Target::new(url), &probes(&Wallets::default())).await;
    assert_eq!(report.get("x402.reject.wrong_recipient").unwrap().outcome, Outcome::Pass);
    for id in ["x402.reject.unknown_version", "x402.reject.expired", "x402.reject.wrong_amount"] {
        assert!(matches!(report.get(id).unwrap().outcome, Outcome::Fail(_)), "{id}");
    }
    assert_eq!(report.verdict(false), Verdict::Fail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_carries_every_exchange_with_secrets_redacted() {
    let network = DevNetwork::new();
    let (url, node) = lightning_server(&network).await;
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let report = farebox_conformance::run(&Target::new(url), &probes(&with_wallet(wallet))).await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let result = |id: &str| {
        json["results"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone()
    };
    // The first request: no credential, a 402 with its challenges.
    let discover = &result("l402.discover")["exchanges"][0];
    assert_eq!(discover["status"], 402);
    let challenge = discover["response_headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "www-authenticate" && h[1].as_str().unwrap().starts_with("L402 "));
    assert!(challenge, "{discover}");
    // The paid request: sent with its credential, answered 200 with the body.
    let paid = &result("l402.paid")["exchanges"][0];
    assert_eq!(paid["status"], 200);
    assert_eq!(paid["response_body"], "the data");
    assert_eq!(paid["request_headers"][0][0], "authorization");
    // A refusal: the answer's body is there to read.
    let refused = &result("mpp.reject.malformed")["exchanges"][0];
    assert!(refused["status"].as_u64().unwrap() >= 400);
    assert!(!refused["response_body"].as_str().unwrap().is_empty());
    // No credential that paid is in the report, in any form.
    let text = report.to_json() + &report.table_with(true);
    for invoice in node.settled_invoices() {
        let preimage = hex::encode(invoice.preimage);
        assert!(!text.contains(&preimage), "a preimage is in the report");
    }
    assert!(report.table_with(true).contains("← 402"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_payments_name_addresses_as_reference_clients_do() {
    use base64::Engine as _;
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = x402_refusing_and_keeping("invalid_payload", kept.clone()).await;
    farebox_conformance::run(&Target::new(url), &probes(&Wallets::default())).await;
    let payloads: Vec<serde_json::Value> = kept
        .lock()
        .unwrap()
        .iter()
        .filter_map(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    let mut addresses = 0;
    for p in &payloads {
        let Some(auth) = p["payload"]["authorization"].as_object() else { continue };
        for field in ["from", "to"] {
            let text = auth[field].as_str().unwrap();
            let address: farebox_evm::Address = text.parse().unwrap();
            assert_eq!(text, address.to_checksum(None), "{field} is EIP-55 checksummed");
            addresses += 1;
        }
    }
    assert!(addresses >= 16, "the signed refusals were sent: {addresses}");
}

/// A probe that recognises the server's L402 challenge but skips its one check, as a broken
/// outside probe might.
struct Quiet;

#[async_trait::async_trait]
impl farebox_conformance::probe::Probe for Quiet {
    fn rail(&self) -> &'static str {
        "quiet"
    }
    fn checks(&self) -> (&str, &str) {
        let check = r#"[{"id":"quiet.forged","rail":"quiet","level":"MUST","spec":"s","title":"t","send":"forged","expect":{"status":[402]}}]"#;
        ("quiet.json", check)
    }
    fn attempt(
        &self,
        send: &farebox_conformance::check::Attempt,
    ) -> Option<farebox_conformance::check::AttemptKind> {
        (send == "forged").then_some(Default::default())
    }
    fn has_challenge(&self, exchange: &farebox_conformance::Exchange) -> bool {
        exchange
            .headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.starts_with("L402")))
    }
    fn artifacts(
        &self,
        _: &farebox_conformance::Exchange,
        _: &str,
    ) -> Result<Vec<farebox_conformance::probe::Artifact>, String> {
        Ok(Vec::new())
    }
    fn receipt(
        &self,
        _: &farebox_conformance::Exchange,
    ) -> Option<Result<farebox_conformance::probe::Artifact, String>> {
        None
    }
    fn assert(&self, _: &str, _: &farebox_conformance::Exchange) -> Result<(), String> {
        Ok(())
    }
    fn quote(
        &self,
        _: &farebox_conformance::check::Attempt,
        _: &farebox_conformance::Exchange,
    ) -> Option<farebox_conformance::probe::Quote> {
        None
    }
    fn stated_reason(&self, _: &farebox_conformance::Exchange) -> Option<String> {
        None
    }
    async fn credential(
        &self,
        _: &farebox_conformance::check::Attempt,
        _: &farebox_conformance::Exchange,
    ) -> Result<farebox_conformance::probe::Credential, farebox_conformance::probe::Unable> {
        Err(farebox_conformance::probe::Unable::Skip("nothing to send".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rail_the_server_offers_whose_every_check_was_skipped_is_no_pass() {
    let network = DevNetwork::new();
    let (url, _) = lightning_server(&network).await;
    let probes: Vec<Box<dyn farebox_conformance::probe::Probe>> = vec![Box::new(Quiet)];
    let report = farebox_conformance::run(&Target::new(url), &probes).await;
    assert!(matches!(report.results[0].outcome, Outcome::Skip(_)));
    assert_eq!(report.verdict(false), Verdict::Error, "{:?}", report.error);
}

/// In front of `upstream`: a request whose head is over 16 KiB is closed unanswered (as Node
/// does), or, with `hang`, kept open unanswered; any other goes through, one per connection.
async fn closing_oversized_requests(upstream: reqwest::Url, hang: bool) -> reqwest::Url {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to = upstream.socket_addrs(|| None).unwrap()[0];
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    if head.len() > 16 * 1024 {
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        return; // closed with the rest of the request unread: a reset
                    }
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                // One request per connection, so that every request's head is looked at here.
                let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
                head.splice(line_end..line_end, b"Connection: close\r\n".iter().copied());
                let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut server, &head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let mut url = upstream.clone();
    url.set_port(Some(addr.port())).unwrap();
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_on_an_oversized_credential_refuses_it_and_one_that_hangs_does_not() {
    let network = DevNetwork::new();
    let (url, _) = lightning_server(&network).await;
    for (hang, passes) in [(false, true), (true, false)] {
        let mut target = Target::new(closing_oversized_requests(url.clone(), hang).await);
        target.rails = vec!["l402".into()];
        target.timeout = std::time::Duration::from_secs(2);
        let report = farebox_conformance::run(&target, &probes(&Wallets::default())).await;
        let outcome = &report.get("l402.reject.oversized").unwrap().outcome;
        assert_eq!(matches!(outcome, Outcome::Pass), passes, "hang: {hang}: {outcome:?}");
        // The other checks saw the server through the front.
        assert!(matches!(report.get("l402.challenge.invoice").unwrap().outcome, Outcome::Pass));
    }
}
