//! The `exact` EVM off-chain checks, passing and failing, on the spec's example payment.

use alloy_primitives::{Address, U256, address};
use farebox_x402::exact_evm::{
    self, ExactEvmPayload, PaymentView, Rejection, RequirementView, check_v1, check_v2,
};
use farebox_x402::{Payload, Reason, decode_header, v1, v2};
use serde_json::{Value, json};

const VECTORS: &str = include_str!("../../../specs/vectors/x402/spec_examples.json");

/// Inside the spec payment's window (validAfter 1740672089, validBefore 1740672154).
const NOW: u64 = 1_740_672_100;
const VALID_AFTER: u64 = 1_740_672_089;
const VALID_BEFORE: u64 = 1_740_672_154;
const PAYER: Address = address!("857b06519E91e3A54538791bDbb0E22373e36b66");
const PAY_TO: Address = address!("209693Bc6afc0C5328bA36FaF03C514EF312287C");

fn header(name: &str) -> String {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    let v = doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
    v["base64"].as_str().unwrap().to_owned()
}

/// The spec's v2 payment and the server's requirement it was made for.
fn v2_case() -> (v2::PaymentPayload, v2::PaymentRequirements) {
    let payment: v2::PaymentPayload = decode_header(&header("v2_payment_signature")).unwrap();
    let required: v2::PaymentRequired = decode_header(&header("v2_payment_required")).unwrap();
    (payment, required.accepts[0].clone())
}

fn v1_case() -> (v1::PaymentPayload, v1::PaymentRequirements) {
    let payment: v1::PaymentPayload = decode_header(&header("v1_x_payment")).unwrap();
    let requirement = v1::PaymentRequirements {
        scheme: "exact".into(),
        network: "base-sepolia".into(),
        max_amount_required: 10_000u64.into(),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        resource: "https://api.example.com/premium-data".into(),
        description: "Access to premium market data".into(),
        mime_type: Some("application/json".into()),
        output_schema: None,
        max_timeout_seconds: 60,
        extra: Some(serde_json::from_value(json!({"name": "USDC", "version": "2"})).unwrap()),
    };
    (payment, requirement)
}

fn exact(p: &Payload) -> ExactEvmPayload {
    p.parse().unwrap()
}

/// Rewrites the payment's EIP-3009 payload.
fn edit_payload(payment: &mut v2::PaymentPayload, f: impl FnOnce(&mut ExactEvmPayload)) {
    let mut e = exact(&payment.payload);
    f(&mut e);
    payment.payload = Payload::from_serialize(&e).unwrap();
}

/// Replaces one member of the raw payload JSON (to test formats the typed struct cannot hold).
fn edit_raw(payment: &mut v2::PaymentPayload, path: &[&str], value: Value) {
    let mut v = payment.payload.to_value();
    let mut cur = &mut v;
    for key in &path[..path.len() - 1] {
        cur = &mut cur[*key];
    }
    cur[path[path.len() - 1]] = value;
    payment.payload = Payload::from_serialize(&v).unwrap();
}

fn reason(r: Result<exact_evm::CheckedPayment, Rejection>) -> Reason {
    r.expect_err("expected a rejection").reason
}

#[test]
fn spec_payment_passes_inside_its_window() {
    let (payment, req) = v2_case();
    let ok = check_v2(&payment, &req, NOW).unwrap();
    assert_eq!(ok.payload.payer(), PAYER);
    assert_eq!(ok.payload.authorization.to, PAY_TO);
    assert_eq!(ok.payload.authorization.value, U256::from(10_000u64));
    assert_eq!(ok.payload.signature.len(), 65);
    assert_eq!(ok.requirement.chain_id, 84532);
    assert_eq!(ok.requirement.eip712_name.as_deref(), Some("USDC"));
    assert_eq!(ok.requirement.eip712_version.as_deref(), Some("2"));
    // Long expired in real time: the golden vector is a negative vector for the window.
    assert_eq!(reason(check_v2(&payment, &req, 1_800_000_000)), Reason::Expired);
}

