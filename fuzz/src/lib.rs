//! The bodies of farebox's fuzz targets, one function per target (the `fuzz_targets/` binaries
//! only hand libFuzzer's input to these). Each feeds untrusted bytes to a parser and checks that
//! it returns instead of panicking, plus the round-trip properties the parser promises.
//!
//! libfuzzer-sys installs a panic hook that aborts, so a panic is reported even where farebox
//! catches it in production (`parse_bolt11` turns a panic inside lightning-invoice into
//! `Bolt11Error::Internal`): the fuzzer should find those too.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use farebox_core::auth::{self, AuthChallenge, MAX_HEADER_LEN};
use farebox_core::{Money, Price, Resource};
use farebox_l402::macaroon::{Macaroon, decode_base64};
use farebox_l402::{
    DerivedRootKeys, L402Config, L402Receipt, L402Verifier, identifier::Identifier,
};
use farebox_mpp::{
    Challenge, ChallengeKey, Credential, PaymentReceipt, evm::charge as evm_charge, evm::session as evm_session, jcs,
    lightning::charge as lightning_charge, lightning::session as lightning_session,
};
use farebox_x402::facilitator_api::{AnyPaymentPayload, VersionedPayment};
use farebox_x402::{codec, exact_evm, v1, v2};
use serde_json::{Map, Value};

/// Splits the input into header lines at NUL bytes (which no header value can contain), so one
/// input can be several `WWW-Authenticate` fields.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\0')
}

/// A challenge that validates must read back as itself.
fn check_round_trip(challenge: &AuthChallenge) {
    if challenge.validate().is_err() {
        return;
    }
    let Ok(value) = challenge.to_header_value() else {
        return; // Longer than MAX_HEADER_LEN once written.
    };
    let text = value.to_str().expect("a written challenge is visible ASCII");
    let again = auth::parse_challenges([text]).expect("a written challenge parses");
    assert_eq!(again, [challenge.clone()], "{text:?}");
}

/// `WWW-Authenticate` and `Authorization` grammar: `parse_challenges` (one or several fields),
/// `parse_credential`, `scheme_of`, `scheme_of_bytes`, and write → parse round trips.
pub fn auth_header(data: &[u8]) {
    let _ = auth::scheme_of_bytes(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = auth::scheme_of(text);
    if let Ok(challenges) = auth::parse_challenges(lines(text)) {
        assert!(challenges.len() <= auth::MAX_CHALLENGES);
        for c in &challenges {
            assert!(c.params.len() <= auth::MAX_PARAMS);
            assert!(c.token68.is_none() || c.params.is_empty());
            check_round_trip(c);
        }
    }
    // The client's liberal reader: bounded, and the same as the strict parser on every line
    // the strict parser accepts.
    let read = auth::read_challenges(lines(text));
    assert!(read.challenges.len() <= auth::MAX_CHALLENGES);
    for c in &read.challenges {
        assert!(c.params.len() <= auth::MAX_PARAMS);
        assert!(c.token68.is_none() || c.params.is_empty());
    }
    for line in lines(text) {
        if let Ok(strict) = auth::parse_challenges([line]) {
            let liberal = auth::read_challenges([line]);
            assert_eq!(liberal.challenges, strict, "{line:?}");
            assert!(liberal.skipped.is_empty(), "{line:?}");
        }
    }
    if let Ok(cred) = auth::parse_credential(text) {
        assert!(text.len() <= MAX_HEADER_LEN);
        assert!(cred.params.len() <= auth::MAX_PARAMS);
        assert!(cred.token.is_none() || cred.params.is_empty());
        assert_eq!(auth::scheme_of(text), Some(cred.scheme.as_str()));
    }
}

fn verifier() -> &'static L402Verifier {
    static VERIFIER: OnceLock<L402Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let keys = DerivedRootKeys::new(&[0x5a; 32]).expect("32-byte master secret");
        L402Verifier::new(L402Config::new("svc", Arc::new(keys))).expect("valid config")
    })
}

