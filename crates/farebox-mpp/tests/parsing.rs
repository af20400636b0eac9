//! `WWW-Authenticate: Payment` parsing: strict where the conformance vectors are strict
//! (duplicates, empty or missing required params, bad request encoding), permissive where they
//! are permissive (scheme case, whitespace, order, unknown params, other schemes alongside, an
//! unescaped quote), and one bad challenge never hides the others. Base64url is canonical in
//! every MPP header.

use farebox_mpp::challenge::{ChallengeError, ChallengeKey, ChallengeParams};
use farebox_mpp::credential::CredentialError;
use farebox_mpp::receipt::ReceiptError;
use farebox_mpp::{
    Credential, PaymentReceipt, jcs, parse_www_authenticate, read_www_authenticate,
    read_www_authenticate_from,
};
use serde_json::json;

const REQ: &str = "eyJhbW91bnQiOiIxMDAwMDAwIn0"; // {"amount":"1000000"}

fn one(text: &str) -> Result<farebox_mpp::Challenge, ChallengeError> {
    let mut v = parse_www_authenticate([text])?;
    assert!(v.len() <= 1);
    v.pop().ok_or(ChallengeError::NotPayment)
}

#[test]
fn the_request_constant_is_jcs() {
    assert_eq!(jcs::encode_b64_jcs(&json!({"amount": "1000000"})).unwrap(), REQ);
}

#[test]
fn permissive_on_case_whitespace_order_and_unknown_params() {
    let c = one(&format!(
        "payment   request = \"{REQ}\" ,intent=charge,  method=\"tempo\",x-future=\"1\", realm=\"api.example.com\" , id=\"abc\""
    ))
    .unwrap();
    assert_eq!(
        (c.id.as_str(), c.realm.as_str(), c.method.as_str(), c.intent.as_str()),
        ("abc", "api.example.com", "tempo", "charge")
    );
    assert_eq!(c.request["amount"], "1000000");
    assert_eq!(c.request_b64, REQ);
}