#[test]
fn valid_after_boundary() {
    let (payment, req) = v2_case();
    assert!(check_v2(&payment, &req, VALID_AFTER).is_ok(), "validAfter == now passes");
    assert_eq!(reason(check_v2(&payment, &req, VALID_AFTER - 1)), Reason::NotYetValid);
}

#[test]
fn valid_before_needs_a_six_second_margin() {
    let (payment, req) = v2_case();
    assert!(check_v2(&payment, &req, VALID_BEFORE - 6).is_ok(), "validBefore == now+6 passes");
    assert_eq!(reason(check_v2(&payment, &req, VALID_BEFORE - 5)), Reason::Expired);
    assert_eq!(reason(check_v2(&payment, &req, VALID_BEFORE)), Reason::Expired);
    assert_eq!(reason(check_v2(&payment, &req, u64::MAX)), Reason::Expired);
}

#[test]
fn value_must_be_exact() {
    for value in [9_999u64, 10_001, 0] {
        let (mut payment, req) = v2_case();
        edit_payload(&mut payment, |e| e.authorization.value = U256::from(value));
        let rejection = check_v2(&payment, &req, NOW).unwrap_err();
        assert_eq!(rejection.reason, Reason::ValueMismatch, "value {value}");
        assert_eq!(rejection.payer, Some(PAYER));
    }
}

#[test]
fn recipient_is_compared_as_an_address() {
    let (mut payment, req) = v2_case();
    edit_raw(&mut payment, &["authorization", "to"], json!(format!("{PAY_TO:#x}")));
    assert!(check_v2(&payment, &req, NOW).is_ok(), "lower-case `to` is the same address");

    let (mut payment, req) = v2_case();
    edit_payload(&mut payment, |e| e.authorization.to = PAYER);
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::RecipientMismatch);
}

#[test]
fn scheme_checks() {
    let (payment, mut req) = v2_case();
    req.scheme = "upto".into();
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::UnsupportedScheme);

    let (mut payment, req) = v2_case();
    payment.accepted.scheme = "upto".into();
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::InvalidScheme);

    let (mut payment, mut req) = v2_case();
    for r in [&mut req, &mut payment.accepted] {
        r.extra.as_mut().unwrap().insert("assetTransferMethod".into(), json!("permit2"));
    }
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::UnsupportedScheme);

    let (mut payment, mut req) = v2_case();
    for r in [&mut req, &mut payment.accepted] {
        r.extra.as_mut().unwrap().insert("assetTransferMethod".into(), json!("eip3009"));
    }
    assert!(check_v2(&payment, &req, NOW).is_ok());
}

#[test]
fn eip712_domain_must_be_in_extra() {
    for edit in [
        |r: &mut v2::PaymentRequirements| r.extra = None,
        |r: &mut v2::PaymentRequirements| drop(r.extra.as_mut().unwrap().remove("name")),
        |r: &mut v2::PaymentRequirements| drop(r.extra.as_mut().unwrap().remove("version")),
        |r: &mut v2::PaymentRequirements| {
            r.extra.as_mut().unwrap().insert("name".into(), json!(""));
        },
        |r: &mut v2::PaymentRequirements| {
            r.extra.as_mut().unwrap().insert("version".into(), json!(2));
        },
    ] {
        let (mut payment, mut req) = v2_case();
        edit(&mut req);
        edit(&mut payment.accepted);
        assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::MissingEip712Domain);
    }
}

#[test]
fn network_checks() {
    let (mut payment, req) = v2_case();
    payment.accepted.network = "eip155:8453".into();
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::InvalidNetwork);

    let (mut payment, mut req) = v2_case();
    req.network = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1".into();
    payment.accepted.network = req.network.clone();
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::InvalidNetwork);
}