fn resource() -> Resource {
    Resource {
        method: http::Method::GET,
        path: "/v1/weather/x".into(),
        route: Arc::from("/v1/weather/*"),
        price: Price::one(Money::sats(10)),
        description: None,
        accept_payment: None,
    }
}

/// The L402 decoders: the `Authorization` credential, the base64 + V2 macaroon codec and the
/// identifier, the full verifier (caveats included), and the client's challenge reader. A
/// macaroon that decodes must re-encode to bytes that decode to the same macaroon.
pub fn l402_credential(data: &[u8]) {
    // Raw V2 bytes, as if already base64-decoded.
    if let Ok(m) = Macaroon::decode(data) {
        let owned = m.to_owned();
        let bytes = owned.encode();
        let again = Macaroon::decode(&bytes).expect("an encoded macaroon decodes");
        assert_eq!(again.to_owned(), owned);
        let _ = Identifier::decode(m.identifier());
        let _ = m.verify_signature(&[0x5a; 32]);
        // Caveats as the verifier and `farebox token inspect` read them.
        for c in m.caveats() {
            let _ = farebox_l402::caveat::parse(c.id);
        }
        let _ = farebox_l402::caveat::Allowed::of(m.caveats().map(|c| c.id)).allows_nothing();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cred) = farebox_l402::credential::parse_credential(text) {
        assert!(cred.macaroon_list().count() <= farebox_l402::credential::MAX_MACAROONS);
        for m in cred.macaroon_list() {
            if let Ok(bytes) = decode_base64(m)
                && let Ok(mac) = Macaroon::decode(&bytes)
            {
                let _ = Identifier::decode(mac.identifier());
            }
        }
    }
    let _ = verifier().verify_token(text, &resource(), 1_800_000_000);
    // The client side: an L402 challenge from an untrusted server.
    if let Ok(challenges) = auth::parse_challenges(lines(text)) {
        for c in &challenges {
            let _ = farebox_l402::parse_challenge(c);
        }
    }
}

/// `L402Receipt::decode`; a receipt that decodes re-encodes to one that decodes the same.
pub fn l402_receipt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(receipt) = L402Receipt::decode(text) {
        assert!(text.len() <= farebox_l402::receipt::MAX_RECEIPT_LEN);
        assert_eq!(L402Receipt::decode(&receipt.encode()), Ok(receipt));
    }
}

/// The prepaid example rail's credit codes: `CreditCode::read` and `verify` under a fixed
/// seller never panic, and a text that verifies is exactly the seller's signing of what it
/// reads as (Ed25519 signs deterministically, and `verify_strict` and canonical base64 leave
/// no other spelling).
pub fn prepaid_code(data: &[u8]) {
    use farebox_rail_prepaid::CreditCode;
    static SELLER: OnceLock<ed25519_dalek::SigningKey> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let seller = SELLER.get_or_init(|| ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]));
    let asset = farebox_core::Asset::Bitcoin;
    let read = CreditCode::read(text);
    if let Ok(code) = CreditCode::verify(text, &seller.verifying_key(), &asset) {
        assert_eq!(code.sign(seller, &asset), text);
        assert_eq!(read, Ok(code));
    }
    if read.is_ok() {
        assert!(text.len() <= farebox_rail_prepaid::code::MAX_CODE_LEN);
    }
}

/// BOLT11: `parse_bolt11` (bounded, signature-checked), and the accessors of what it returns.
pub fn bolt11(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(invoice) = farebox_lightning::parse_bolt11(text) {
        assert!(text.len() <= farebox_lightning::MAX_INVOICE_LEN);
        let _ = invoice.network();
        let _ = invoice.expires_at();
        let _ = invoice.is_expired(std::time::SystemTime::now());
        // Case-insensitive: the upper-case form is the same invoice.
        let upper = farebox_lightning::parse_bolt11(&text.to_ascii_uppercase())
            .expect("the upper-case form of a valid invoice parses");
        assert_eq!(upper, invoice);
    }
}

// ---- MPP -------------------------------------------------------------------------------------

