//! The suite catches a server that does not check what it is sent: this one answers 402 with
//! real challenges (a farebox paywall's) to a request without a credential, and serves any
//! request that carries one, paid or not.

use std::sync::Arc;

use axum::body::Body;
use farebox_conformance::{Level, Outcome, Target};
use farebox_core::{ErrorKind, Money, PaymentError, Price};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::{MppConfig, MppRail};
use farebox_server::{Paywall, PricedRoute};
use farebox_store::MemoryStore;
use http::{Method, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_serves_any_credential_fails_the_musts() {
    let network = DevNetwork::new();
    let node = Arc::new(DevNode::random(&network, 0));
    let l402 = L402Rail::new(
        L402Config::new("lax", Arc::new(DerivedRootKeys::new(&[1; 32]).unwrap())),
        node.clone(),
    )
    .unwrap();
    let mpp = MppRail::new(
        MppConfig::new("lax.test", b"a-lax-server-secret-of-32-bytes!!!".to_vec()),
        node,
        Arc::new(MemoryStore::new()),
    )
    .unwrap();
    let paywall = Arc::new(
        Paywall::builder()
            .rail(l402)
            .rail(mpp)
            .route(PricedRoute::new(None, "/data", Price::one(Money::sats(10))).unwrap())
            .build()
            .unwrap(),
    );
    let app = axum::Router::new().route(
        "/data",
        axum::routing::get(move |request: Request<Body>| {
            let paywall = paywall.clone();
            async move {
                if request.headers().contains_key(http::header::AUTHORIZATION) {
                    return http::Response::new(Body::from("served without checking"));
                }
                let resource = paywall.resource_for(&Method::GET, "/data").unwrap();
                let why = PaymentError::new(ErrorKind::PaymentRequired, "payment_required", "pay");
                paywall.refusal(&resource, &why, None).await.map(Body::from)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/data", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let report = farebox_conformance::run(&Target::new(url.parse().unwrap())).await;
    println!("{}", report.table());
    assert!(!report.passed(false), "a server that checks nothing must fail");
    for id in [
        "l402.reject.malformed",
        "l402.reject.wrong_preimage",
        "mpp.reject.malformed",
        "mpp.reject.tampered_id",
        "mpp.reject.forged",
    ] {
        let r = report.get(id).unwrap();
        assert_eq!(r.level, Level::MUST);
        assert!(
            matches!(&r.outcome, Outcome::Fail(why) if why.contains("status 200")),
            "{id}: {:?}",
            r.outcome
        );
    }
    // What it does right still passes; what needs a wallet is skipped, saying so.
    assert_eq!(report.get("l402.discover").unwrap().outcome, Outcome::Pass);
    assert_eq!(report.get("mpp.challenge.schema").unwrap().outcome, Outcome::Pass);
    for id in ["l402.paid", "l402.reject.tampered_macaroon"] {
        assert!(
            matches!(&report.get(id).unwrap().outcome, Outcome::NotRun(why) if why.contains("wallet")),
            "{id}: without a wallet the tampered macaroon's preimage would be wrong too"
        );
    }
    // No x402 offered: its checks are skipped as a whole.
    assert!(
        matches!(&report.get("x402.discover").unwrap().outcome, Outcome::Skip(why) if why.contains("no x402"))
    );
}
