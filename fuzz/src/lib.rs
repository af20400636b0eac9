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
use farebox_l402::{DerivedRootKeys, L402Config, L402Receipt, L402Verifier, identifier::Identifier};

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
