//! Byte-for-byte interoperability with the `macaroon` crate (0.3.0), both ways.
//!
//! The crate's `MacaroonKey::from([u8; 32])` uses the bytes raw; `MacaroonKey::generate(root)`
//! applies libmacaroons' derivation, which is what go-macaroon, Aperture and farebox do.

mod common;

use base64::Engine as _;
use common::*;
use farebox_l402::identifier::Identifier;
use farebox_l402::macaroon::{Macaroon, OwnedMacaroon, decode_base64};
use macaroon::{ByteString, Format, MacaroonKey, Verifier};

const CAVEATS: [&str; 4] = [
    "services=myservice:0",
    "myservice_capabilities=read,write",
    "farebox_route=/v1/*",
    "myservice_valid_until=1893456000",
];

fn identifier() -> Vec<u8> {
    let v = vectors();
    Identifier::new(arr32(&hex_field(&v, "payment_hash")), arr32(&hex_field(&v, "token_id")))
        .encode()
        .to_vec()
}

fn crate_verifies(m: &macaroon::Macaroon, key: &MacaroonKey) -> bool {
    let mut verifier = Verifier::default();
    // The crate refuses caveats without a satisfier; L402 caveats are checked by farebox.
    verifier.satisfy_general(|_| true);
    verifier.verify(m, key, vec![]).is_ok()
}

#[test]
fn ours_deserializes_and_verifies_in_the_crate() {
    macaroon::initialize().unwrap();
    let root = hex_field(&vectors(), "root_key");
    let mut ours = OwnedMacaroon::new(&root, &identifier(), Some(b"lsat"));
    for c in CAVEATS {
        ours.add_first_party_caveat(c.as_bytes());
    }
    let theirs = macaroon::Macaroon::deserialize(ours.to_base64()).unwrap();
    assert_eq!(theirs.identifier(), ByteString(identifier()));
    assert_eq!(theirs.location().as_deref(), Some("lsat"));
    let preds: Vec<Vec<u8>> = theirs
        .first_party_caveats()
        .iter()
        .map(|c| match c {
            macaroon::Caveat::FirstParty(fp) => fp.predicate().0,
            macaroon::Caveat::ThirdParty(_) => panic!("third party"),
        })
        .collect();
    assert_eq!(preds, CAVEATS.iter().map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>());
    assert!(crate_verifies(&theirs, &MacaroonKey::generate(&root)));
    // The raw-key pitfall: no derivation, no match.
    assert!(!crate_verifies(&theirs, &MacaroonKey::from(arr32(&root))));
    // Re-serialised by the crate: the same bytes (it emits URL-safe base64).
    let again = decode_base64(&theirs.serialize(Format::V2).unwrap()).unwrap();
    assert_eq!(again, ours.encode());
}

#[test]
fn theirs_decodes_and_verifies_in_ours() {
    macaroon::initialize().unwrap();
    let root = hex_field(&vectors(), "root_key");
    let mut theirs = macaroon::Macaroon::create(
        Some("lsat".into()),
        &MacaroonKey::generate(&root),
        identifier().into(),
    )
    .unwrap();
    for c in CAVEATS {
        theirs.add_first_party_caveat(c.into());
    }
    let text = theirs.serialize(Format::V2).unwrap();
    let bytes = decode_base64(&text).unwrap();
    let ours = Macaroon::decode(&bytes).unwrap();
    ours.verify_signature(&root).unwrap();
    assert_eq!(ours.identifier(), identifier().as_slice());
    let ids: Vec<&[u8]> = ours.caveats().map(|c| c.id).collect();
    assert_eq!(ids, CAVEATS.iter().map(|c| c.as_bytes()).collect::<Vec<_>>());
    assert_eq!(&ours.signature()[..], &theirs.signature()[..]);
    // And our encoder reproduces the crate's bytes exactly.
    assert_eq!(ours.to_owned().encode(), bytes);
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&bytes),
        ours.to_owned().to_base64()
    );
    assert!(ours.verify_signature(&[9u8; 32]).is_err());
}

#[test]
fn crate_third_party_caveat_decodes_but_is_refused() {
    macaroon::initialize().unwrap();
    let root = hex_field(&vectors(), "root_key");
    let mut theirs = macaroon::Macaroon::create(
        Some("lsat".into()),
        &MacaroonKey::generate(&root),
        identifier().into(),
    )
    .unwrap();
    theirs.add_first_party_caveat("services=myservice:0".into());
    theirs.add_third_party_caveat(
        "https://auth.example",
        &MacaroonKey::generate(b"tp"),
        "tp-id".into(),
    );
    let bytes = decode_base64(&theirs.serialize(Format::V2).unwrap()).unwrap();
    let ours = Macaroon::decode(&bytes).unwrap();
    let tp = ours.caveats().nth(1).unwrap();
    assert!(!tp.is_first_party());
    assert_eq!(tp.location, Some(&b"https://auth.example"[..]));
    assert_eq!(ours.to_owned().encode(), bytes, "third-party caveats round-trip");
    assert_eq!(
        ours.verify_signature(&root),
        Err(farebox_l402::macaroon::MacaroonError::ThirdPartyCaveat(1))
    );
}
