//! The flow checks (a paid credential on another route or query, a race of copies of one
//! payment, another realm, the discovery document) pass on a server that remembers what it was
//! paid and fail on one that forgets: the same farebox MPP rail, once with one replay store for
//! the whole server and once with a new store for every request.

use std::sync::Arc;

use axum::body::Body;
use farebox_conformance::probe::builtin::{Wallets, probes};
use farebox_conformance::{Outcome, Target};
use farebox_core::{Money, Price};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::{MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::Request;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

/// A paywall charging 10 sat for `/data` and 20 sat for `/other`, in MPP Lightning charges
/// paid to `node`, its replays remembered in `store`.
fn paywall(node: &Arc<DevNode>, store: Arc<MemoryStore>) -> Paywall {
    let mpp = MppRail::new(
        MppConfig::new("flows.test", b"a-flows-test-secret-of-32-bytes!!!".to_vec()),
        node.clone(),
        store,
    )
    .unwrap();
    Paywall::builder()
        .rail(mpp)
        .route(PricedRoute::new(None, "/data", Price::one(Money::sats(10))).unwrap())
        .route(PricedRoute::new(None, "/other", Price::one(Money::sats(20))).unwrap())
        .build()
        .unwrap()
}

/// The discovery document: both routes, each with its offer and, when `with_402`, the 402
/// the draft requires of a payable operation.
fn openapi(with_402: bool) -> Value {
    let op = |amount: &str| {
        let mut responses = json!({"200": {"description": "the data"}});
        if with_402 {
            responses["402"] = json!({"description": "Payment Required"});
        }
        json!({"get": {
            "x-payment-info": {"offers": [{"intent": "charge", "method": "lightning", "amount": amount}]},
            "responses": responses,
        }})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "flows", "version": "1"},
        "paths": {"/data": op("10"), "/other": op("20")},
    })
}

#[derive(Clone, Copy)]
enum Memory {
    /// One replay store for every request, as a server must.
    Remembers,
    /// A new replay store for every request: every credential looks new.
    Forgets,
}

/// Serves `/data` and `/other` behind the paywall, and `/openapi.json`; the URL of `/data`.
async fn serve(node: Arc<DevNode>, memory: Memory, doc: Value) -> reqwest::Url {
    let shared = Arc::new(MemoryStore::new());
    let data = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("the data")))
    });
    let app = axum::Router::new()
        .route("/openapi.json", axum::routing::get(move || async move { axum::Json(doc) }))
        .fallback(move |request: Request<Body>| {
            let store = match memory {
                Memory::Remembers => shared.clone(),
                Memory::Forgets => Arc::new(MemoryStore::new()),
            };
            let paywalled = PaywallLayer::new(paywall(&node, store)).layer(data);
            async move { paywalled.oneshot(request).await.unwrap() }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/data", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url.parse().unwrap()
}

async fn run(memory: Memory, doc: Value) -> (farebox_conformance::Report, Arc<DevNode>) {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::random(&network, 0));
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let url = serve(server_node.clone(), memory, doc).await;
    let wallets = Wallets { lightning: Some(wallet), ..Wallets::default() };
    let report = farebox_conformance::run(&Target::new(url), &probes(&wallets)).await;
    println!("{}", report.table());
    (report, server_node)
}

fn outcome<'a>(report: &'a farebox_conformance::Report, id: &str) -> &'a Outcome {
    &report.get(id).unwrap_or_else(|| panic!("no check {id}")).outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_pass_on_a_server_that_remembers_what_it_was_paid() {
    let (report, node) = run(Memory::Remembers, openapi(true)).await;
    for id in [
        "mpp.paid",
        "mpp.replay",
        "mpp.reject.other_realm",
        "mpp.flow.replay_changed_query",
        // The other route comes from the discovery document: no --other-url was given.
        "mpp.flow.replay_other_route",
        "mpp.flow.cross_route",
        "mpp.flow.concurrent_copies",
        "mpp.discovery.openapi",
    ] {
        assert_eq!(outcome(&report, id), &Outcome::Pass, "{id}");
    }
    assert!(
        matches!(outcome(&report, "mpp.accept_payment"), Outcome::Skip(_)),
        "one kind of offer: nothing to prefer"
    );
    assert!(report.passed(true), "{}", report.table());
    // What was paid: `paid`, one new payment for the race (served once) and one for the
    // cross-route check (refused on the other route, but a Lightning proof is paid up front).
    assert_eq!(node.settled_invoices().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgets_what_it_was_paid_fails_the_replays_and_the_race() {
    let (report, _node) = run(Memory::Forgets, openapi(false)).await;
    for id in ["mpp.replay", "mpp.flow.replay_changed_query"] {
        assert!(
            matches!(outcome(&report, id), Outcome::Fail(why) if why.contains("status 200")),
            "{id}: {:?}",
            outcome(&report, id)
        );
    }
    assert!(
        matches!(outcome(&report, "mpp.flow.concurrent_copies"), Outcome::Fail(why) if why.contains("8 of 8")),
        "{:?}",
        outcome(&report, "mpp.flow.concurrent_copies")
    );
    // The route binding holds even without a memory: the 10 sat challenge does not buy `/other`.
    assert_eq!(outcome(&report, "mpp.flow.replay_other_route"), &Outcome::Pass);
    // A payable operation without its 402 response.
    assert!(matches!(outcome(&report, "mpp.discovery.openapi"), Outcome::Fail(_)));
    assert!(!report.passed(false));
}
