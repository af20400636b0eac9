//! What the x402 rail and facilitator emit validates against `specs/schemas/x402` (and the 402
//! body against `problem-details`), so the schemas cannot drift from the code:
//!
//! - behind the paywall with a scripted facilitator: the v2 `PAYMENT-REQUIRED`, the v1 body, the
//!   payments a client builds from them, and every `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`
//!   the rail writes (settled, reverted, pending);
//! - every reason code in a `/verify` and `/settle` answer, in both versions' spellings;
//! - the facilitator's HTTP API on a real anvil: `/supported`, `/verify` and `/settle` bodies for
//!   real signed v1 and v2 payments, and the refusal of a replay.

#[path = "../../../specs/schemas/harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use farebox_core::{Asset, Money, Price};
use farebox_evm::anvil::Anvil;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{B256, Bytes, U256};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::exact_evm::{Authorization, ExactEvmPayload};
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::facilitator::{Facilitator, FacilitatorError, http_server};
use farebox_x402::facilitator_api::{
    SettleResponse, SupportedResponse, VerifyResponse, VersionedPayment,
};
use farebox_x402::{Amount, Payload, Reason, X402Config, X402Rail, codec, v1, v2};
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAYER: &str = "0x857b06519E91e3A54538791bDbb0E22373e36b66";

#[test]
fn x402_schema_files_and_examples() {
    harness::check_files("x402");
    harness::check_shared_defs();
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

/// A header's base64 decoded to JSON (the bytes as sent, not re-serialised).
fn header_json(headers: &HeaderMap, name: &str) -> Value {
    let json = codec::decode_header_bytes(headers[name].to_str().unwrap()).unwrap();
    serde_json::from_slice(&json).unwrap()
}

// ---- the rail behind the paywall, with a scripted facilitator ----

/// Valid verifications; settlement as scripted (`None`: a successful one).
struct Scripted(Mutex<Option<Reason>>);

#[async_trait]
impl Facilitator for Scripted {
    async fn verify(&self, _: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        Ok(VerifyResponse::valid(PAYER.into()))
    }
    async fn settle(&self, r: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        let network = r.network().to_string();
        let payer = Some(PAYER.to_string());
        Ok(match *self.0.lock().unwrap() {
            None => SettleResponse::success(format!("0x{}", "be".repeat(32)), network, payer),
            Some(reason) => {
                let mut answer = SettleResponse::failure(reason, network, payer);
                answer.transaction = format!("0x{}", "de".repeat(32));
                answer
            }
        })
    }
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        Err(FacilitatorError::Unavailable("not scripted".into()))
    }
}

fn paywalled(facilitator: Arc<Scripted>) -> Router {
    let config = X402Config::builder()
        .network("eip155:84532")
        .asset(ASSET)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(PAY_TO)
        .max_timeout_seconds(60)
        .public_url("https://api.example.com")
        .offer_v1(true)
        .build()
        .unwrap();
    let price = Price::one(Money::new(Asset::Token(config.token()), 10_000));
    let rail = X402Rail::new(config, facilitator, Arc::new(MemoryStore::new()));
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price).unwrap().describe("market data"))
        .build()
        .unwrap();
    Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .layer(PaywallLayer::new(paywall))
}

async fn send(app: &Router, header: Option<(&str, String)>) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::get("/data");
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A well-formed `exact` payload (the scripted facilitator does not check the signature).
fn exact_payload(nonce: u8) -> Payload {
    let auth = json!({
        "from": PAYER, "to": PAY_TO, "value": "10000",
        "validAfter": (now() - 600).to_string(), "validBefore": (now() + 60).to_string(),
        "nonce": format!("0x{}", format!("{nonce:02x}").repeat(32)),
    });
    let payload = json!({"signature": format!("0x{}", "11".repeat(65)), "authorization": auth});
    harness::assert_valid("x402/exact-evm-payload", &payload);
    Payload::from_serialize(&payload).unwrap()
}

