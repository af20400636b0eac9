//! The suite catches a server that does not check what it is sent: this one answers 402 with
//! real challenges (a farebox paywall's) to a request without a credential, and serves any
//! request that carries one, paid or not.

mod common;

use std::sync::Arc;

use axum::body::Body;
use farebox_conformance::probe::builtin::{Wallets, probes};
use farebox_conformance::{Level, Outcome, Target};
use farebox_core::{ErrorKind, Money, PaymentError, Price};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::{MppConfig, MppRail};
use farebox_server::{Paywall, PricedRoute};
use farebox_store::MemoryStore;
use http::{Method, Request};

/// Serves `/data`: the paywall's 402 to a request without a credential, and the data to any
/// request with one. Returns the URL.
async fn serve_lax(paywall: Arc<Paywall>) -> String {
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
    url
}

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
    let url = serve_lax(paywall).await;

    let target = Target::new(url.parse().unwrap());
    let report = farebox_conformance::run(&target, &probes(&Wallets::default())).await;
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

/// The session checks catch a server that serves any voucher: it opens nothing, checks no
/// amount, and a "close" it answers leaves the tester's deposit in escrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_server_that_serves_any_voucher_fails_the_session_musts() {
    use farebox_evm::U256;
    use farebox_evm::anvil::Anvil;
    use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;

    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let accounts = anvil.accounts();
    let payer = accounts[1].signer.clone();
    anvil.mint(token, payer.address(), U256::from(1_000_000u64)).await.unwrap();
    let escrow =
        rpc.deploy_session_escrow(&accounts[0].signer, DEFAULT_CLOSE_GRACE_PERIOD).await.unwrap();
    let session = common::usdc_session(&rpc, &accounts[2].signer, escrow, token);
    let price = Price::one(Money::new(session.asset(), 10_000));
    let store = Arc::new(MemoryStore::new());
    let mpp = MppRail::builder(
        MppConfig::new("lax.test", b"a-lax-server-secret-of-32-bytes!!!".to_vec()),
        store.clone(),
    )
    .evm_session(session, store)
    .build()
    .unwrap();
    let paywall = Arc::new(
        Paywall::builder()
            .rail(mpp)
            .route(PricedRoute::new(None, "/data", price).unwrap())
            .build()
            .unwrap(),
    );
    let url = serve_lax(paywall).await;

    let mut target = Target::new(url.parse().unwrap());
    target.rails = vec!["mpp".into()];
    let wallets =
        Wallets { evm: Some(payer.clone()), evm_rpc: Some(rpc.clone()), ..Wallets::default() };
    let report = farebox_conformance::run(&target, &probes(&wallets)).await;
    println!("{}", report.table());
    // Served it is, but with no receipt; and whatever it should refuse it serves.
    assert_eq!(report.get("mpp.session.open").unwrap().outcome, Outcome::Pass);
    for id in [
        "mpp.session.voucher",
        "mpp.session.voucher_equal",
        "mpp.session.voucher_lower",
        "mpp.session.voucher_above_deposit",
        "mpp.session.other_channel",
        "mpp.session.close",
    ] {
        let r = report.get(id).unwrap();
        assert!(matches!(r.outcome, Outcome::Fail(_)), "{id}: {:?}", r.outcome);
    }
    // The close failed on what the chain shows: the deposit is still in escrow.
    assert_eq!(rpc.balance_of(token, escrow).await.unwrap(), U256::from(40_000u64));
    assert_eq!(rpc.balance_of(token, payer.address()).await.unwrap(), U256::from(960_000u64));
}
