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

// ---- the crate as an oracle for farebox's own tokens --------------------------------------------

use std::sync::Arc;

use farebox_core::time::unix_now;
use farebox_core::{ErrorKind, Money};
use farebox_l402::{DerivedRootKeys, L402Config, L402Verifier, RootKeys, format_credential};

/// A root-key source that knows one key (the vector's).
struct OneRootKey([u8; 32]);

impl RootKeys for OneRootKey {
    fn root_key(&self, _id: &Identifier) -> Option<[u8; 32]> {
        Some(self.0)
    }
}

fn refusal_code(
    verifier: &L402Verifier,
    value: &str,
    r: &farebox_core::Resource,
    now: u64,
) -> &'static str {
    let e = verifier.verify_token(value, r, now).expect_err("must be refused");
    assert_eq!(e.kind, ErrorKind::InvalidCredential, "{e}");
    e.code
}

#[test]
fn token_minted_by_the_crate_with_farebox_caveats_verifies_end_to_end() {
    macaroon::initialize().unwrap();
    let master = [0x5a; 32];
    let keys = DerivedRootKeys::new(&master).unwrap();
    let verifier =
        L402Verifier::new(L402Config::new("svc", Arc::new(keys.clone()))).expect("valid config");
    let r = resource("GET", "/v1/weather/*", Money::sats(10));
    let now = unix_now().unwrap();

    // The crate mints the token: farebox's identifier and root key, farebox's caveats.
    let id = Identifier::new(arr32(&hex_field(&vectors(), "payment_hash")), [0x11; 32]);
    let root = keys.root_key(&id).unwrap();
    let mint = |key: &MacaroonKey, caveats: &[String]| {
        let mut m =
            macaroon::Macaroon::create(Some("lsat".into()), key, id.encode().to_vec().into())
                .unwrap();
        for c in caveats {
            m.add_first_party_caveat(c.as_str().into());
        }
        m.serialize(Format::V2).unwrap()
    };
    let caveats = [
        farebox_l402::caveat::services("svc", 0),
        farebox_l402::caveat::route("/v1/weather/*"),
        farebox_l402::caveat::method("GET"),
        farebox_l402::caveat::amount_msat(10_000),
        farebox_l402::caveat::valid_until("svc", now + 600),
    ];
    let token = mint(&MacaroonKey::generate(&root), &caveats);
    // The crate writes URL-safe base64, which farebox accepts on input.
    assert!(token.contains(['-', '_']) || !token.contains(['+', '/']), "{token}");

    let ok = verifier.verify_token(&format_credential(&token, &preimage()), &r, now).unwrap();
    assert_eq!(ok.payment_hash, id.payment_hash);
    assert_eq!(ok.token_id, [0x11; 32]);
    assert_eq!(ok.amount_msat, 10_000);
    // The LSAT scheme too.
    let lsat = format!("LSAT {token}:{}", hex::encode(preimage()));
    assert!(verifier.verify_token(&lsat, &r, now).is_ok());

    // Wrong preimage: refused before the signature is even looked at.
    let wrong = format_credential(&token, &[0x21; 32]);
    assert_eq!(refusal_code(&verifier, &wrong, &r, now), "invalid_preimage");
    // The crate's raw-key constructor (no libmacaroons derivation) gives a token farebox does
    // not accept: the signature fails.
    let raw = mint(&MacaroonKey::from(root), &caveats);
    let raw = format_credential(&raw, &preimage());
    assert_eq!(refusal_code(&verifier, &raw, &r, now), "invalid_signature");
    // farebox's caveats minted by the crate are enforced like farebox's own.
    let cred = format_credential(&token, &preimage());
    assert_eq!(refusal_code(&verifier, &cred, &r, now + 600), "expired");
    let post = resource("POST", "/v1/weather/*", Money::sats(10));
    assert_eq!(refusal_code(&verifier, &cred, &post, now), "wrong_method");
    let other = resource("GET", "/v1/other/*", Money::sats(10));
    assert_eq!(refusal_code(&verifier, &cred, &other, now), "wrong_route");
    let dear = resource("GET", "/v1/weather/*", Money::sats(11));
    assert_eq!(refusal_code(&verifier, &cred, &dear, now), "insufficient_amount");
    let elsewhere = L402Verifier::new(L402Config::new("other", Arc::new(keys))).unwrap();
    assert_eq!(refusal_code(&elsewhere, &cred, &r, now), "wrong_service");
    // A caveat the crate adds that farebox does not know: fail closed.
    let mut extra = caveats.to_vec();
    extra.push("svc_tier=gold".into());
    let extra = format_credential(&mint(&MacaroonKey::generate(&root), &extra), &preimage());
    assert_eq!(refusal_code(&verifier, &extra, &r, now), "unknown_caveat");
}

#[test]
fn golden_authorization_line_parses_and_reaches_the_caveat_check() {
    let v = vectors();
    let line = v["authorization"].as_str().unwrap();
    // Exactly what `l402_macaroon.py` prints after `Authorization: `.
    assert_eq!(
        line,
        format!("L402 {}:{}", v["base64"].as_str().unwrap(), v["preimage"].as_str().unwrap())
    );

    // Core's header grammar sees an L402 credential with an opaque token…
    let auth = farebox_core::auth::parse_credential(line).unwrap();
    assert_eq!(auth.scheme, "L402");
    assert!(auth.params.is_empty());
    assert_eq!(auth.token.as_deref(), line.strip_prefix("L402 "));
    // …and the rail's parser splits it into the macaroon and the preimage.
    let cred = farebox_l402::credential::parse_credential(line).unwrap();
    assert_eq!(cred.scheme, "L402");
    assert_eq!(cred.macaroon_list().collect::<Vec<_>>(), [v["base64"].as_str().unwrap()]);
    assert_eq!(cred.preimage.to_vec(), hex_field(&v, "preimage"));
    let bytes = decode_base64(cred.macaroons).unwrap();
    assert_eq!(bytes, hex_field(&v, "v2_hex"));
    let m = Macaroon::decode(&bytes).unwrap();
    m.verify_signature(&hex_field(&v, "root_key")).unwrap();

    // The full verifier, holding the vector's root key, for the vector's service and
    // capabilities, before its `myservice_valid_until` (2030-01-01): preimage, signature,
    // services, capabilities and expiry all pass, and the token is refused only because it was
    // not minted by farebox and so carries no `farebox_amount_msat`.
    let mut config =
        L402Config::new("myservice", Arc::new(OneRootKey(arr32(&hex_field(&v, "root_key")))));
    config.capabilities = vec!["read".into(), "write".into()];
    let verifier = L402Verifier::new(config).unwrap();
    let r = resource("GET", "/v1/*", Money::sats(1));
    let before = 1_893_455_999;
    assert_eq!(refusal_code(&verifier, line, &r, before), "insufficient_amount");
    // At its expiry it is refused as expired; with another preimage, as not paid.
    assert_eq!(refusal_code(&verifier, line, &r, 1_893_456_000), "expired");
    let wrong = line.replace(v["preimage"].as_str().unwrap(), &"21".repeat(32));
    assert_eq!(refusal_code(&verifier, &wrong, &r, before), "invalid_preimage");
    // Another root key: the signature fails.
    let mut config = L402Config::new("myservice", Arc::new(OneRootKey([9; 32])));
    config.capabilities = vec!["read".into(), "write".into()];
    let stranger = L402Verifier::new(config).unwrap();
    assert_eq!(refusal_code(&stranger, line, &r, before), "invalid_signature");
}
