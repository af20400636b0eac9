//! The parsers never panic, whatever they are given, and what farebox writes it reads back.

use farebox_mpp::challenge::{ChallengeKey, ChallengeParams};
use farebox_mpp::{
    Credential, PaymentReceipt, jcs, parse_www_authenticate, read_www_authenticate, time,
};
use proptest::prelude::*;
use serde_json::json;

proptest! {
    #[test]
    fn challenge_parser_never_panics(s in "\\PC{0,400}") {
        let _ = parse_www_authenticate([s.as_str()]);
        let _ = parse_www_authenticate([format!("Payment {s}").as_str()]);
    }

    #[test]
    fn challenge_parser_never_panics_on_near_valid_input(
        id in "[A-Za-z0-9_\\-\"\\\\=, ]{0,40}",
        req in "[A-Za-z0-9_\\-=\"]{0,60}",
        extra in "[a-z=\", \\\\]{0,30}",
    ) {
        let text = format!(r#"Payment id="{id}", realm="r", method="lightning", intent="charge", request="{req}"{extra}"#);
        let _ = parse_www_authenticate([text.as_str()]);
    }

    #[test]
    fn credential_parser_never_panics(s in "\\PC{0,400}") {
        let _ = Credential::from_authorization(&s);
        let _ = Credential::from_authorization(&format!("Payment {s}"));
        let _ = Credential::decode(&jcs::b64url_encode(s.as_bytes()));
    }

    #[test]
    fn receipt_and_time_parsers_never_panic(s in "\\PC{0,200}") {
        let _ = PaymentReceipt::decode(&s);
        let _ = PaymentReceipt::decode(&jcs::b64url_encode(s.as_bytes()));
        let _ = time::parse(&s);
        let _ = jcs::b64url_decode(&s);
    }

    #[test]
    fn a_valid_challenge_is_read_whatever_field_lines_surround_it(
        before in "\\PC{0,120}",
        after in "\\PC{0,120}",
        desc in "[ -~]{0,40}",
    ) {
        let key = ChallengeKey::new(&[3; 32]).unwrap();
        let c = key.issue(ChallengeParams {
            realm: "r".into(),
            method: "lightning".into(),
            intent: "charge".into(),
            request: json!({"amount": "1"}),
            description: Some(desc),
            ..Default::default()
        }).unwrap();
        let header = c.to_header_value().unwrap();
        let read = read_www_authenticate([before.as_str(), header.to_str().unwrap(), after.as_str()]);
        prop_assert!(read.challenges.contains(&c), "{:?}", read);
    }

    #[test]
    fn canonical_base64url_has_one_spelling(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let text = jcs::b64url_encode(&bytes);
        prop_assert_eq!(jcs::b64url_decode(&text).unwrap(), bytes.clone());
        let padded = format!("{text}{}", "=".repeat((4 - text.len() % 4) % 4));
        prop_assert_eq!(jcs::b64url_decode(&padded).unwrap(), bytes);
        let surplus = format!("{padded}=");
        prop_assert!(jcs::b64url_decode(&surplus).is_err());
        if padded.len() > text.len() + 1 {
            prop_assert!(jcs::b64url_decode(&padded[..padded.len() - 1]).is_err());
        }
    }

    #[test]
    fn time_round_trips(t in 0u64..253_402_300_799) {
        prop_assert_eq!(time::parse(&time::format(t)).unwrap(), t);
    }

    #[test]
    fn issued_challenges_round_trip_and_verify(
        realm in "[ -~]{1,40}",
        amount in any::<u64>(),
        desc in "\\PC{0,40}",
        key_bytes in proptest::collection::vec(any::<u8>(), 32..64),
    ) {
        let key = ChallengeKey::new(&key_bytes).unwrap();
        let c = key.issue(ChallengeParams {
            realm,
            method: "lightning".into(),
            intent: "charge".into(),
            request: json!({"amount": amount.to_string(), "currency": "sat", "note": desc}),
            expires: Some(time::format(1_900_000_000)),
            ..Default::default()
        }).unwrap();
        let header = c.to_header_value().unwrap();
        let back = parse_www_authenticate([header.to_str().unwrap()]).unwrap();
        prop_assert_eq!(&back[0], &c);
        prop_assert!(key.verify_id(&back[0].slots(), &back[0].id));
    }
}
