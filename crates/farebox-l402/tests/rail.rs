//! The L402 rail end to end: challenge, verify every failure mode, settle.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use common::*;
use farebox_core::auth::AuthCredential;
use farebox_core::time::unix_now;
use farebox_core::{ErrorKind, Money, PresentedCredential, Rail, Resource};
use farebox_l402::identifier::Identifier;
use farebox_l402::macaroon::{Macaroon, decode_base64};
use farebox_l402::{
    DerivedRootKeys, L402_RECEIPT, L402Config, L402Rail, L402Receipt, RootKeys, attenuate,
    format_credential,
};

const MASTER: [u8; 32] = [0x5a; 32];

fn rail() -> (Arc<L402Rail>, Arc<FixedBackend>) {
    let backend = FixedBackend::new();
    let config = L402Config::new("svc", Arc::new(DerivedRootKeys::new(&MASTER).unwrap()));
    (Arc::new(L402Rail::new(config, backend.clone()).unwrap()), backend)
}

fn ten_sat() -> Resource {
    resource("GET", "/v1/weather/*", Money::sats(10))
}

fn presented(value: String) -> PresentedCredential {
    PresentedCredential {
        header: http::header::AUTHORIZATION,
        auth: Some(AuthCredential { scheme: "L402".into(), token: None, params: vec![] }),
        value,
    }
}

/// A token minted by the rail for `r`, as the base64 the challenge carries.
fn token_for(rail: &L402Rail, r: &Resource, amount_msat: u64) -> String {
    let hash = arr32(&hex_field(&vectors(), "payment_hash"));
    rail.verifier().mint_token(hash, amount_msat, r, unix_now().unwrap()).unwrap().to_base64()
}

async fn verify(
    rail: &Arc<L402Rail>,
    r: &Resource,
    value: String,
) -> Result<farebox_core::Verified, farebox_core::PaymentError> {
    rail.clone().verify(r, &presented(value)).await.map(|verdict| match verdict {
        farebox_core::Verdict::Payment(payment) => payment,
        farebox_core::Verdict::Control(_) => panic!("an L402 token is payment, not control"),
    })
}

async fn code(rail: &Arc<L402Rail>, r: &Resource, value: String) -> &'static str {
    let e = verify(rail, r, value).await.expect_err("must be refused");
    assert_eq!(e.kind, ErrorKind::InvalidCredential, "{e}");
    assert!(!e.detail.is_empty());
    e.code
}

#[tokio::test]
async fn challenge_has_lsat_then_l402_with_the_same_token() {
    let (rail, _) = rail();
    assert_eq!(rail.auth_schemes(), ["L402", "LSAT"]);
    let ch = rail.challenge(&ten_sat(), None).await.unwrap().unwrap();
    assert_eq!(ch.www_authenticate.len(), 2);
    let lines: Vec<&str> = ch.www_authenticate.iter().map(|h| h.to_str().unwrap()).collect();
    let invoice = lines[0].split('"').nth(3).unwrap();
    let parsed = farebox_lightning::parse_invoice(invoice).unwrap();
    assert_eq!(parsed.payment_hash.to_vec(), hex_field(&vectors(), "payment_hash"));
    assert_eq!(parsed.amount_msat, Some(10_000));
    for (line, scheme) in lines.iter().zip(["LSAT", "L402"]) {
        let rest = line.strip_prefix(&format!("{scheme} macaroon=\"")).expect(line);
        let (mac, rest) = rest.split_once('"').unwrap();
        assert_eq!(rest, format!(", invoice=\"{invoice}\", version=\"0\", token=\"{mac}\""));
        let bytes = decode_base64(mac).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            mac,
            "standard padded base64"
        );
        let m = Macaroon::decode(&bytes).unwrap();
        let id = Identifier::decode(m.identifier()).unwrap();
        assert_eq!(id.payment_hash.to_vec(), hex_field(&vectors(), "payment_hash"));
        let cavs: Vec<String> =
            m.caveats().map(|c| String::from_utf8(c.id.to_vec()).unwrap()).collect();
        assert_eq!(
            cavs[..4],
            [
                "services=svc:0",
                "farebox_route=/v1/weather/*",
                "farebox_method=GET",
                "farebox_amount_msat=10000"
            ]
        );
        assert!(cavs[4].starts_with("svc_valid_until="));
        let until: u64 = cavs[4]["svc_valid_until=".len()..].parse().unwrap();
        assert!(until.abs_diff(unix_now().unwrap() + 3600) < 5);
    }
    // Both lines carry the same token; it verifies with the known preimage.
    let mac = lines[1].split('"').nth(1).unwrap();
    let ok = verify(&rail, &ten_sat(), format_credential(mac, &preimage())).await.unwrap();
    assert_eq!(ok.amount, Money::sats(10));
    // Fresh token ids: two challenges differ.
    let again = rail.challenge(&ten_sat(), None).await.unwrap().unwrap();
    assert_ne!(again.www_authenticate[1], ch.www_authenticate[1]);
}

