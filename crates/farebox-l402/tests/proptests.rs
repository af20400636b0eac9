//! Property tests: the codec round-trips, and no input makes any decoder or the verifier panic.

mod common;

use common::*;
use farebox_core::Money;
use farebox_l402::macaroon::{Macaroon, OwnedCaveat, OwnedMacaroon, decode_base64};
use farebox_l402::{DerivedRootKeys, L402Config, L402Verifier, credential};
use proptest::prelude::*;
use std::sync::Arc;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn caveat() -> impl Strategy<Value = OwnedCaveat> {
    (proptest::option::of(bytes(20)), bytes(200), proptest::option::of(bytes(40)))
        .prop_map(|(location, id, verification_id)| OwnedCaveat { location, id, verification_id })
}

fn macaroon() -> impl Strategy<Value = OwnedMacaroon> {
    (
        proptest::option::of(bytes(40)),
        bytes(300),
        proptest::collection::vec(caveat(), 0..10),
        any::<[u8; 32]>(),
    )
        .prop_map(|(location, identifier, caveats, signature)| OwnedMacaroon {
            location,
            identifier,
            caveats,
            signature,
        })
}

fn verifier() -> L402Verifier {
    L402Verifier::new(L402Config::new("svc", Arc::new(DerivedRootKeys::new(&[7; 32]).unwrap())))
        .unwrap()
}

proptest! {
    #[test]
    fn round_trip(m in macaroon()) {
        let bytes = m.encode();
        let d = Macaroon::decode(&bytes).unwrap();
        prop_assert_eq!(d.to_owned(), m.clone());
        prop_assert_eq!(decode_base64(&m.to_base64()).unwrap(), bytes);
    }

    #[test]
    fn decode_never_panics(data in bytes(600)) {
        let _ = Macaroon::decode(&data);
        let mut with_version = vec![2u8];
        with_version.extend_from_slice(&data);
        if let Ok(m) = Macaroon::decode(&with_version) {
            let _ = m.verify_signature(&[0; 32]);
            let _ = m.to_owned().encode();
        }
        let _ = farebox_l402::identifier::Identifier::decode(&data);
    }

    #[test]
    fn mutated_tokens_never_panic(m in macaroon(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = m.encode();
        let i = pos % bytes.len();
        bytes[i] = byte;
        let _ = Macaroon::decode(&bytes).map(|d| d.caveats().count());
    }

    #[test]
    fn header_strings_never_panic(s in "\\PC{0,300}", t in "(?i)(l402|lsat) [A-Za-z0-9+/=_,-]{0,200}:[0-9a-fA-F]{0,70}") {
        let v = verifier();
        let r = resource("GET", "/a/*", Money::sats(1));
        for text in [s.as_str(), t.as_str()] {
            let _ = credential::parse_credential(text);
            let _ = v.verify_token(text, &r, 1_700_000_000);
            let _ = decode_base64(text);
        }
    }
}