#[test]
fn tampered_accepted_is_a_mismatch() {
    type Edit = fn(&mut v2::PaymentRequirements);
    let edits: [(&str, Edit); 7] = [
        ("amount", |r| r.amount = 1u64.into()),
        ("amount text", |r| r.amount = farebox_x402::Amount::new("010000").unwrap()),
        ("payTo case", |r| r.pay_to = r.pay_to.to_lowercase()),
        ("asset", |r| r.asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into()),
        ("extra", |r| {
            r.extra.as_mut().unwrap().insert("version".into(), json!("1"));
        }),
        ("extra member", |r| {
            r.extra.as_mut().unwrap().insert("x".into(), json!(true));
        }),
        ("maxTimeoutSeconds", |r| r.max_timeout_seconds = 3600),
    ];
    for (what, edit) in edits {
        let (mut payment, req) = v2_case();
        edit(&mut payment.accepted);
        let rejection = check_v2(&payment, &req, NOW).unwrap_err();
        assert_eq!(rejection.reason, Reason::AcceptedRequirementsMismatch, "{what}");
        assert_eq!(rejection.payer, Some(PAYER), "{what}");
    }
    // An unknown member added by the client is a mismatch too.
    let (mut payment, req) = v2_case();
    payment.accepted.other.insert("discount".into(), json!("50%"));
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::AcceptedRequirementsMismatch);
    // Tampering the amount *and* the signed value is caught by the server's amount first.
    let (mut payment, req) = v2_case();
    payment.accepted.amount = 1u64.into();
    edit_payload(&mut payment, |e| e.authorization.value = U256::from(1u64));
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::ValueMismatch);
}

#[test]
fn payload_is_parsed_strictly() {
    let bad: [(&[&str], Value); 16] = [
        (&["authorization", "nonce"], json!("0xf3746613")),
        (&["authorization", "nonce"], json!(format!("0x{}", "g".repeat(64)))),
        (
            &["authorization", "nonce"],
            json!("f3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"),
        ),
        (&["authorization", "from"], json!("857b06519E91e3A54538791bDbb0E22373e36b66")),
        (&["authorization", "from"], json!("0x857b06519E91e3A54538791bDbb0E22373e36b6")),
        (&["authorization", "to"], json!(null)),
        (&["authorization", "value"], json!("1e4")),
        (&["authorization", "value"], json!("-10000")),
        (&["authorization", "value"], json!(10000.5)),
        (&["authorization", "value"], json!(format!("1{}", "0".repeat(78)))),
        (&["authorization", "validBefore"], json!("18446744073709551616")),
        (&["authorization", "validAfter"], json!("")),
        (&["signature"], json!("0x")),
        (&["signature"], json!("0x123")),
        (&["signature"], json!(format!("0x{}", "ab".repeat(4097)))),
        (&["signature"], json!("2d6a7588")),
    ];
    for (path, value) in bad {
        let (mut payment, req) = v2_case();
        edit_raw(&mut payment, path, value.clone());
        let rejection = check_v2(&payment, &req, NOW).unwrap_err();
        assert_eq!(rejection.reason, Reason::InvalidPayload, "{path:?} = {value}");
    }
    let (mut payment, req) = v2_case();
    payment.payload = Payload::from_json("[]").unwrap();
    assert_eq!(reason(check_v2(&payment, &req, NOW)), Reason::InvalidPayload);
}

#[test]
fn lenient_where_implementations_differ() {
    // JSON integers for value and timestamps; a 4 KiB smart-wallet signature; unknown members.
    let (mut payment, req) = v2_case();
    edit_raw(&mut payment, &["authorization", "value"], json!(10000));
    edit_raw(&mut payment, &["authorization", "validAfter"], json!(VALID_AFTER));
    edit_raw(&mut payment, &["authorization", "validBefore"], json!(VALID_BEFORE.to_string()));
    edit_raw(&mut payment, &["signature"], json!(format!("0x{}", "AB".repeat(4096))));
    edit_raw(&mut payment, &["authorization", "memo"], json!("hi"));
    let ok = check_v2(&payment, &req, NOW).unwrap();
    assert_eq!(ok.payload.signature.len(), 4096);
}