#[tokio::test]
async fn challenge_client_side_parse() {
    let (rail, _) = rail();
    let ch = rail.challenge(&ten_sat(), None).await.unwrap().unwrap();
    let line = ch.www_authenticate[1].to_str().unwrap();
    let mac = line.split('"').nth(1).unwrap();
    let invoice = vectors()["bolt11"]["invoice"].as_str().unwrap().to_string();
    for key in ["macaroon", "token"] {
        let c = farebox_core::auth::AuthChallenge::new("l402")
            .param(key, mac)
            .param("invoice", &invoice);
        let parsed = farebox_l402::parse_challenge(&c).unwrap();
        assert_eq!(parsed.macaroon, mac);
        assert_eq!(parsed.invoice, invoice);
        assert_eq!(parsed.payment_hash.to_vec(), hex_field(&vectors(), "payment_hash"));
    }
    let no_inv = farebox_core::auth::AuthChallenge::new("L402").param("macaroon", mac);
    assert!(farebox_l402::parse_challenge(&no_inv).is_err());
    let other = farebox_core::auth::AuthChallenge::new("Payment")
        .param("macaroon", mac)
        .param("invoice", &invoice);
    assert!(farebox_l402::parse_challenge(&other).is_err());
    let junk = farebox_core::auth::AuthChallenge::new("L402")
        .param("macaroon", "AAAA")
        .param("invoice", &invoice);
    assert!(farebox_l402::parse_challenge(&junk).is_err());
}

#[tokio::test]
async fn no_bitcoin_price_no_challenge_and_backend_down_is_503() {
    let (rail, backend) = rail();
    let usdc = farebox_core::Token {
        network: "eip155:8453".into(),
        address: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
        symbol: "USDC".into(),
        decimals: 6,
    };
    let r = resource("GET", "/x", Money::new(farebox_core::Asset::Token(usdc), 10_000));
    assert!(rail.challenge(&r, None).await.unwrap().is_none());
    backend.down.store(true, Ordering::SeqCst);
    let e = rail.challenge(&ten_sat(), None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(e.code, "lightning_unavailable");
    assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(5)));
}

#[tokio::test]
async fn valid_token_verifies_and_settles() {
    let (rail, _) = rail();
    let r = ten_sat();
    let v = verify(&rail, &r, format_credential(&token_for(&rail, &r, 10_000), &preimage()))
        .await
        .unwrap();
    assert_eq!(v.amount, Money::msats(10_000));
    assert_eq!(v.reference, vectors()["payment_hash"].as_str().unwrap());
    assert_eq!(v.payer, None);
    let before = unix_now().unwrap();
    let receipt = v.settle(&r).await.unwrap();
    assert_eq!(receipt.amount, Money::sats(10));
    assert_eq!(receipt.reference, vectors()["payment_hash"].as_str().unwrap());
    // One header, L402-Receipt, that the client can read back.
    assert_eq!(receipt.headers.len(), 1);
    let (name, value) = &receipt.headers[0];
    assert_eq!(name, &L402_RECEIPT);
    assert_eq!(name.as_str(), "l402-receipt");
    let decoded = L402Receipt::decode(value.to_str().unwrap()).unwrap();
    assert_eq!(decoded.payment_hash, arr32(&hex_field(&vectors(), "payment_hash")));
    assert_eq!(decoded.amount_msat, 10_000);
    assert_eq!(decoded.service, "svc");
    assert!((before..=unix_now().unwrap()).contains(&decoded.timestamp));
}