fn mpp_key() -> &'static ChallengeKey {
    static KEY: OnceLock<ChallengeKey> = OnceLock::new();
    KEY.get_or_init(|| ChallengeKey::new(&[0x5a; 32]).expect("32-byte secret"))
}

/// The method request readers a client runs on a challenge's `request`.
fn mpp_requests(request: &Value) {
    let _ = lightning_charge::LightningChargeRequest::from_json(request);
    let _ = evm_charge::EvmChargeRequest::from_json(request);
    let _ = evm_session::EvmSessionRequest::from_json(request);
    let _ = lightning_session::LightningSessionRequest::from_json(request);
}

/// `WWW-Authenticate: Payment` as a client reads it: [`farebox_mpp::read_www_authenticate`]
/// (liberal) and [`farebox_mpp::parse_www_authenticate`] over NUL-separated field lines, the
/// method requests of every challenge read, and the round trip: a challenge read back from
/// what farebox writes of it is the same challenge (its description, display text only, with
/// `?` for non-ASCII).
pub fn mpp_challenge(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let read = farebox_mpp::read_www_authenticate(lines(text));
    assert!(read.challenges.len() <= auth::MAX_CHALLENGES);
    match farebox_mpp::parse_www_authenticate(lines(text)) {
        Ok(v) => assert_eq!(v, read.challenges),
        Err(_) => assert!(read.challenges.is_empty()),
    }
    for c in &read.challenges {
        assert!(!c.id.is_empty() && !c.realm.is_empty() && !c.request_b64.is_empty());
        assert!(c.request.is_object());
        mpp_requests(&c.request);
        let _ = c.opaque_map();
        let _ = mpp_key().verify_id(&c.slots(), &c.id);
        let Ok(value) = c.to_header_value() else {
            continue; // A control character in the description, or too long once written.
        };
        let written = value.to_str().expect("a written challenge is visible ASCII");
        let again =
            farebox_mpp::parse_www_authenticate([written]).expect("a written challenge reads");
        let mut expected: Challenge = c.clone();
        expected.description = c
            .description
            .as_ref()
            .map(|d| d.chars().map(|ch| if ch.is_ascii() { ch } else { '?' }).collect());
        assert_eq!(again, [expected], "{written:?}");
    }
}

/// `Authorization: Payment <base64url JSON>` as the server reads it (strict), the payload
/// readers of the charge methods, and the round trip: a credential that decodes re-encodes to
/// one that decodes to the same credential.
pub fn mpp_credential(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Credential::decode(text);
    let Ok(cred) = Credential::from_authorization(text) else {
        return;
    };
    assert!(text.len() <= farebox_mpp::credential::MAX_CREDENTIAL_LEN);
    assert_eq!(Credential::decode(&cred.encode()), Ok(cred.clone()));
    assert_eq!(Credential::from_authorization(&cred.to_authorization()), Ok(cred.clone()));
    let _ = mpp_key().verify_id(&cred.challenge.slots(), &cred.challenge.id);
    if let Ok(request) = farebox_mpp::challenge::decode_request(&cred.challenge.request) {
        mpp_requests(&request);
    }
    let _ = lightning_charge::preimage_of(&cred.payload);
    let _ = evm_charge::authorization_of(&cred.payload);
    let _ = evm_session::SessionPayload::from_json(&cred.payload);
    let _ = lightning_session::SessionPayload::from_json(&cred.payload);
}

/// `Payment-Receipt` as a client reads it; a receipt that decodes re-encodes to the same.
pub fn mpp_receipt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(receipt) = PaymentReceipt::decode(text) {
        assert!(text.len() <= farebox_mpp::receipt::MAX_RECEIPT_LEN);
        assert_eq!(receipt.status, "success");
        assert_eq!(PaymentReceipt::decode(&receipt.encode()), Ok(receipt));
    }
}