#[test]
fn typed_payload_serialises_like_the_spec() {
    let (payment, _) = v2_case();
    let e = exact(&payment.payload);
    assert_eq!(serde_json::to_string(&e).unwrap(), payment.payload.get());
}

#[test]
fn v1_payment_checks() {
    let (payment, req) = v1_case();
    let ok = check_v1(&payment, &req, NOW).unwrap();
    assert_eq!(ok.payload.payer(), PAYER);
    assert_eq!(ok.requirement.network, "eip155:84532");
    assert_eq!(ok.requirement.chain_id, 84532);

    let (payment, mut req) = v1_case();
    req.network = "base".into();
    assert_eq!(reason(check_v1(&payment, &req, NOW)), Reason::InvalidNetwork);

    let (payment, mut req) = v1_case();
    req.network = "kairos-testnet".into();
    assert_eq!(reason(check_v1(&payment, &req, NOW)), Reason::InvalidNetwork);

    let (payment, mut req) = v1_case();
    req.max_amount_required = 9_999u64.into();
    let r = reason(check_v1(&payment, &req, NOW));
    assert_eq!(r, Reason::ValueMismatch, "v1 refuses overpayment too");
    assert_eq!(r.as_str_for(1), "invalid_exact_evm_payload_authorization_value");

    let (payment, mut req) = v1_case();
    req.pay_to = "not an address".into();
    assert_eq!(reason(check_v1(&payment, &req, NOW)), Reason::InvalidPaymentRequirements);

    let (mut payment, req) = v1_case();
    payment.scheme = "upto".into();
    assert_eq!(reason(check_v1(&payment, &req, NOW)), Reason::InvalidScheme);
}

#[test]
fn views_and_split_checks() {
    let (payment, req) = v2_case();
    let view = PaymentView::from_v2(&payment, &req);
    assert!(view.accepted_matches);
    let rv = RequirementView::from_v2(&req).unwrap();
    assert_eq!(rv.pay_to, PAY_TO);
    assert_eq!(rv.amount, U256::from(10_000u64));
    let e = exact(&payment.payload);
    exact_evm::check_before_signature(&view, &rv).unwrap();
    exact_evm::check_after_signature(&view, &e, &rv, NOW).unwrap();
    exact_evm::check(&view, &e, &rv, NOW).unwrap();

    let mut bad_amount = req.clone();
    bad_amount.amount = farebox_x402::Amount::new("9".repeat(78)).unwrap();
    assert_eq!(RequirementView::from_v2(&bad_amount), Err(Reason::InvalidPaymentRequirements));
}

#[test]
fn the_facilitators_offline_verifier_accepts_the_spec_signature_and_refuses_a_tampered_one() {
    use farebox_x402::facilitator::local::OfflineVerifier;
    use farebox_x402::facilitator_api::VersionedPayment;

    let verifier = OfflineVerifier::new();
    let (payment, req) = v2_case();
    let request = |payment_payload| VersionedPayment::V2 {
        payment_payload,
        payment_requirements: req.clone(),
    };
    let (checked, message) = verifier.check(&request(payment.clone()), NOW).unwrap();
    assert_eq!(checked.payload.payer(), PAYER, "the golden signature recovers to the payer");
    assert_eq!(message.from, PAYER);
    assert_eq!(message.value, U256::from(10_000u64));

    // One unit more, same signature: the recovered signer is someone else.
    let mut tampered = payment;
    edit_payload(&mut tampered, |e| e.authorization.value = U256::from(10_001u64));
    tampered.accepted.amount = 10_001u64.into();
    let mut req = req.clone();
    req.amount = 10_001u64.into();
    let rejection = verifier
        .check(&VersionedPayment::V2 { payment_payload: tampered, payment_requirements: req }, NOW)
        .unwrap_err();
    assert_eq!(rejection.reason, Reason::InvalidSignature);
    assert_eq!(rejection.payer, Some(PAYER));
}
