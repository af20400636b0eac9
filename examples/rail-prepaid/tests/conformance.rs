//! The conformance suite, with the rail's own probe, against a server selling on the prepaid
//! rail (every check passes) and against a lax one that serves any code it can read (the
//! checks of what it should refuse fail).

use axum::Router;
use axum::response::IntoResponse;
use ed25519_dalek::SigningKey;
use farebox_conformance::{Outcome, Probe, Target, Verdict};
use farebox_core::Asset;
use farebox_rail_prepaid::conformance::{Issuer, PrepaidProbe};
use farebox_rail_prepaid::{CreditCode, PREPAID_RECEIPT};
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};

mod common;

use common::{JOKE, paywalled, serve};

/// The URL of `/joke` on `app`, served.
async fn joke(app: Router) -> reqwest::Url {
    format!("{}/joke", serve(app).await).parse().unwrap()
}

fn probes(seller: &SigningKey) -> Vec<Box<dyn Probe>> {
    let issuer = Issuer { key: seller.clone(), asset: Asset::Bitcoin };
    vec![Box::new(PrepaidProbe::new(Some(issuer)))]
}

const EVERY_CHECK: &[&str] = &[
    "prepaid.challenge",
    "prepaid.challenge.schema",
    "prepaid.problem_json",
    "prepaid.reject.malformed",
    "prepaid.reject.truncated",
    "prepaid.reject.oversized",
    "prepaid.reject.forged",
    "prepaid.reject.expired",
    "prepaid.reject.other_asset",
    "prepaid.paid",
    "prepaid.reuse",
    "prepaid.spent",
    "prepaid.flow.concurrent_copies",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prepaid_rail_passes_every_check_of_its_probe() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let url = joke(paywalled(&seller)).await;
    let report = farebox_conformance::run(&Target::new(url), &probes(&seller)).await;
    println!("{}", report.table());
    assert_eq!(report.verdict(true), Verdict::Pass);
    assert_eq!(report.results.len(), EVERY_CHECK.len());
    for id in EVERY_CHECK {
        let result = report.get(id).unwrap_or_else(|| panic!("{id} did not run"));
        assert_eq!(result.outcome, Outcome::Pass, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sellers_key_the_checks_that_spend_a_code_do_not_run() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let url = joke(paywalled(&seller)).await;
    let someone_else = probes(&SigningKey::from_bytes(&[0x43; 32]));
    let no_key: Vec<Box<dyn Probe>> = vec![Box::new(PrepaidProbe::new(None))];
    for probes in [someone_else, no_key] {
        let report = farebox_conformance::run(&Target::new(url.clone()), &probes).await;
        assert_eq!(report.verdict(false), Verdict::Incomplete, "{}", report.table());
        for id in ["prepaid.paid", "prepaid.reject.expired", "prepaid.flow.concurrent_copies"] {
            assert!(matches!(report.get(id).unwrap().outcome, Outcome::NotRun(_)), "{id}");
        }
        assert_eq!(report.get("prepaid.reject.forged").unwrap().outcome, Outcome::Pass);
    }
}

/// A server that answers 402 like the rail but serves any code it can read, signed by whoever,
/// in any asset, spent or not.
async fn lax(seller: String, headers: HeaderMap) -> axum::response::Response {
    let code = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Prepaid "))
        .and_then(|code| CreditCode::read(code).ok());
    match code {
        Some(code) => {
            let receipt = format!("code={} spent=21000 left=0", code.id_hex());
            ([(PREPAID_RECEIPT.clone(), receipt)], JOKE).into_response()
        }
        None => {
            let challenge = format!(r#"Prepaid amount="21000", currency="sat", seller="{seller}""#);
            let problem = r#"{"type":"about:blank","title":"Payment Required","status":402}"#;
            let headers =
                [(WWW_AUTHENTICATE, challenge), (CONTENT_TYPE, "application/problem+json".into())];
            (StatusCode::PAYMENT_REQUIRED, headers, problem).into_response()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_serves_any_code_fails_what_it_should_refuse() {
    let seller = SigningKey::from_bytes(&[0x42; 32]);
    let seller_hex = hex::encode(seller.verifying_key().as_bytes());
    let app = Router::new().route(
        "/joke",
        axum::routing::get(move |headers: HeaderMap| lax(seller_hex.clone(), headers)),
    );
    let report = farebox_conformance::run(&Target::new(joke(app).await), &probes(&seller)).await;
    println!("{}", report.table());
    assert_eq!(report.verdict(false), Verdict::Fail);
    for id in [
        "prepaid.reject.forged",
        "prepaid.reject.expired",
        "prepaid.reject.other_asset",
        "prepaid.spent",
        "prepaid.flow.concurrent_copies",
    ] {
        assert!(matches!(report.get(id).unwrap().outcome, Outcome::Fail(_)), "{id}");
    }
    // What it does right still passes: the suite tells the one from the other.
    for id in ["prepaid.challenge", "prepaid.reject.malformed", "prepaid.paid"] {
        assert_eq!(report.get(id).unwrap().outcome, Outcome::Pass, "{id}");
    }
}