/// The input as a JSON object, for the payload readers (`None` if it is not one).
fn json_object(data: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(data) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// The EVM session payloads (`open`, `voucher`, `topUp`, `close`) a server reads from a
/// credential: [`evm_session::SessionPayload::from_json`]; what it reads, written back and read
/// again, is the same payload.
pub fn evm_session_payload(data: &[u8]) {
    let Some(obj) = json_object(data) else {
        return;
    };
    if let Ok(payload) = evm_session::SessionPayload::from_json(&obj) {
        let _ = (payload.channel_id(), payload.action());
        assert_eq!(evm_session::SessionPayload::from_json(&payload.to_json()), Ok(payload));
    }
}

/// The Lightning session payloads (`open`, `bearer`, `topUp`, `close`) a server reads from a
/// credential, with the same round trip.
pub fn lightning_session_payload(data: &[u8]) {
    let Some(obj) = json_object(data) else {
        return;
    };
    if let Ok(payload) = lightning_session::SessionPayload::from_json(&obj) {
        let _ = (payload.session_id(), payload.action());
        let again = lightning_session::SessionPayload::from_json(&payload.to_json());
        assert!(again.as_ref() == Ok(&payload), "a written payload reads back the same");
    }
}

/// RFC 8785: whatever JSON serde_json reads canonicalizes, and canonicalization is idempotent:
/// the canonical text read back canonicalizes to itself (what re-canonicalizing another SDK's
/// request relies on), and is the same value.
pub fn jcs(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(text) = jcs::canonicalize(&value) else {
        return; // Nested deeper than jcs::MAX_DEPTH.
    };
    let again: Value = serde_json::from_str(&text).expect("canonical JSON parses");
    assert_eq!(jcs::canonicalize(&again).as_deref(), Ok(text.as_str()));
    let wire = jcs::encode_b64_jcs(&value).expect("canonicalized once");
    assert_eq!(jcs::b64url_decode(&wire).as_deref(), Ok(text.as_bytes()));
}

/// The base64url decoder of MPP input: each byte string has one accepted spelling, unpadded,
/// plus its fully padded twin.
pub fn base64url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = jcs::b64url_decode(text) {
        let canonical = jcs::b64url_encode(&bytes);
        let padding = (4 - canonical.len() % 4) % 4;
        let padded = format!("{canonical}{}", "=".repeat(padding));
        assert!(text == canonical || text == padded, "{text:?} is not {canonical:?}");
    }
}

// ---- x402 ------------------------------------------------------------------------------------

/// The payment headers a server reads (`X-PAYMENT`, `PAYMENT-SIGNATURE`) and the facilitator's
/// `/verify` / `/settle` body, with the exact-EVM checks; a header that decodes re-encodes to one
/// that decodes the same.
pub fn x402_payment(data: &[u8]) {
    if let Ok(request) = VersionedPayment::from_json(data) {
        let _ = (request.x402_version(), request.scheme(), request.network());
        let _ = exact_evm::check_request(&request, 1_800_000_000);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(payment) = AnyPaymentPayload::from_header(text) else {
        return;
    };
    assert_eq!(
        AnyPaymentPayload::from_header(&codec::encode_header(&payment)),
        Ok(payment.clone())
    );
    if let AnyPaymentPayload::V2(p) = payment {
        let payment_requirements = p.accepted.clone();
        let request = VersionedPayment::V2 { payment_payload: *p, payment_requirements };
        let _ = exact_evm::check_request(&request, 1_800_000_000);
    }
}

/// What a client reads of an x402 402: the v2 `PAYMENT-REQUIRED` header and the v1 JSON body;
/// each decodes, re-encodes and decodes to the same.
pub fn x402_required(data: &[u8]) {
    if let Ok(body) = serde_json::from_slice::<v1::PaymentRequirementsResponse>(data) {
        let json = serde_json::to_vec(&body).expect("a decoded body encodes");
        assert_eq!(
            serde_json::from_slice::<v1::PaymentRequirementsResponse>(&json).ok(),
            Some(body)
        );
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(required) = codec::decode_header::<v2::PaymentRequired>(text) {
        let again = codec::decode_header::<v2::PaymentRequired>(&codec::encode_header(&required));
        assert_eq!(again, Ok(required));
    }
}
