//! Every golden value of `l402_macaroon.py` / l402.md §10, reproduced from
//! `specs/vectors/l402/macaroon.json`.

mod common;

use base64::Engine as _;
use common::*;
use farebox_l402::identifier::Identifier;
use farebox_l402::macaroon::{Macaroon, OwnedMacaroon, derive_key, hmac_sha256, signature_chain};
use sha2::{Digest, Sha256};

#[test]
fn identifier_and_hashes() {
    let v = vectors();
    let preimage = hex_field(&v, "preimage");
    let payment_hash = hex_field(&v, "payment_hash");
    assert_eq!(Sha256::digest(&preimage).to_vec(), payment_hash);
    let id = Identifier::new(arr32(&payment_hash), arr32(&hex_field(&v, "token_id")));
    assert_eq!(id.encode().to_vec(), hex_field(&v, "identifier"));
    assert_eq!(Identifier::decode(&hex_field(&v, "identifier")), Ok(id));
    assert_eq!(Sha256::digest(id.encode()).to_vec(), hex_field(&v, "identifier_sha256"));
}

#[test]
fn hmac_chain() {
    let v = vectors();
    let root = hex_field(&v, "root_key");
    let ident = hex_field(&v, "identifier");
    assert_eq!(derive_key(&root).to_vec(), hex_field(&v, "derived_key"));
    let mut sig = hmac_sha256(&derive_key(&root), &ident);
    assert_eq!(sig.to_vec(), hex_field(&v, "sig0"));
    let caveats: Vec<&str> =
        v["caveats"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for (c, expect) in caveats.iter().zip(v["chain"].as_array().unwrap()) {
        sig = hmac_sha256(&sig, c.as_bytes());
        assert_eq!(hex::encode(sig), expect.as_str().unwrap());
    }
    assert_eq!(sig.to_vec(), hex_field(&v, "signature"));
    assert_eq!(
        signature_chain(&root, &ident, caveats.iter().map(|c| c.as_bytes())).to_vec(),
        hex_field(&v, "signature")
    );
    // The spec's naive formula gives the documented, incompatible value.
    let mut naive = hmac_sha256(&root, &ident);
    for c in &caveats {
        naive = hmac_sha256(&naive, c.as_bytes());
    }
    assert_eq!(naive.to_vec(), hex_field(&v, "naive_spec_signature_wrong"));
}

fn golden() -> OwnedMacaroon {
    let v = vectors();
    let mut m =
        OwnedMacaroon::new(&hex_field(&v, "root_key"), &hex_field(&v, "identifier"), Some(b"lsat"));
    for c in v["caveats"].as_array().unwrap() {
        m.add_first_party_caveat(c.as_str().unwrap().as_bytes());
    }
    m
}

#[test]
fn v2_binary_and_base64() {
    let v = vectors();
    let m = golden();
    assert_eq!(m.encode(), hex_field(&v, "v2_hex"));
    assert_eq!(m.to_base64(), v["base64"].as_str().unwrap());
    let bytes = hex_field(&v, "v2_hex");
    let d = Macaroon::decode(&bytes).unwrap();
    assert_eq!(d.to_owned(), m);
    assert_eq!(d.location(), Some(&b"lsat"[..]));
    assert_eq!(d.caveat_count(), 3);
    d.verify_signature(&hex_field(&v, "root_key")).unwrap();
    // URL-safe unpadded form decodes to the same bytes.
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    assert_eq!(farebox_l402::macaroon::decode_base64(&url).unwrap(), bytes);
}

#[test]
fn paid_macaroon() {
    let v = vectors();
    let mut m = golden();
    m.add_first_party_caveat(v["paid_caveat"].as_str().unwrap().as_bytes());
    assert_eq!(m.encode(), hex_field(&v, "paid_v2_hex"));
    // Attenuation without the root key gives the same bytes.
    let att = farebox_l402::attenuate(
        v["base64"].as_str().unwrap(),
        &[v["paid_caveat"].as_str().unwrap()],
    )
    .unwrap();
    assert_eq!(farebox_l402::macaroon::decode_base64(&att).unwrap(), hex_field(&v, "paid_v2_hex"));
}

#[test]
fn minimal_and_libmacaroons() {
    let v = vectors();
    let min = &v["minimal"];
    let mut m = OwnedMacaroon::new(
        &hex::decode(min["root_key"].as_str().unwrap()).unwrap(),
        min["identifier_utf8"].as_str().unwrap().as_bytes(),
        None,
    );
    m.add_first_party_caveat(min["caveats"][0].as_str().unwrap().as_bytes());
    assert_eq!(hex::encode(m.encode()), min["v2_hex"].as_str().unwrap());

    let lib = &v["libmacaroons_readme"];
    let m = OwnedMacaroon::new(
        lib["root_key_utf8"].as_str().unwrap().as_bytes(),
        lib["identifier_utf8"].as_str().unwrap().as_bytes(),
        Some(lib["location"].as_str().unwrap().as_bytes()),
    );
    assert_eq!(hex::encode(m.signature), lib["signature"].as_str().unwrap());
}
