//! The spec's example messages (specs/vectors/x402/spec_examples.json) decode into their types
//! and the canonical ones re-encode byte for byte.

use farebox_x402::codec::{decode_header_bytes, from_json};
use farebox_x402::{decode_header, encode_header, v1, v2};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const VECTORS: &str = include_str!("../../../specs/vectors/x402/spec_examples.json");

fn vectors() -> Vec<Value> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &Value) {
    let name = v["name"].as_str().unwrap();
    let json = v["json"].as_str().unwrap();
    let canonical = v["canonical"].as_bool().unwrap();
    let decoded: T = from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(b64) = v["base64"].as_str() {
        assert_eq!(decode_header_bytes(b64).unwrap(), json.as_bytes(), "{name}: base64 ≠ json");
        let from_header: T = decode_header(b64).unwrap();
        assert_eq!(from_header, decoded, "{name}");
        if canonical {
            assert_eq!(encode_header(&decoded), b64, "{name}: base64 not byte-exact");
        }
    }
    let again = serde_json::to_string(&decoded).unwrap();
    if canonical {
        assert_eq!(again, json, "{name}: JSON not byte-exact");
    }
    // Whatever the canonical status, the re-encoding decodes to the same value.
    assert_eq!(from_json::<T>(again.as_bytes()).unwrap(), decoded, "{name}");
}

#[test]
fn every_spec_vector_round_trips() {
    let all = vectors();
    assert_eq!(all.len(), 9);
    for v in &all {
        match v["type"].as_str().unwrap() {
            "v2.PaymentRequired" => round_trip::<v2::PaymentRequired>(v),
            "v2.PaymentPayload" => round_trip::<v2::PaymentPayload>(v),
            "v2.SettleResponse" => round_trip::<v2::SettleResponse>(v),
            "v1.PaymentPayload" => round_trip::<v1::PaymentPayload>(v),
            "v1.SettlementResponse" => round_trip::<v1::SettlementResponse>(v),
            "v1.PaymentRequirementsResponse" => round_trip::<v1::PaymentRequirementsResponse>(v),
            other => panic!("unknown type {other}"),
        }
    }
}

fn vector(name: &str) -> Value {
    vectors().into_iter().find(|v| v["name"] == name).unwrap()
}

#[test]
fn spec_structs_built_by_hand_encode_to_the_spec_bytes() {
    let required_json = vector("v2_payment_required")["json"].as_str().unwrap().to_owned();
    let requirement = v2::PaymentRequirements {
        scheme: "exact".into(),
        network: "eip155:84532".into(),
        amount: 10_000u64.into(),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        max_timeout_seconds: 60,
        extra: Some(serde_json::from_str(r#"{"name":"USDC","version":"2"}"#).unwrap()),
        other: Default::default(),
    };
    let resource = v2::ResourceInfo {
        url: "https://api.example.com/premium-data".into(),
        description: Some("Access to premium market data".into()),
        mime_type: Some("application/json".into()),
        other: Default::default(),
    };
    let required = v2::PaymentRequired {
        x402_version: farebox_x402::Version,
        error: Some("PAYMENT-SIGNATURE header is required".into()),
        resource: resource.clone(),
        accepts: vec![requirement.clone()],
        extensions: None,
    };
    assert_eq!(serde_json::to_string(&required).unwrap(), required_json);
    assert_eq!(encode_header(&required), vector("v2_payment_required")["base64"]);

    // The payment, with the scheme payload built from the typed EIP-3009 struct.
    let sig = vector("v2_payment_signature");
    let spec: v2::PaymentPayload = decode_header(sig["base64"].as_str().unwrap()).unwrap();
    let exact: farebox_x402::exact_evm::ExactEvmPayload = spec.payload.parse().unwrap();
    let payment = v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: Some(resource),
        accepted: requirement,
        payload: farebox_x402::Payload::from_serialize(&exact).unwrap(),
        extensions: None,
    };
    assert_eq!(serde_json::to_string(&payment).unwrap(), sig["json"].as_str().unwrap());
    assert_eq!(encode_header(&payment), sig["base64"].as_str().unwrap());

    let ok = v2::SettleResponse::success(
        "0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef".into(),
        "eip155:84532".into(),
        Some("0x857b06519E91e3A54538791bDbb0E22373e36b66".into()),
    );
    assert_eq!(encode_header(&ok), vector("v2_payment_response_success")["base64"]);
    let mut failed = v2::SettleResponse::failure(
        farebox_x402::Reason::InsufficientFunds,
        "eip155:84532".into(),
        Some("0x857b06519E91e3A54538791bDbb0E22373e36b66".into()),
    );
    failed.error_message = None;
    assert_eq!(encode_header(&failed), vector("v2_payment_response_failure")["base64"]);
    assert_eq!(failed.reason(), Some(farebox_x402::Reason::InsufficientFunds));
}

#[test]
fn lenient_decodes_of_the_spec_examples() {
    let failure: v2::SettleResponse =
        decode_header(vector("v2_payment_response_failure_spec")["base64"].as_str().unwrap())
            .unwrap();
    assert!(!failure.success);
    assert_eq!(failure.transaction, "");
    assert_eq!(failure.network, "eip155:84532");
    assert_eq!(failure.payer, None);

    let body: v1::PaymentRequirementsResponse =
        from_json(vector("v1_402_body")["json"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(body.accepts[0].output_schema, None);
    assert_eq!(body.accepts[0].max_amount_required.as_str(), "10000");
    assert_eq!(body.accepts[0].network, "kairos-testnet");

    // A v2 payload is not a v1 payload and vice versa (the version marker is checked).
    let v2b64 = vector("v2_payment_signature")["base64"].as_str().unwrap().to_owned();
    assert!(decode_header::<v1::PaymentPayload>(&v2b64).is_err());
    let v1b64 = vector("v1_x_payment")["base64"].as_str().unwrap().to_owned();
    assert!(decode_header::<v2::PaymentPayload>(&v1b64).is_err());
}

#[test]
fn unknown_members_survive_an_echo() {
    let json = r#"{"scheme":"exact","network":"eip155:8453","amount":"1","asset":"0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USD Coin","version":"2","assetTransferMethod":"eip3009","nested":{"z":1,"a":2}},"futureField":[1,2]}"#;
    let r: v2::PaymentRequirements = serde_json::from_str(json).unwrap();
    assert_eq!(r.other["futureField"], serde_json::json!([1, 2]));
    let again: v2::PaymentRequirements =
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(again, r);
    // Numbers where strings are expected are accepted for amounts.
    let numeric = json.replace(r#""amount":"1""#, r#""amount":1"#);
    let n: v2::PaymentRequirements = serde_json::from_str(&numeric).unwrap();
    assert_eq!(n.amount, r.amount);
}
