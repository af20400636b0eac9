//! The MPP golden values (`specs/vectors/mpp/challenge_id.json`, from the mpp-tools conformance
//! suite): challenge ids in the 7- and 8-slot forms, the receipt encoding, the body digest; and
//! RFC 8785 (JCS): its Appendix B numbers and §3.2 examples, ECMAScript's own number output
//! (`data/jcs_numbers.txt`, written by node), and requests other SDKs canonicalized.

use farebox_mpp::challenge::{ChallengeKey, ChallengeParams, IdSlots};
use farebox_mpp::digest::{body_digest, digest_matches};
use farebox_mpp::{PaymentReceipt, jcs};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../../specs/vectors/mpp/challenge_id.json")).unwrap()
}

fn opt(v: &Value, k: &str) -> Option<String> {
    v[k].as_str().map(str::to_owned)
}

#[test]
fn every_challenge_id_vector_is_reproduced() {
    let all = vectors();
    let cases = all["challenge_id"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for c in cases {
        let label = c["label"].as_str().unwrap();
        let key = ChallengeKey::new(c["secret"].as_str().unwrap().as_bytes()).unwrap();
        let request = jcs::encode_b64_jcs(&c["request"]).unwrap();
        let (expires, digest, opaque, header) =
            (opt(c, "expires"), opt(c, "digest"), opt(c, "opaque"), opt(c, "header"));
        let slots = IdSlots {
            realm: c["realm"].as_str().unwrap(),
            method: c["method"].as_str().unwrap(),
            intent: c["intent"].as_str().unwrap(),
            request: &request,
            expires: expires.as_deref().unwrap_or(""),
            digest: digest.as_deref().unwrap_or(""),
            header: farebox_mpp::challenge::normalize_header(header.as_deref()),
            opaque: opaque.as_deref().unwrap_or(""),
        };
        let expected = c["expected_id"].as_str().unwrap();
        assert_eq!(key.compute_id(&slots), expected, "{label}");
        assert!(key.verify_id(&slots, expected), "{label}");
        let mut wrong = expected.to_string();
        wrong.replace_range(0..1, if expected.starts_with('A') { "B" } else { "A" });
        assert!(!key.verify_id(&slots, &wrong), "{label}: a changed id must not verify");
    }
}

#[test]
fn issued_challenges_carry_the_vector_ids() {
    // The same ids through the public issuing API (opaque there is a map, so that case is
    // covered by the slot-level test above).
    let all = vectors();
    for c in all["challenge_id"].as_array().unwrap().iter().filter(|c| c["opaque"].is_null()) {
        let key = ChallengeKey::new(c["secret"].as_str().unwrap().as_bytes()).unwrap();
        let ch = key
            .issue(ChallengeParams {
                realm: c["realm"].as_str().unwrap().into(),
                method: c["method"].as_str().unwrap().into(),
                intent: c["intent"].as_str().unwrap().into(),
                request: c["request"].clone(),
                expires: opt(c, "expires"),
                description: Some("not bound".into()),
                digest: opt(c, "digest"),
                opaque: None,
                header: opt(c, "header"),
            })
            .unwrap();
        assert_eq!(ch.id, c["expected_id"].as_str().unwrap(), "{}", c["label"]);
        let text = ch.to_header_value().unwrap();
        let back = farebox_mpp::parse_www_authenticate([text.to_str().unwrap()]).unwrap();
        assert!(key.verify_id(&back[0].slots(), &back[0].id), "{}", c["label"]);
    }
}

#[test]
fn jcs_of_the_vector_requests() {
    let all = vectors();
    let cases = all["challenge_id"].as_array().unwrap();
    assert_eq!(
        jcs::canonicalize(&cases[3]["request"]).unwrap(),
        r#"{"amount":"1500","currency":"USD","description":"Access <premium> & analytics","recipient":"merchant"}"#
    );
    assert_eq!(
        jcs::canonicalize(&cases[4]["request"]).unwrap(),
        "{\"amount\":\"100\",\"currency\":\"EUR\",\"description\":\"Payment for café ☕\",\"recipient\":\"0x1111111111111111111111111111111111111111\"}"
    );
}

#[test]
fn receipt_vector() {
    let all = vectors();
    let r: PaymentReceipt = serde_json::from_value(all["receipt"]["json"].clone()).unwrap();
    assert_eq!(r.encode(), all["receipt"]["header"].as_str().unwrap());
    let back = PaymentReceipt::decode(all["receipt"]["header"].as_str().unwrap()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.reference, "ref_123");
}

#[test]
fn digest_vector() {
    let all = vectors();
    let d = &all["digest"];
    let body = d["body"].as_str().unwrap().as_bytes();
    assert_eq!(body_digest(body), d["sdk"].as_str().unwrap());
    assert!(digest_matches(d["sdk"].as_str().unwrap(), body));
    assert!(digest_matches(d["rfc9530"].as_str().unwrap(), body));
}

/// RFC 8785 Appendix B: IEEE 754 bits and ECMAScript's serialization of them.
const RFC8785_APPENDIX_B: &[(u64, &str)] = &[
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7fefffffffffffff, "1.7976931348623157e+308"),
    (0xffefffffffffffff, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xc340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44b52d02c7e14af5, "9.999999999999997e+22"),
    (0x44b52d02c7e14af6, "1e+23"),
    (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
    (0x444b1ae4d6e2ef4e, "999999999999999700000"),
    (0x444b1ae4d6e2ef4f, "999999999999999900000"),
    (0x444b1ae4d6e2ef50, "1e+21"),
    (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
    (0x3eb0c6f7a0b5ed8d, "0.000001"),
    (0x41b3de4355555553, "333333333.3333332"),
    (0x41b3de4355555554, "333333333.33333325"),
    (0x41b3de4355555555, "333333333.3333333"),
    (0x41b3de4355555556, "333333333.3333334"),
    (0x41b3de4355555557, "333333333.33333343"),
    (0xbecbf647612f3696, "-0.0000033333333333333333"),
    (0x43143ff3c1cb0959, "1424953923781206.2"),
];

fn jcs_of_double(bits: u64) -> String {
    let n = serde_json::Number::from_f64(f64::from_bits(bits)).expect("finite");
    jcs::canonicalize(&Value::Number(n)).unwrap()
}

#[test]
fn jcs_writes_the_rfc_8785_appendix_b_numbers() {
    for &(bits, expected) in RFC8785_APPENDIX_B {
        assert_eq!(jcs_of_double(bits), expected, "{bits:016x}");
        // And a JCS number read back is written the same (the re-canonicalization case).
        let parsed: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(jcs::canonicalize(&parsed).unwrap(), expected, "{bits:016x}");
    }
    // NaN and the infinities cannot be held by a JSON value at all: the parse refuses them.
    assert!(serde_json::from_str::<Value>("1e400").is_err());
}

#[test]
fn jcs_numbers_match_what_ecmascript_writes() {
    let data = include_str!("data/jcs_numbers.txt");
    let mut count = 0;
    for line in data.lines() {
        let (hex, expected) = line.split_once(',').unwrap();
        let bits = u64::from_str_radix(hex, 16).unwrap();
        assert_eq!(jcs_of_double(bits), expected, "{hex}");
        let parsed: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(jcs::canonicalize(&parsed).unwrap(), expected, "re-read {hex}");
        count += 1;
    }
    assert!(count > 4000, "{count}");
}

#[test]
fn jcs_rfc_8785_examples() {
    // §3.2.2 (the number, string and literal example).
    let input = r#"{
      "numbers": [333333333.33333329, 1E30, 4.50,
                  2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    let v: Value = serde_json::from_str(input).unwrap();
    assert_eq!(
        jcs::canonicalize(&v).unwrap(),
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
    // §3.2.3 (property sorting by UTF-16 code units).
    let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
    let v: Value = serde_json::from_str(input).unwrap();
    assert_eq!(
        jcs::canonicalize(&v).unwrap(),
        "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
    );
}

#[test]
fn requests_other_sdks_canonicalized_are_reproduced_byte_for_byte() {
    // mpp-tools `www-authenticate.json` `nested_request` (a JSON number and a boolean inside).
    let nested = "eyJjdXJyZW5jeSI6IjB4MjBjMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMSIsImRlcG9zaXQiOiIxMDAwMDAwMCIsImVzY3Jvd0NvbnRyYWN0IjoiMHgxMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExIiwibWV0aG9kRGV0YWlscyI6eyJjaGFpbklkIjo0MjQzMSwiZmVlUGF5ZXIiOnRydWV9LCJyZWNpcGllbnQiOiIweDIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIiLCJ2b3VjaGVyRW5kcG9pbnQiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS92b3VjaGVycyJ9";
    // Written by node (JSON.stringify over sorted keys) from a request with a float, an
    // integer beyond 2^64, `1e21`, `1e-7`, `1.0` and `-0`.
    let floats = "eyJhbW91bnQiOiIxMDAwIiwibWV0aG9kRGV0YWlscyI6eyJiaWciOjEyMzQ1Njc4OTAxMjM0NTY3MDAwLCJjaGFpbklkIjo4NDUzLCJleGFjdCI6MSwiZmVlUmF0aW8iOjAuMSwibmVnWmVybyI6MCwic2NhbGUiOjFlKzIxLCJ0aGlyZCI6MC4zMzMzMzMzMzMzMzMzMzMzLCJ0aW55IjoxZS03fSwicmVjaXBpZW50IjoiMHgxMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExIn0";
    for wire in [nested, floats] {
        let request = farebox_mpp::challenge::decode_request(wire).unwrap();
        assert_eq!(jcs::encode_b64_jcs(&request).unwrap(), wire);
    }
    // So a challenge farebox issues for such a request carries the other SDK's bytes.
    let key = ChallengeKey::new(&[9; 32]).unwrap();
    let request = farebox_mpp::challenge::decode_request(floats).unwrap();
    let issued = key
        .issue(ChallengeParams {
            realm: "r".into(),
            method: "evm".into(),
            intent: "charge".into(),
            request,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(issued.request_b64, floats);
}