#[tokio::test]
async fn receipt_header_is_base64url_of_compact_json() {
    let (rail, _) = rail();
    let r = ten_sat();
    let v = verify(&rail, &r, format_credential(&token_for(&rail, &r, 10_000), &preimage()))
        .await
        .unwrap();
    let receipt = v.settle(&r).await.unwrap();
    let value = receipt.headers[0].1.to_str().unwrap().to_string();
    // base64url, no padding.
    assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{value}");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&value).unwrap();
    let json = String::from_utf8(json).unwrap();
    // Compact, members in this order.
    let decoded = L402Receipt::decode(&value).unwrap();
    let expected = format!(
        r#"{{"status":"success","rail":"l402","reference":"{}","amountMsat":10000,"service":"svc","timestamp":"{}"}}"#,
        vectors()["payment_hash"].as_str().unwrap(),
        farebox_l402::receipt::format_rfc3339(decoded.timestamp),
    );
    assert_eq!(json, expected);
    let t: &str = json.split("\"timestamp\":\"").nth(1).unwrap();
    assert!(t.len() == "2025-01-06T12:00:00Z\"}".len() && t.ends_with("Z\"}"), "{t}");

    // A fixed receipt encodes to a fixed value, and decoding gives it back.
    let fixed = L402Receipt {
        payment_hash: arr32(&hex_field(&vectors(), "payment_hash")),
        amount_msat: 21_000,
        service: "weather".into(),
        timestamp: 1_736_164_800,
    };
    let text = r#"{"status":"success","rail":"l402","reference":"72dbb7336c76780023f83da4c355f2eeea85733b13d3477697917790c1229084","amountMsat":21000,"service":"weather","timestamp":"2025-01-06T12:00:00Z"}"#;
    assert_eq!(fixed.to_json(), text);
    assert_eq!(fixed.encode(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text));
    assert_eq!(L402Receipt::decode(&fixed.encode()), Ok(fixed.clone()));
    // Padded input and unknown members are tolerated.
    let padded = base64::engine::general_purpose::URL_SAFE.encode(text);
    assert_eq!(L402Receipt::decode(&padded), Ok(fixed.clone()));
    let extra = text.replacen('{', r#"{"note":"x","#, 1);
    let extra = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(extra);
    assert_eq!(L402Receipt::decode(&extra), Ok(fixed));
}

#[test]
fn receipt_decode_refusals() {
    use farebox_l402::ReceiptError as E;
    use farebox_l402::receipt::MAX_RECEIPT_LEN;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let good = r#"{"status":"success","rail":"l402","reference":"72dbb7336c76780023f83da4c355f2eeea85733b13d3477697917790c1229084","amountMsat":1,"service":"s","timestamp":"2025-01-06T12:00:00Z"}"#;
    assert!(L402Receipt::decode(&b64(good)).is_ok());
    assert_eq!(L402Receipt::decode(&"A".repeat(MAX_RECEIPT_LEN + 1)), Err(E::TooLarge));
    assert_eq!(L402Receipt::decode("!!!"), Err(E::NotBase64));
    assert!(matches!(L402Receipt::decode(&b64("[]")), Err(E::Json(_))));
    assert!(matches!(
        L402Receipt::decode(&b64(&good.replace(r#""amountMsat":1,"#, ""))),
        Err(E::Json(_))
    ));
    assert!(matches!(
        L402Receipt::decode(&b64(&good.replace(r#""amountMsat":1"#, r#""amountMsat":-1"#))),
        Err(E::Json(_))
    ));
    assert_eq!(
        L402Receipt::decode(&b64(&good.replace("success", "failed"))),
        Err(E::Status("failed".into()))
    );
    assert_eq!(
        L402Receipt::decode(&b64(&good.replace(r#""l402""#, r#""x402""#))),
        Err(E::Rail("x402".into()))
    );
    assert_eq!(L402Receipt::decode(&b64(&good.replace("72db", "zz"))), Err(E::Reference));
    assert_eq!(L402Receipt::decode(&b64(&good.replace("72db", "72"))), Err(E::Reference));
    assert_eq!(
        L402Receipt::decode(&b64(&good.replace("2025-01-06T12:00:00Z", "yesterday"))),
        Err(E::Timestamp)
    );
}

#[tokio::test]
async fn lenient_credential_forms() {
    let (rail, _) = rail();
    let r = ten_sat();
    let tok = token_for(&rail, &r, 10_000);
    let bytes = decode_base64(&tok).unwrap();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    let pre = hex::encode(preimage());
    for value in [
        format!("L402 {url}:{pre}"),
        format!("LSAT {tok}:{pre}"),
        format!("lsat {tok}:{}", pre.to_uppercase()),
        format!("l402   {tok} : {pre} "),
        format!("L402 {}:{pre}", tok.trim_end_matches('=')),
    ] {
        verify(&rail, &r, value.clone()).await.unwrap_or_else(|e| panic!("{value}: {e}"));
    }
}

#[tokio::test]
async fn multiple_macaroons_pick_the_one_matching_the_preimage() {
    let (rail, _) = rail();
    let r = ten_sat();
    let good = token_for(&rail, &r, 10_000);
    let other =
        rail.verifier().mint_token([1; 32], 10_000, &r, unix_now().unwrap()).unwrap().to_base64();
    let pre = hex::encode(preimage());
    verify(&rail, &r, format!("L402 {other},{good}:{pre}")).await.unwrap();
    verify(&rail, &r, format!("L402 {good}, {other}:{pre}")).await.unwrap();
    assert_eq!(code(&rail, &r, format!("L402 {other},{other}:{pre}")).await, "invalid_preimage");
}

#[tokio::test]
async fn refusals() {
    let (rail, _) = rail();
    let r = ten_sat();
    let pre = preimage();
    let tok = token_for(&rail, &r, 10_000);

    // Wrong preimage.
    assert_eq!(code(&rail, &r, format_credential(&tok, &[0x21; 32])).await, "invalid_preimage");
    // Tampered signature.
    let mut bytes = decode_base64(&tok).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = base64::engine::general_purpose::STANDARD.encode(&bytes);
    assert_eq!(code(&rail, &r, format_credential(&tampered, &pre)).await, "invalid_signature");
    // Appended caveat without re-chaining the signature.
    let mut owned = Macaroon::decode(&decode_base64(&tok).unwrap()).unwrap().to_owned();
    owned.caveats.push(farebox_l402::macaroon::OwnedCaveat {
        location: None,
        id: b"farebox_amount_msat=99999999".to_vec(),
        verification_id: None,
    });
    assert_eq!(
        code(&rail, &r, format_credential(&owned.to_base64(), &pre)).await,
        "invalid_signature"
    );
    // Another rail's master secret: the signature fails.
    let stranger = Arc::new(
        L402Rail::new(
            L402Config::new("svc", Arc::new(DerivedRootKeys::new(&[1; 32]).unwrap())),
            FixedBackend::new(),
        )
        .unwrap(),
    );
    assert_eq!(code(&stranger, &r, format_credential(&tok, &pre)).await, "invalid_signature");
    // Wrong service: a rail configured for another service name, same keys.
    let other_service = Arc::new(
        L402Rail::new(
            L402Config::new("other", Arc::new(DerivedRootKeys::new(&MASTER).unwrap())),
            FixedBackend::new(),
        )
        .unwrap(),
    );
    let e = verify(&other_service, &r, format_credential(&tok, &pre)).await.unwrap_err();
    // The `svc_valid_until` caveat is not understood by service "other" before or after the
    // services check; both are refusals. The services caveat comes first.
    assert_eq!(e.code, "wrong_service", "{e}");
    // Wrong route and method.
    assert_eq!(
        code(
            &rail,
            &resource("GET", "/v1/other/*", Money::sats(10)),
            format_credential(&tok, &pre)
        )
        .await,
        "wrong_route"
    );
    assert_eq!(
        code(
            &rail,
            &resource("POST", "/v1/weather/*", Money::sats(10)),
            format_credential(&tok, &pre)
        )
        .await,
        "wrong_method"
    );
    // Underpaid: a 5 sat token on a 10 sat route.
    let five = token_for(&rail, &resource("GET", "/v1/weather/*", Money::sats(5)), 5_000);
    assert_eq!(code(&rail, &r, format_credential(&five, &pre)).await, "insufficient_amount");
    // Malformed.
    for bad in [
        "L402 garbage".to_string(),
        format!("L402 {tok}:1234"),
        format!("L402 {tok}:{}", "zz".repeat(32)),
        format!("L402 !!!!:{}", hex::encode(pre)),
        format!("L402 AAAA:{}", hex::encode(pre)),
        "L402".to_string(),
    ] {
        assert_eq!(code(&rail, &r, bad.clone()).await, "malformed_credential", "{bad}");
    }
}

#[tokio::test]
async fn expired_and_unknown_caveats_and_versions() {
    let (rail, _) = rail();
    let r = ten_sat();
    let pre = preimage();
    let hash = arr32(&hex_field(&vectors(), "payment_hash"));
    let now = unix_now().unwrap();
    // Minted two hours ago with a one-hour lifetime.
    let old = rail.verifier().mint_token(hash, 10_000, &r, now - 7200).unwrap().to_base64();
    assert_eq!(code(&rail, &r, format_credential(&old, &pre)).await, "expired");
    // Unknown caveat, properly chained (fail closed).
    let tok = token_for(&rail, &r, 10_000);
    let foo = attenuate(&tok, &["foo=bar"]).unwrap();
    assert_eq!(code(&rail, &r, format_credential(&foo, &pre)).await, "unknown_caveat");
    let no_eq = attenuate(&tok, &["noequals"]).unwrap();
    assert_eq!(code(&rail, &r, format_credential(&no_eq, &pre)).await, "unknown_caveat");
    // Unknown identifier version: a properly signed macaroon with a version-1 identifier.
    let keys = DerivedRootKeys::new(&MASTER).unwrap();
    let id = Identifier::new(hash, [3; 32]);
    let mut idb = id.encode();
    idb[1] = 1;
    let m = farebox_l402::macaroon::OwnedMacaroon::new(&keys.root_key(&id).unwrap(), &idb, None);
    assert_eq!(code(&rail, &r, format_credential(&m.to_base64(), &pre)).await, "unknown_version");
    // A third-party caveat in a token we signed.
    let mut tp = Macaroon::decode(&decode_base64(&tok).unwrap()).unwrap().to_owned();
    tp.caveats.push(farebox_l402::macaroon::OwnedCaveat {
        location: Some(b"https://x".to_vec()),
        id: b"tp".to_vec(),
        verification_id: Some(vec![0; 72]),
    });
    assert_eq!(
        code(&rail, &r, format_credential(&tp.to_base64(), &pre)).await,
        "third_party_caveat"
    );
}

#[tokio::test]
async fn attenuation_is_enforced() {
    let (rail, _) = rail();
    let r = ten_sat();
    let pre = preimage();
    let tok = token_for(&rail, &r, 10_000);
    let now = unix_now().unwrap();
    // An earlier expiry narrows the token: passes while it holds...
    let later = attenuate(&tok, &[format!("svc_valid_until={}", now + 60)]).unwrap();
    verify(&rail, &r, format_credential(&later, &pre)).await.unwrap();
    // ...and fails once it has passed, though the minted expiry is an hour away.
    let past = attenuate(&tok, &[format!("svc_valid_until={}", now - 1)]).unwrap();
    assert_eq!(code(&rail, &r, format_credential(&past, &pre)).await, "expired");
    // A later expiry cannot widen it: both are enforced.
    let widened = rail
        .verifier()
        .mint_token(arr32(&hex_field(&vectors(), "payment_hash")), 10_000, &r, now - 7200)
        .unwrap()
        .to_base64();
    let widened = attenuate(&widened, &[format!("svc_valid_until={}", now + 86400)]).unwrap();
    assert_eq!(code(&rail, &r, format_credential(&widened, &pre)).await, "expired");
    // Restricting the method to the one used passes; to another fails.
    let get = attenuate(&tok, &["farebox_method=GET"]).unwrap();
    verify(&rail, &r, format_credential(&get, &pre)).await.unwrap();
    let post = attenuate(&tok, &["farebox_method=POST"]).unwrap();
    assert_eq!(code(&rail, &r, format_credential(&post, &pre)).await, "wrong_method");
    // Claiming a larger amount does not inflate what was paid.
    let more = attenuate(&tok, &["farebox_amount_msat=99999999"]).unwrap();
    assert_eq!(
        verify(&rail, &r, format_credential(&more, &pre)).await.unwrap().amount,
        Money::sats(10)
    );
}

/// A node that, like LNbits, hands out the preimages of unpaid invoices: the rail must ask it
/// whether the invoice is paid.
#[derive(Default)]
struct LeakyNode {
    paid: std::sync::atomic::AtomicBool,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl farebox_lightning::LightningBackend for LeakyNode {
    async fn create_invoice(
        &self,
        _: farebox_lightning::InvoiceRequest,
    ) -> Result<farebox_lightning::CreatedInvoice, farebox_lightning::LightningError> {
        Err(farebox_lightning::LightningError::Unsupported("not asked in this test"))
    }

    async fn invoice_state(
        &self,
        _: &farebox_lightning::PaymentHash,
    ) -> Result<farebox_lightning::InvoiceState, farebox_lightning::LightningError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(farebox_lightning::LightningError::Unavailable("down".into()));
        }
        Ok(if self.paid.load(Ordering::SeqCst) {
            farebox_lightning::InvoiceState::Settled { preimage: preimage(), amount_msat: 10_000 }
        } else {
            farebox_lightning::InvoiceState::Open
        })
    }

    async fn pay(
        &self,
        _: &str,
        _: u64,
    ) -> Result<farebox_lightning::PaymentOutcome, farebox_lightning::LightningError> {
        Err(farebox_lightning::LightningError::Unsupported("receive only"))
    }

    fn preimage_proves_payment(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_leaked_preimage_of_an_unpaid_invoice_buys_nothing_and_a_silent_node_is_503() {
    let node = Arc::new(LeakyNode::default());
    let config = L402Config::new("svc", Arc::new(DerivedRootKeys::new(&MASTER).unwrap()));
    let rail = Arc::new(L402Rail::new(config, node.clone()).unwrap());
    let r = ten_sat();
    let credential = || format_credential(&token_for(&rail, &r, 10_000), &preimage());
    // The right preimage, but the invoice is unpaid: refused.
    assert_eq!(code(&rail, &r, credential()).await, "invalid_preimage");
    // The node cannot say: 503 with Retry-After, never served on the preimage alone.
    node.down.store(true, Ordering::SeqCst);
    let e = verify(&rail, &r, credential()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.retry_after.is_some());
    // Paid: served.
    node.down.store(false, Ordering::SeqCst);
    node.paid.store(true, Ordering::SeqCst);
    let v = verify(&rail, &r, credential()).await.unwrap();
    assert_eq!(v.amount, Money::msats(10_000));
}
