//! `WWW-Authenticate: Payment` parsing: strict where the conformance vectors are strict
//! (duplicates, empty or missing required params, bad request encoding), permissive where they
//! are permissive (scheme case, whitespace, order, unknown params, other schemes alongside).

use farebox_mpp::challenge::{ChallengeError, ChallengeKey, ChallengeParams};
use farebox_mpp::{jcs, parse_www_authenticate};
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
    let mk = |m: &str| {
        key.issue(ChallengeParams {
            realm: "r".into(),
            method: m.into(),
            intent: "charge".into(),
            request: json!({"amount": "1"}),
            ..Default::default()
        })
        .unwrap()
        .to_header_value()
        .unwrap()
    };
    let (a, b) = (mk("lightning"), mk("tempo"));
    let joined = format!(
        "L402 macaroon=\"AgE=\", invoice=\"lnbc1\", {}, Bearer realm=\"x\"",
        a.to_str().unwrap()
    );
    let v = parse_www_authenticate([joined.as_str(), b.to_str().unwrap()]).unwrap();
    assert_eq!(v.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["lightning", "tempo"]);
    assert!(v.iter().all(|c| key.verify_id(&c.slots(), &c.id)));
}

#[test]
fn adversarial_backslashes_parse_fast() {
    let text = format!(
        "Payment id=\"a\", realm=\"r\", method=\"tempo\", intent=\"charge\", request=\"{REQ}\", ext=\"{}",
        "\\".repeat(12_000)
    );
    let started = std::time::Instant::now();
    let _ = parse_www_authenticate([text.as_str()]);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