#[test]
fn quoted_string_escapes_are_unescaped() {
    let c = one(&format!(
        r#"Payment id="abc", realm="a \"quoted\" \\ realm", method="tempo", intent="charge", request="{REQ}""#
    ))
    .unwrap();
    assert_eq!(c.realm, r#"a "quoted" \ realm"#);
}

#[test]
fn strict_on_duplicates_empties_and_missing_params() {
    let ok = format!(r#"id="abc", realm="r", method="tempo", intent="charge", request="{REQ}""#);
    assert!(one(&format!("Payment {ok}")).is_ok());
    assert!(one(&format!(r#"Payment {ok}, id="again""#)).is_err(), "duplicate");
    assert!(one(&format!(r#"Payment {ok}, ID="again""#)).is_err(), "duplicate, other case");
    assert_eq!(
        one(&format!("Payment {}", ok.replace(r#"id="abc""#, r#"id="""#))).unwrap_err(),
        ChallengeError::Empty("id")
    );
    for name in ["id", "realm", "method", "intent", "request"] {
        let without: Vec<&str> =
            ok.split(", ").filter(|p| !p.starts_with(&format!("{name}="))).collect();
        assert_eq!(
            one(&format!("Payment {}", without.join(", "))).unwrap_err(),
            ChallengeError::Missing(name),
            "{name}"
        );
    }
    assert!(one("Payment").is_err(), "bare scheme");
    assert!(parse_www_authenticate([""]).unwrap().is_empty(), "no challenge at all");
}

#[test]
fn strict_on_request_method_intent_and_expires() {
    let with = |k: &str, v: &str| {
        let mut p = vec![
            ("id", "abc".to_string()),
            ("realm", "r".into()),
            ("method", "tempo".into()),
            ("intent", "charge".into()),
            ("request", REQ.into()),
        ];
        p.retain(|(n, _)| *n != k);
        p.push((Box::leak(k.to_string().into_boxed_str()), v.to_string()));
        let params: Vec<String> = p.iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect();
        one(&format!("Payment {}", params.join(", ")))
    };
    assert_eq!(with("request", "!!!").unwrap_err(), ChallengeError::NotBase64("request"));
    assert!(matches!(with("request", "bm90IGpzb24").unwrap_err(), ChallengeError::NotJson(..)));
    assert!(matches!(with("request", "W10").unwrap_err(), ChallengeError::NotJson(..)));
    assert_eq!(with("method", "Tempo").unwrap_err(), ChallengeError::InvalidMethod);
    assert_eq!(with("method", "tempo2").unwrap_err(), ChallengeError::InvalidMethod);
    assert_eq!(with("intent", "char ge").unwrap_err(), ChallengeError::InvalidIntent);
    assert!(with("intent", "session-v2").is_ok());
    assert!(matches!(with("expires", "tomorrow").unwrap_err(), ChallengeError::Expires(_)));
    assert!(with("expires", "2025-01-06T12:00:00Z").is_ok());
    assert!(matches!(with("opaque", "dHJhY2U").unwrap_err(), ChallengeError::NotJson("opaque", _)));
    assert_eq!(
        with("opaque", &jcs::b64url_encode(br#"{"a":1}"#)).unwrap_err(),
        ChallengeError::OpaqueNotStringMap
    );
    let big = "A".repeat(17 * 1024);
    assert!(with("request", &big).is_err());
}

#[test]
fn payment_keyword_inside_quotes_does_not_split() {
    let text = format!(
        r#"Payment id="a", realm="Payment realm, Payment id=x", method="tempo", intent="charge", request="{REQ}", description="pay with Payment id=\"z\"""#
    );
    let v = parse_www_authenticate([text.as_str()]).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].realm, "Payment realm, Payment id=x");
}

#[test]
fn several_offers_and_other_schemes() {
    let key = ChallengeKey::new(&[7; 32]).unwrap();
    let (a, b) = (offer(&key, "lightning"), offer(&key, "tempo"));
    let joined = format!("L402 macaroon=\"AgE=\", invoice=\"lnbc1\", {a}, Bearer realm=\"x\"");
    let v = parse_www_authenticate([joined.as_str(), b.as_str()]).unwrap();
    assert_eq!(v.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["lightning", "tempo"]);
    assert!(v.iter().all(|c| key.verify_id(&c.slots(), &c.id)));
}

#[test]
fn adversarial_backslashes_parse_fast_and_the_challenge_is_kept() {
    // mpp-tools `adversarial_unclosed_quoted_extension`: the unterminated extension is ignored.
    let text = format!(
        "Payment id=\"a\", realm=\"r\", method=\"tempo\", intent=\"charge\", request=\"{REQ}\", ext=\"{}",
        "\\".repeat(12_000)
    );
    let started = std::time::Instant::now();
    let c = one(&text).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!((c.id.as_str(), c.request_b64.as_str()), ("a", REQ));
}

#[test]
fn a_description_with_an_unescaped_quote_is_read_up_to_the_quote() {
    // mpp-tools `unescaped_quotes_in_description`.
    let c = one("Payment id=\"ch_special\", realm=\"api.example.com\", method=\"tempo\", intent=\"charge\", request=\"eyJhbW91bnQiOiIxMDAifQ\", description=\"Payment for \"Premium\" service \u{2014} 50% off!\"").unwrap();
    assert_eq!(c.description.as_deref(), Some("Payment for "));
    assert_eq!(c.request["amount"], "100");
}

fn offer(key: &ChallengeKey, method: &str) -> String {
    key.issue(ChallengeParams {
        realm: "r".into(),
        method: method.into(),
        intent: "charge".into(),
        request: json!({"amount": "1"}),
        ..Default::default()
    })
    .unwrap()
    .to_header_value()
    .unwrap()
    .to_str()
    .unwrap()
    .to_owned()
}

#[test]
fn one_malformed_payment_challenge_does_not_void_the_others() {
    let key = ChallengeKey::new(&[7; 32]).unwrap();
    let (lightning, evm) = (offer(&key, "lightning"), offer(&key, "evm"));
    let no_id = format!(r#"Payment realm="r", method="tempo", intent="charge", request="{REQ}""#);
    let bad_request =
        r#"Payment id="x", realm="r", method="tempo", intent="charge", request="YQ=""#;
    let duplicate = format!(
        r#"Payment id="x", id="y", realm="r", method="tempo", intent="charge", request="{REQ}""#
    );
    let broken = r#"Payment id="x", realm="r, method="tempo""#;
    // In one field line, in several, and with a broken line among them.
    let one_line = format!("{no_id}, {lightning}, {bad_request}, {duplicate}, {evm}");
    for lines in
        [vec![one_line.as_str()], vec![&no_id, &lightning, broken, bad_request, &duplicate, &evm]]
    {
        let read = read_www_authenticate(lines.iter().copied());
        let methods: Vec<&str> = read.challenges.iter().map(|c| c.method.as_str()).collect();
        assert_eq!(methods, ["lightning", "evm"], "{lines:?}");
        assert!(read.challenges.iter().all(|c| key.verify_id(&c.slots(), &c.id)));
        assert!(read.skipped.len() >= 3, "{:?}", read.skipped);
        assert!(read.skipped.contains(&ChallengeError::Missing("id")));
        assert!(read.skipped.contains(&ChallengeError::NotBase64("request")));
        assert_eq!(parse_www_authenticate(lines.iter().copied()).unwrap().len(), 2);
    }
    // With no valid one left, the Result says why.
    assert_eq!(
        parse_www_authenticate([no_id.as_str(), r#"Bearer realm="x"#]).unwrap_err(),
        ChallengeError::Missing("id")
    );
}

#[test]
fn a_response_with_a_latin1_description_is_still_read() {
    let key = ChallengeKey::new(&[7; 32]).unwrap();
    let valid = offer(&key, "lightning");
    let mut latin1 = valid.clone().into_bytes();
    latin1.extend_from_slice(b", description=\"caf\xe9\"");
    let mut headers = http::HeaderMap::new();
    headers.append(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_bytes(&latin1).unwrap());
    let read = read_www_authenticate_from(&headers);
    assert_eq!(read.challenges.len(), 1);
    assert!(key.verify_id(&read.challenges[0].slots(), &read.challenges[0].id));
}

#[test]
fn base64url_with_misplaced_padding_is_refused_everywhere() {
    // A request / opaque param with padding where none belongs.
    for (param, value) in [("request", "e30=="), ("request", "YQ="), ("opaque", "e30==")] {
        let text = format!(
            r#"Payment id="a", realm="r", method="tempo", intent="charge", request="{REQ}", {param}="{value}""#
        )
        .replacen(&format!(r#"request="{REQ}", request"#), "request", 1);
        assert_eq!(
            one(&text).unwrap_err(),
            ChallengeError::NotBase64(if param == "opaque" { "opaque" } else { "request" }),
            "{text}"
        );
    }
    // A credential: unpadded, or fully padded, decodes; anything else does not.
    let token = (0..3)
        .map(|n| {
            let cred = json!({"challenge": {"id": "abc", "realm": "r", "method": "lightning", "intent": "charge", "request": "e30"}, "payload": {}, "source": "s".repeat(n)});
            jcs::b64url_encode(cred.to_string().as_bytes())
        })
        .find(|t| t.len() % 4 == 2)
        .unwrap();
    assert_eq!(token.len() % 4, 2);
    assert!(Credential::decode(&token).is_ok());
    assert!(Credential::decode(&format!("{token}==")).is_ok());
    for bad in
        [format!("{token}="), format!("{token}==="), format!("{token}==A"), format!("{token}AAA")]
    {
        assert_eq!(Credential::decode(&bad).unwrap_err(), CredentialError::NotBase64, "{bad}");
    }
    // A receipt.
    let receipt = PaymentReceipt::success("lightning", "2026-01-01T00:00:00Z".into(), "r".into());
    let encoded = receipt.encode();
    assert_eq!(PaymentReceipt::decode(&encoded).unwrap(), receipt);
    let pad = match encoded.len() % 4 {
        2 => "=",
        3 => "==",
        _ => "=",
    };
    assert_eq!(
        PaymentReceipt::decode(&format!("{encoded}{pad}")).unwrap_err(),
        ReceiptError::NotBase64
    );
}