/// The 402, checked: the v2 header and the v1 members of the problem+json body.
async fn offer(app: &Router) -> (v2::PaymentRequired, v1::PaymentRequirements) {
    let (status, headers, body) = send(app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let required = header_json(&headers, "payment-required");
    harness::assert_valid("x402/v2/payment-required", &required);
    harness::assert_valid("x402/v2/payment-requirements", &required["accepts"][0]);
    harness::assert_valid("problem-details", &body);
    harness::assert_valid("x402/v1/payment-required", &body);
    harness::assert_valid("x402/v1/payment-requirements", &body["accepts"][0]);
    let v1_offer = serde_json::from_value(body["accepts"][0].clone()).unwrap();
    (serde_json::from_value(required).unwrap(), v1_offer)
}

/// A v2 payment echoing the 402's requirement, checked.
fn v2_payment(required: &v2::PaymentRequired, nonce: u8) -> String {
    let payment = v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: Some(required.resource.clone()),
        accepted: required.accepts[0].clone(),
        payload: exact_payload(nonce),
        extensions: None,
    };
    harness::assert_valid("x402/v2/payment-payload", &to_value(&payment));
    codec::encode_header(&payment)
}

#[tokio::test]
async fn the_rails_402_and_settlement_headers_validate() {
    let facilitator = Arc::new(Scripted(Mutex::new(None)));
    let app = paywalled(facilitator.clone());
    let (required, v1_offer) = offer(&app).await;

    let (status, headers, _) =
        send(&app, Some(("PAYMENT-SIGNATURE", v2_payment(&required, 1)))).await;
    assert_eq!(status, StatusCode::OK);
    harness::assert_valid("x402/v2/settle-response", &header_json(&headers, "payment-response"));

    let v1_payment = v1::PaymentPayload {
        x402_version: farebox_x402::Version,
        scheme: v1_offer.scheme.clone(),
        network: v1_offer.network.clone(),
        payload: exact_payload(2),
    };
    harness::assert_valid("x402/v1/payment-payload", &to_value(&v1_payment));
    let (status, headers, _) =
        send(&app, Some(("X-PAYMENT", codec::encode_header(&v1_payment)))).await;
    assert_eq!(status, StatusCode::OK);
    harness::assert_valid("x402/v1/settle-response", &header_json(&headers, "x-payment-response"));

    // A reverted transfer and one whose outcome is not known yet: refused, and the header says
    // so with the transaction hash.
    for (reason, nonce) in [(Reason::TransactionFailed, 3), (Reason::SettlementPending, 4)] {
        *facilitator.0.lock().unwrap() = Some(reason);
        let payment = v2_payment(&required, nonce);
        let (status, headers, body) = send(&app, Some(("PAYMENT-SIGNATURE", payment))).await;
        assert_ne!(status, StatusCode::OK);
        let answer = header_json(&headers, "payment-response");
        assert_eq!(answer["success"], false);
        harness::assert_valid("x402/v2/settle-response", &answer);
        harness::assert_valid("problem-details", &body);
    }

    // A payment header that is not base64: a 402 whose body still validates.
    let (status, _, body) = send(&app, Some(("PAYMENT-SIGNATURE", "not base64!".into()))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    harness::assert_valid("problem-details", &body);
    harness::assert_valid("x402/v1/payment-required", &body);
}

#[test]
fn every_reason_in_a_facilitator_answer_validates() {
    harness::assert_valid(
        "x402/facilitator/verify-response",
        &to_value(&VerifyResponse::valid(PAYER.into())),
    );
    for reason in Reason::ALL {
        for (version, network) in [(1, "base-sepolia"), (2, "eip155:84532")] {
            let invalid = VerifyResponse::invalid(reason, version, Some(PAYER.into()));
            harness::assert_valid("x402/facilitator/verify-response", &to_value(&invalid));
            let failed = SettleResponse::failure(reason, network.into(), None);
            harness::assert_valid("x402/facilitator/settle-response", &to_value(&failed));
        }
        let failed = SettleResponse::failure(reason, "eip155:84532".into(), Some(PAYER.into()));
        harness::assert_valid("x402/v2/settle-response", &to_value(&failed));
    }
}

// ---- the facilitator's HTTP API on anvil ----

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>) -> Value {
    let req =
        Request::builder().method(method).uri(path).header("content-type", "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{method} {path}");
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn the_facilitator_api_on_anvil_validates() {
    const CHAIN_ID: u64 = 84_532;
    let anvil = Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (cargo xtask setup)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let (payer, pay_to, gas) =
        (&anvil.accounts()[1], anvil.accounts()[2].address, &anvil.accounts()[3]);
    anvil.mint(token, payer.address, U256::from(1_000_000u64)).await.unwrap();
    let domain = TokenDomain::new("USDC", "2", CHAIN_ID, token);
    let chains = vec![ChainAccess { rpc, signer: gas.signer.clone() }];
    let facilitator = LocalFacilitator::new(chains, Arc::new(MemoryStore::new()));
    let app = http_server::router(Arc::new(facilitator));

    harness::assert_valid(
        "x402/facilitator/supported-response",
        &call(&app, "GET", "/supported", None).await,
    );

    let signed = |value: u64| {
        let auth = TransferWithAuthorization {
            from: payer.address,
            to: pay_to,
            value: U256::from(value),
            validAfter: U256::from(now() - 600),
            validBefore: U256::from(now() + 60),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        };
        let signature = eip3009::sign(&payer.signer, &domain, &auth);
        let payload = ExactEvmPayload {
            signature: Bytes::copy_from_slice(&signature),
            authorization: Authorization {
                from: auth.from,
                to: auth.to,
                value: auth.value,
                valid_after: auth.validAfter.to::<u64>(),
                valid_before: auth.validBefore.to::<u64>(),
                nonce: auth.nonce,
            },
        };
        Payload::from_serialize(&payload).unwrap()
    };
    let mut extra = serde_json::Map::new();
    extra.insert("name".into(), "USDC".into());
    extra.insert("version".into(), "2".into());
    let requirement = v2::PaymentRequirements {
        scheme: "exact".into(),
        network: format!("eip155:{CHAIN_ID}"),
        amount: Amount::from(10_000u64),
        asset: token.to_checksum(None),
        pay_to: pay_to.to_checksum(None),
        max_timeout_seconds: 60,
        extra: Some(extra.clone()),
        other: serde_json::Map::new(),
    };
    let v2_request = VersionedPayment::V2 {
        payment_payload: v2::PaymentPayload {
            x402_version: farebox_x402::Version,
            resource: None,
            accepted: requirement.clone(),
            payload: signed(10_000),
            extensions: None,
        },
        payment_requirements: requirement,
    };
    let v1_requirement = v1::PaymentRequirements {
        scheme: "exact".into(),
        network: "base-sepolia".into(),
        max_amount_required: Amount::from(10_000u64),
        asset: token.to_checksum(None),
        pay_to: pay_to.to_checksum(None),
        resource: "https://api.example.com/data".into(),
        description: "market data".into(),
        mime_type: Some("application/json".into()),
        output_schema: None,
        max_timeout_seconds: 60,
        extra: Some(extra),
    };
    let v1_request = VersionedPayment::V1 {
        payment_payload: v1::PaymentPayload {
            x402_version: farebox_x402::Version,
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            payload: signed(10_000),
        },
        payment_requirements: v1_requirement,
    };
    for request in [v2_request, v1_request] {
        let body = to_value(&request);
        harness::assert_valid("x402/facilitator/verify-request", &body);
        harness::assert_valid("x402/facilitator/settle-request", &body);
        let verified = call(&app, "POST", "/verify", Some(body.clone())).await;
        assert_eq!(verified["isValid"], true, "{verified}");
        harness::assert_valid("x402/facilitator/verify-response", &verified);
        let settled = call(&app, "POST", "/settle", Some(body.clone())).await;
        assert_eq!(settled["success"], true, "{settled}");
        harness::assert_valid("x402/facilitator/settle-response", &settled);
        // The same authorization again: refused, in a body that validates.
        let replayed = call(&app, "POST", "/verify", Some(body.clone())).await;
        assert_eq!(replayed["isValid"], false, "{replayed}");
        harness::assert_valid("x402/facilitator/verify-response", &replayed);
        let resettled = call(&app, "POST", "/settle", Some(body)).await;
        assert_eq!(resettled["success"], false, "{resettled}");
        harness::assert_valid("x402/facilitator/settle-response", &resettled);
    }
}
