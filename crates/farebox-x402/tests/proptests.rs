//! Decoding arbitrary input as any header or body type never panics.

use farebox_x402::exact_evm::{ExactEvmPayload, check_request};
use farebox_x402::facilitator_api::{
    AnyPaymentPayload, SupportedResponse, VerifyResponse, VersionedPayment,
};
use farebox_x402::{codec, decode_header, v1, v2};
use proptest::prelude::*;

fn decode_all(s: &str) {
    let _ = decode_header::<v1::PaymentRequirementsResponse>(s);
    let _ = decode_header::<v1::PaymentPayload>(s);
    let _ = decode_header::<v1::SettlementResponse>(s);
    let _ = decode_header::<v2::PaymentRequired>(s);
    let _ = decode_header::<v2::PaymentPayload>(s);
    let _ = decode_header::<v2::SettleResponse>(s);
    let _ = decode_header::<VerifyResponse>(s);
    let _ = decode_header::<SupportedResponse>(s);
    let _ = decode_header::<ExactEvmPayload>(s);
    let _ = AnyPaymentPayload::from_header(s);
}

fn json_all(bytes: &[u8]) {
    let _ = codec::from_json::<v2::PaymentPayload>(bytes);
    let _ = codec::from_json::<ExactEvmPayload>(bytes);
    let _ = AnyPaymentPayload::from_json(bytes);
    if let Ok(req) = VersionedPayment::from_json(bytes) {
        let _ = check_request(&req, 1_740_672_100);
        let _ = check_request(&req, u64::MAX);
    }
}

/// JSON-ish text built from the tokens x402 messages use, to reach past the syntax layer.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"x402Version\"".to_owned()),
        Just("\"paymentPayload\"".to_owned()),
        Just("\"paymentRequirements\"".to_owned()),
        Just("\"accepted\"".to_owned()),
        Just("\"payload\"".to_owned()),
        Just("\"authorization\"".to_owned()),
        Just("\"amount\"".to_owned()),
        Just("\"value\"".to_owned()),
        Just("\"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\"".to_owned()),
        Just("1".to_owned()),
        Just("2".to_owned()),
        Just("\"2\"".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("null".to_owned()),
        "\"[a-z0-9:]{0,8}\"",
    ];
    prop::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        decode_all(&s);
    }

    #[test]
    fn arbitrary_base64_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = codec::encode_header(&bytes.iter().map(|b| *b as char).collect::<String>());
        decode_all(&s);
        json_all(&bytes);
    }

    #[test]
    fn jsonish_input_never_panics(text in jsonish()) {
        let b64 = base64_of(text.as_bytes());
        decode_all(&b64);
        json_all(text.as_bytes());
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    decode_all(&base64_of(deep.as_bytes()));
    json_all(deep.as_bytes());
}
