//! Facilitator HTTP API bodies: version dispatch, shapes, and reason spellings.

use farebox_x402::exact_evm::check_request;
use farebox_x402::facilitator_api::{
    AnyPaymentPayload, RequestError, SupportedKind, SupportedResponse, VerifyRequest,
    VerifyResponse, VersionedPayment,
};
use farebox_x402::{CodecError, Reason, codec, decode_header, v1, v2};
use serde_json::{Value, json};

const VECTORS: &str = include_str!("../../../specs/vectors/x402/spec_examples.json");

fn vector_json(name: &str) -> Value {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    let v = doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
    serde_json::from_str(v["json"].as_str().unwrap()).unwrap()
}

fn v2_body() -> String {
    let payment = vector_json("v2_payment_signature");
    let requirements = vector_json("v2_payment_required")["accepts"][0].clone();
    json!({"x402Version": 2, "paymentPayload": payment, "paymentRequirements": requirements})
        .to_string()
}

#[test]
fn decodes_v2_requests_and_checks_them() {
    let req = VersionedPayment::from_json(v2_body().as_bytes()).unwrap();
    assert_eq!(req.x402_version(), 2);
    assert_eq!(req.scheme(), "exact");
    assert_eq!(req.network(), "eip155:84532");
    assert!(check_request(&req, 1_740_672_100).is_ok());
    // The Deserialize impl does the same; serialising gives back an equivalent body.
    let via_serde: VerifyRequest = serde_json::from_str(&v2_body()).unwrap();
    assert_eq!(via_serde, req);
    let again = serde_json::to_string(&req).unwrap();
    assert!(again.starts_with(r#"{"x402Version":2,"paymentPayload":{"x402Version":2,"#));
    assert_eq!(VersionedPayment::from_json(again.as_bytes()).unwrap(), req);
}

#[test]
fn decodes_v1_requests() {
    let payment = vector_json("v1_x_payment");
    let requirements = vector_json("v1_402_body")["accepts"][0].clone();
    let mut requirements = requirements;
    requirements["network"] = json!("base-sepolia");
    let body =
        json!({"x402Version": "1", "paymentPayload": payment, "paymentRequirements": requirements});
    let req = VersionedPayment::from_json(body.to_string().as_bytes()).unwrap();
    assert!(matches!(req, VersionedPayment::V1 { .. }));
    assert!(check_request(&req, 1_740_672_100).is_ok());
    assert_eq!(
        check_request(&req, 1_740_672_150).unwrap_err().reason,
        Reason::Expired,
        "validBefore 1740672154 < 1740672150 + 6"
    );
}

#[test]
fn request_errors_map_to_reasons() {
    let cases: [(&str, Reason); 8] = [
        ("not json", Reason::InvalidPayload),
        ("[]", Reason::InvalidPayload),
        (r#"{"paymentPayload":{},"paymentRequirements":{}}"#, Reason::InvalidX402Version),
        (
            r#"{"x402Version":3,"paymentPayload":{},"paymentRequirements":{}}"#,
            Reason::InvalidX402Version,
        ),
        (r#"{"x402Version":2}"#, Reason::InvalidPayload),
        (
            r#"{"x402Version":2,"paymentPayload":{},"paymentRequirements":{}}"#,
            Reason::InvalidPayload,
        ),
        (
            r#"{"x402Version":null,"paymentPayload":{},"paymentRequirements":{}}"#,
            Reason::InvalidPayload,
        ),
        (
            r#"{"x402Version":"two","paymentPayload":{},"paymentRequirements":{}}"#,
            Reason::InvalidPayload,
        ),
    ];
    for (body, want) in cases {
        let err = VersionedPayment::from_json(body.as_bytes()).unwrap_err();
        assert_eq!(err.reason(), want, "{body}: {err}");
    }
    // A good payload with broken requirements is blamed on the requirements.
    let mut body: Value = serde_json::from_str(&v2_body()).unwrap();
    body["paymentRequirements"]["amount"] = json!("ten");
    let err = VersionedPayment::from_json(body.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, RequestError::InvalidRequirements(CodecError::Shape(_))), "{err}");
    assert_eq!(err.reason(), Reason::InvalidPaymentRequirements);
    // A v1 payload inside a v2 request is refused by the payload's version marker.
    let mut body: Value = serde_json::from_str(&v2_body()).unwrap();
    body["paymentPayload"] = vector_json("v1_x_payment");
    let err = VersionedPayment::from_json(body.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, RequestError::InvalidPayload(_)), "{err}");
}

#[test]
fn verify_response_shapes() {
    let ok = VerifyResponse::valid("0x857b06519E91e3A54538791bDbb0E22373e36b66".into());
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"{"isValid":true,"payer":"0x857b06519E91e3A54538791bDbb0E22373e36b66"}"#
    );
    let bad = VerifyResponse::invalid(Reason::ValueMismatch, 1, None);
    let text = serde_json::to_string(&bad).unwrap();
    assert!(text.starts_with(
        r#"{"isValid":false,"invalidReason":"invalid_exact_evm_payload_authorization_value","invalidMessage":"#
    ));
    assert_eq!(bad.reason(), Some(Reason::ValueMismatch));
    let v2bad = VerifyResponse::invalid(Reason::ValueMismatch, 2, None);
    assert_eq!(
        v2bad.invalid_reason.as_deref(),
        Some("invalid_exact_evm_payload_authorization_value_mismatch")
    );
    // Other implementations' extra members and nulls are tolerated.
    let rs: VerifyResponse = serde_json::from_str(
        r#"{"isValid":false,"invalidReason":"invalid_exact_evm_signature","invalidReasonDetails":"x","payer":""}"#,
    )
    .unwrap();
    assert_eq!(rs.reason(), Some(Reason::InvalidSignature));
}

#[test]
fn settle_response_always_has_transaction_and_network() {
    let failed =
        v2::SettleResponse::failure(Reason::TransactionFailed, "eip155:84532".into(), None);
    let v: Value = serde_json::to_value(&failed).unwrap();
    assert_eq!(v["transaction"], "");
    assert_eq!(v["network"], "eip155:84532");
    assert_eq!(v["errorReason"], "invalid_exact_evm_transaction_failed");
    let pending: v2::SettleResponse = serde_json::from_str(
        r#"{"success":false,"errorReason":"settlement_pending","transaction":"0xab","network":"eip155:8453"}"#,
    )
    .unwrap();
    assert_eq!(pending.reason(), Some(Reason::SettlementPending));
    assert_eq!(pending.transaction, "0xab");
}

#[test]
fn supported_response_shape() {
    let s = SupportedResponse {
        kinds: vec![
            SupportedKind {
                x402_version: 2,
                scheme: "exact".into(),
                network: "eip155:84532".into(),
                extra: None,
            },
            SupportedKind {
                x402_version: 1,
                scheme: "exact".into(),
                network: "base-sepolia".into(),
                extra: None,
            },
        ],
        extensions: vec![],
        signers: [(
            "eip155:*".to_owned(),
            vec!["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".into()],
        )]
        .into(),
    };
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(
        text,
        r#"{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:84532"},{"x402Version":1,"scheme":"exact","network":"base-sepolia"}],"extensions":[],"signers":{"eip155:*":["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"]}}"#
    );
    assert_eq!(serde_json::from_str::<SupportedResponse>(&text).unwrap(), s);
    let minimal: SupportedResponse =
        serde_json::from_str(r#"{"kinds":[{"x402Version":"2","scheme":"exact","network":"eip155:8453","extra":{"facilitatorAddress":"0x1"}}]}"#)
            .unwrap();
    assert_eq!(minimal.kinds[0].x402_version, 2);
    assert!(minimal.signers.is_empty());
}

#[test]
fn any_payment_payload_dispatches_on_version() {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    let b64 = |name: &str| {
        doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["base64"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let v2p = AnyPaymentPayload::from_header(&b64("v2_payment_signature")).unwrap();
    assert_eq!(v2p.x402_version(), 2);
    let v1p = AnyPaymentPayload::from_header(&b64("v1_x_payment")).unwrap();
    assert!(matches!(v1p, AnyPaymentPayload::V1(v1::PaymentPayload { .. })));
    assert_eq!(codec::encode_header(&v1p), b64("v1_x_payment"));
    let v3 = codec::encode_header(&json!({"x402Version": 3}));
    let e = AnyPaymentPayload::from_header(&v3).unwrap_err();
    assert_eq!(e, RequestError::UnsupportedVersion(Some(3)));
    assert_eq!(e.reason(), Reason::InvalidX402Version);
    let none = codec::encode_header(&json!({"scheme": "exact"}));
    let e = AnyPaymentPayload::from_header(&none).unwrap_err();
    assert_eq!(e, RequestError::UnsupportedVersion(None));
    assert_eq!(e.reason(), Reason::InvalidX402Version);
    let e = AnyPaymentPayload::from_header("%%%").unwrap_err();
    assert!(matches!(e, RequestError::Malformed(CodecError::Base64(_))), "{e}");
    assert_eq!(e.reason(), Reason::InvalidPayload);
    let e = AnyPaymentPayload::from_header(&codec::encode_header(&json!("text"))).unwrap_err();
    assert!(matches!(e, RequestError::Malformed(CodecError::Shape(_))), "{e}");
    let bad_v2 = codec::encode_header(&json!({"x402Version": 2, "accepted": 1}));
    let e = AnyPaymentPayload::from_header(&bad_v2).unwrap_err();
    assert!(matches!(e, RequestError::InvalidPayload(CodecError::Shape(_))), "{e}");
    assert_eq!(e.reason(), Reason::InvalidPayload);
    let _: v2::PaymentPayload = decode_header(&b64("v2_payment_signature")).unwrap();
}
