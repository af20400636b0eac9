//! RFC 9110 §11 auth grammar: real-world challenges and credentials, error offsets, bounds,
//! hostile inputs, the client's liberal reader, and property tests (write → parse round-trips,
//! the liberal reader agreeing with the strict parser, no panics).

use farebox_core::auth::{
    AuthChallenge, AuthCredential, HeaderError, MAX_CHALLENGES, MAX_HEADER_LEN, MAX_PARAMS,
    parse_challenges, parse_credential, read_challenges, read_challenges_from, scheme_of,
};
use proptest::prelude::*;

fn one(v: &str) -> Vec<AuthChallenge> {
    parse_challenges([v]).unwrap_or_else(|e| panic!("{v:?}: {e}"))
}

fn syntax_at(r: Result<impl std::fmt::Debug, HeaderError>) -> usize {
    match r {
        Err(HeaderError::Syntax { at, .. }) => at,
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn ch(scheme: &str, params: &[(&str, &str)]) -> AuthChallenge {
    params.iter().fold(AuthChallenge::new(scheme), |c, (k, v)| c.param(*k, *v))
}

// ---- challenges ------------------------------------------------------------------------------

#[test]
fn aperture_lsat_and_l402_lines() {
    let lsat = r#"LSAT macaroon="AgEEbHNhdAJCAAAh+/x==", invoice="lnbc10n1pjqwertypp5""#;
    let l402 = r#"L402 macaroon="AgEEbHNhdAJCAAAh+/x==", invoice="lnbc10n1pjqwertypp5", version="0", token="abc""#;
    let got = parse_challenges([lsat, l402]).unwrap();
    assert_eq!(
        got,
        vec![
            ch(
                "LSAT",
                &[("macaroon", "AgEEbHNhdAJCAAAh+/x=="), ("invoice", "lnbc10n1pjqwertypp5")]
            ),
            ch(
                "L402",
                &[
                    ("macaroon", "AgEEbHNhdAJCAAAh+/x=="),
                    ("invoice", "lnbc10n1pjqwertypp5"),
                    ("version", "0"),
                    ("token", "abc"),
                ]
            ),
        ]
    );
    assert_eq!(got[1].get("VERSION"), Some("0"));
}

#[test]
fn mpp_payment_challenge() {
    let v = r#"Payment id="abc", realm="api.example.com", method="evm", intent="charge", request="eyJhbW91bnQiOiIxMDAifQ", expires="2026-01-01T00:00:00Z""#;
    let got = one(v);
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert_eq!(p.scheme, "Payment");
    assert_eq!(p.token68, None);
    let names: Vec<&str> = p.params.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["id", "realm", "method", "intent", "request", "expires"]);
    assert_eq!(p.get("Expires"), Some("2026-01-01T00:00:00Z"));
    assert_eq!(p.get("request"), Some("eyJhbW91bnQiOiIxMDAifQ"));
    assert_eq!(p.to_string(), v);
}

#[test]
fn basic_and_bearer_in_one_line() {
    let got = one(r#"Basic realm="x", charset="UTF-8", Bearer"#);
    assert_eq!(got, vec![ch("Basic", &[("realm", "x"), ("charset", "UTF-8")]), ch("Bearer", &[])]);
    let got = one(r#"Bearer, Basic realm="x", charset="UTF-8""#);
    assert_eq!(got, vec![ch("Bearer", &[]), ch("Basic", &[("realm", "x"), ("charset", "UTF-8")])]);
    let got = one(r#"Bearer realm="api", error="invalid_token", Basic realm="x""#);
    assert_eq!(
        got,
        vec![
            ch("Bearer", &[("realm", "api"), ("error", "invalid_token")]),
            ch("Basic", &[("realm", "x")])
        ]
    );
}

#[test]
fn rfc_9110_example() {
    let got =
        one(r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#);
    assert_eq!(
        got,
        vec![
            ch("Newauth", &[("realm", "apps"), ("type", "1"), ("title", r#"Login to "apps""#)]),
            ch("Basic", &[("realm", "simple")]),
        ]
    );
}

#[test]
fn token68_challenges() {
    let got = one("Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg==, Basic realm=\"x\"");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].token68.as_deref(), Some("YIIBhwYGKwYBBQUCoIIBezCCAXeg=="));
    assert!(got[0].params.is_empty());
    assert_eq!(got[1], ch("Basic", &[("realm", "x")]));

    // `abc==` is a token68; `abc=` followed by a comma too (a parameter needs a value).
    assert_eq!(one("X abc==")[0].token68.as_deref(), Some("abc=="));
    let got = one("X abc=, Y a/b+c_d~e.f-")[..].to_vec();
    assert_eq!(got[0].token68.as_deref(), Some("abc="));
    assert_eq!(got[1].token68.as_deref(), Some("a/b+c_d~e.f-"));
    // ... but `a=b` is a parameter.
    assert_eq!(one("X a=b"), vec![ch("X", &[("a", "b")])]);
    // A token68 with a `/` is not a parameter name.
    assert_eq!(syntax_at(parse_challenges(["X a/b=c"])), 3);
    // Nothing may follow a token68 but a new element.
    assert_eq!(syntax_at(parse_challenges(["X abc def"])), 6);
    assert_eq!(syntax_at(parse_challenges(["X abc, d=e"])), 8);
}

#[test]
fn unquoted_values_escapes_and_whitespace() {
    let got = one("X a=tok!#$%&'*+-.^_`|~9, b = \"sp ace\" ,c\t=\t\"t\\\\ \\\"q\\\" \\x\"");
    assert_eq!(
        got,
        vec![ch("X", &[("a", "tok!#$%&'*+-.^_`|~9"), ("b", "sp ace"), ("c", "t\\ \"q\" x")])]
    );
    // Tab after the scheme is accepted, as is surrounding whitespace.
    assert_eq!(one(" \tX\ta=b \t"), vec![ch("X", &[("a", "b")])]);
    // obs-text inside quoted strings is kept.
    assert_eq!(one("X a=\"caf\u{e9}\"")[0].get("a"), Some("caf\u{e9}"));
    assert_eq!(one("X a=\"\"")[0].get("a"), Some(""));
}

#[test]
fn empty_elements_are_tolerated() {
    assert_eq!(one(""), vec![]);
    assert_eq!(one(" , ,, "), vec![]);
    assert_eq!(parse_challenges([]).unwrap(), vec![]);
    assert_eq!(parse_challenges(["", "  ", ","]).unwrap(), vec![]);
    let got = one(", X a=b, , c=d,, ,Y ,, Z e=\"f\",");
    assert_eq!(got, vec![ch("X", &[("a", "b"), ("c", "d")]), ch("Y", &[]), ch("Z", &[("e", "f")])]);
}

#[test]
fn several_field_lines_combine() {
    let got = parse_challenges(["A", "", "B t68==", "C x=\"1\", D"]).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[1].token68.as_deref(), Some("t68=="));
    assert_eq!(got[3], ch("D", &[]));
    // Offsets are into the lines joined with ", ".
    assert_eq!(syntax_at(parse_challenges(["A b=c", "=x"])), 7);
}

#[test]
fn challenge_errors_carry_offsets() {
    // unterminated quote: expected the closing quote at the end
    assert_eq!(syntax_at(parse_challenges([r#"X a="abc"#])), 8);
    assert_eq!(syntax_at(parse_challenges([r#"X a="abc\"#])), 9);
    // missing scheme
    assert_eq!(syntax_at(parse_challenges([r#"="x""#])), 0);
    assert_eq!(syntax_at(parse_challenges([r#" "x""#])), 1);
    // `=` without a name
    assert_eq!(syntax_at(parse_challenges([r#"X a=b, =c"#])), 7);
    assert_eq!(syntax_at(parse_challenges([r#"X =c"#])), 2);
    // duplicate parameter (case-insensitive), reported at the second name
    assert_eq!(syntax_at(parse_challenges([r#"X realm="a", Realm="b""#])), 13);
    // missing value, garbage after a value, scheme glued to something
    assert_eq!(syntax_at(parse_challenges(["X a=b, c="])), 9);
    assert_eq!(syntax_at(parse_challenges([r#"X a="b"c"#])), 7);
    assert_eq!(syntax_at(parse_challenges([r#"X"a""#])), 1);
    // control characters, non-ASCII outside quotes
    assert_eq!(syntax_at(parse_challenges(["X a=\"\u{1}\""])), 5);
    assert_eq!(syntax_at(parse_challenges(["X a=\"\\\u{7f}\""])), 6);
    assert_eq!(syntax_at(parse_challenges(["X a=caf\u{e9}"])), 7);
    assert_eq!(syntax_at(parse_challenges(["X\u{e9}"])), 1);
    // A parameter-ish element after a scheme without SP is not a challenge.
    assert_eq!(syntax_at(parse_challenges([r#"Basic, realm="x""#])), 12);
    let e = parse_challenges([r#"X a="abc"#]).unwrap_err();
    assert!(e.to_string().contains("byte 8"), "{e}");
}

#[test]
fn a_trailing_lone_token_is_a_scheme() {
    assert_eq!(one("X a=b, c"), vec![ch("X", &[("a", "b")]), ch("c", &[])]);
}

#[test]
fn limits() {
    let big = format!("X a=\"{}\"", "v".repeat(MAX_HEADER_LEN));
    assert_eq!(parse_challenges([big.as_str()]), Err(HeaderError::TooLarge));
    let half = format!("X a=\"{}\"", "v".repeat(MAX_HEADER_LEN / 2));
    assert_eq!(parse_challenges([half.as_str(), half.as_str()]), Err(HeaderError::TooLarge));
    assert_eq!(parse_challenges([half.as_str()]).unwrap().len(), 1);

    let ok = vec!["S"; MAX_CHALLENGES].join(", ");
    assert_eq!(one(&ok).len(), MAX_CHALLENGES);
    let too_many = vec!["S"; MAX_CHALLENGES + 1].join(", ");
    assert_eq!(syntax_at(parse_challenges([too_many.as_str()])), ok.len() + 2);
    let lines = vec!["S"; MAX_CHALLENGES + 1];
    assert!(parse_challenges(lines).is_err());

    let params = |n: usize| {
        let list: Vec<String> = (0..n).map(|i| format!("p{i}=v")).collect();
        format!("X {}", list.join(", "))
    };
    assert_eq!(one(&params(MAX_PARAMS))[0].params.len(), MAX_PARAMS);
    assert!(matches!(
        parse_challenges([params(MAX_PARAMS + 1).as_str()]),
        Err(HeaderError::Syntax { .. })
    ));
    assert!(matches!(parse_credential(&params(MAX_PARAMS + 1)), Err(HeaderError::Syntax { .. })));
    assert_eq!(parse_credential(&params(MAX_PARAMS)).unwrap().params.len(), MAX_PARAMS);

    let big = format!("X {}", "a".repeat(MAX_HEADER_LEN));
    assert_eq!(parse_credential(&big), Err(HeaderError::TooLarge));
}

#[test]
fn hostile_inputs_finish() {
    let n = MAX_HEADER_LEN;
    let inputs = [
        "a=,".repeat(n / 3),
        format!("X {}", "a=,".repeat(n / 3 - 1)),
        format!("X a{}", "=".repeat(n - 4)),
        "\"\\\"".repeat(n / 3),
        format!("X a=\"{}", "\\\"".repeat(n / 2 - 4)),
        ",".repeat(n),
        format!("X {}", " ".repeat(n - 3)),
        format!("X a{}=", " ".repeat(n - 4)),
        format!("X a={}", "b".repeat(n - 4)),
        format!("X {}", "p, ".repeat(n / 3 - 1)),
        format!("X {}", "a/".repeat(n / 2 - 1)),
    ];
    for s in &inputs {
        assert!(s.len() <= n, "{}", s.len());
        let _ = parse_challenges([s.as_str()]);
        let _ = parse_challenges([s.as_str(), ""]);
        let _ = parse_credential(s);
        let _ = scheme_of(s);
    }
    assert_eq!(one(&",".repeat(n)), vec![]);
}

// ---- the client's liberal reader -------------------------------------------------------------

fn read(lines: &[&str]) -> (Vec<AuthChallenge>, usize) {
    let r = read_challenges(lines.iter().copied());
    (r.challenges, r.skipped.len())
}

#[test]
fn one_malformed_challenge_does_not_hide_the_others() {
    // A duplicate parameter spoils the first Payment challenge only.
    let line = r#"Payment id="a", realm="r", id="dup", Payment id="b", realm="r2", L402 macaroon="m", invoice="i""#;
    assert!(parse_challenges([line]).is_err());
    let (got, skipped) = read(&[line]);
    assert_eq!(
        got,
        vec![
            ch("Payment", &[("id", "b"), ("realm", "r2")]),
            ch("L402", &[("macaroon", "m"), ("invoice", "i")])
        ]
    );
    assert_eq!(skipped, 1);
    // A scheme glued to a quoted string, a token68 with something after it, a parameter name
    // with a `/`: each spoils its own challenge, with its parameters.
    for bad in [r#"X"a" b="c""#, "X abc def, b=c", r#"X a/b="c", d="e""#] {
        let line = format!("{bad}, Y k=\"v\"");
        let (got, skipped) = read(&[line.as_str()]);
        assert_eq!(got, vec![ch("Y", &[("k", "v")])], "{line}");
        assert!(skipped >= 1, "{line}");
    }
}

#[test]
fn an_unescaped_quote_ends_the_value_and_the_rest_is_ignored() {
    // mpp-tools `unescaped_quotes_in_description`.
    let line = "Payment id=\"ch_special\", realm=\"api.example.com\", method=\"tempo\", intent=\"charge\", request=\"eyJhbW91bnQiOiIxMDAifQ\", description=\"Payment for \"Premium\" service \u{2014} 50% off!\"";
    let (got, _) = read(&[line]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].get("description"), Some("Payment for "));
    assert_eq!(got[0].get("request"), Some("eyJhbW91bnQiOiIxMDAifQ"));
    // Stray text with a comma inside quotes does not start a new element.
    let (got, _) = read(&[r#"X a="Pay "now, please" ok", b="c", Y"#]);
    assert_eq!(got, vec![ch("X", &[("a", "Pay "), ("b", "c")]), ch("Y", &[])]);
}

#[test]
fn an_unterminated_parameter_is_dropped_and_its_challenge_kept() {
    // mpp-tools `adversarial_unclosed_quoted_extension`: 12 000 backslashes, no closing quote.
    let line = format!(
        r#"Payment id="ch_redos", realm="api.example.com", method="tempo", intent="charge", request="e30", fuzz="{}"#,
        "\\".repeat(12_000)
    );
    let (got, skipped) = read(&[line.as_str()]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].params.len(), 5);
    assert_eq!(got[0].get("fuzz"), None);
    assert_eq!(skipped, 1);
    // Missing values and control characters in quoted strings drop just that parameter.
    let (got, skipped) = read(&["X k=v, a=, b=\"\u{1}\", c=d, =e"]);
    assert_eq!(got, vec![ch("X", &[("k", "v"), ("c", "d")])]);
    assert_eq!(skipped, 3);
}

#[test]
fn a_broken_field_line_does_not_swallow_the_next() {
    let lines = [r#"Payment id="a, realm="r""#, r#"Bearer realm="x""#, "Basic"];
    assert!(parse_challenges(lines).is_err());
    let (got, _) = read(&lines);
    assert_eq!(got[1..], [ch("Bearer", &[("realm", "x")]), ch("Basic", &[])]);
    // Parameters with no challenge before them belong to none.
    let (got, skipped) = read(&["a=b, X c=d", "e=f", "Bearer, g=h"]);
    assert_eq!(got, vec![ch("X", &[("c", "d")]), ch("Bearer", &[])]);
    assert_eq!(skipped, 3);
}

#[test]
fn the_liberal_reader_keeps_the_bounds() {
    let many = vec!["S"; MAX_CHALLENGES + 5].join(", ");
    let r = read_challenges([many.as_str(), "T"]);
    assert_eq!(r.challenges.len(), MAX_CHALLENGES);
    assert!(!r.skipped.is_empty());
    let params: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
    let line = format!("X {}, Y", params.join(", "));
    assert_eq!(read(&[line.as_str()]).0, vec![ch("Y", &[])]);
    let big = format!("X a=\"{}\"", "v".repeat(MAX_HEADER_LEN));
    let r = read_challenges(["Y", big.as_str(), "Z"]);
    assert_eq!(r.challenges, vec![ch("Y", &[])]);
    assert_eq!(r.skipped, vec![HeaderError::TooLarge]);
}

#[test]
fn fields_that_are_not_utf8_are_still_read() {
    let mut headers = http::HeaderMap::new();
    headers.append(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_bytes(b"X a=\"caf\xe9\", b=c").unwrap(),
    );
    headers.append(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Y"));
    let r = read_challenges_from(&headers);
    assert_eq!(r.challenges, vec![ch("X", &[("a", "caf\u{fffd}"), ("b", "c")]), ch("Y", &[])]);
}

// ---- writing ---------------------------------------------------------------------------------

#[test]
fn writing_challenges() {
    let c = AuthChallenge::new("L402").param("macaroon", "AgE=").param("invoice", "lnbc1");
    assert_eq!(c.to_header_value().unwrap(), r#"L402 macaroon="AgE=", invoice="lnbc1""#);
    assert_eq!(AuthChallenge::new("Bearer").to_header_value().unwrap(), "Bearer");
    let t = AuthChallenge::new("Negotiate").with_token68("abc+/==");
    assert_eq!(t.to_header_value().unwrap(), "Negotiate abc+/==");
    let tab = AuthChallenge::new("X").param("a", "b\tc");
    assert_eq!(one(tab.to_header_value().unwrap().to_str().unwrap()), vec![tab]);

    let bad =
        |c: AuthChallenge| matches!(c.to_header_value(), Err(HeaderError::Unrepresentable(_)));
    assert!(bad(AuthChallenge::new("X").param("a", "line\nbreak")));
    assert!(bad(AuthChallenge::new("X").param("a", "nul\0")));
    assert!(bad(AuthChallenge::new("X").param("a", "del\u{7f}")));
    assert!(bad(AuthChallenge::new("X").param("a", "caf\u{e9}")));
    assert!(bad(AuthChallenge::new("X").param("a b", "v")));
    assert!(bad(AuthChallenge::new("X").param("", "v")));
    assert!(bad(AuthChallenge::new("X").param("a", "1").param("A", "2")));
    assert!(bad(AuthChallenge::new("X Y")));
    assert!(bad(AuthChallenge::new("")));
    assert!(bad(AuthChallenge::new("X").with_token68("a=b")));
    assert!(bad(AuthChallenge::new("X").with_token68("t").param("a", "b")));
    let many = (0..=MAX_PARAMS).fold(AuthChallenge::new("X"), |c, i| c.param(format!("p{i}"), "v"));
    assert!(bad(many));
    let huge = AuthChallenge::new("X").param("a", "v".repeat(MAX_HEADER_LEN));
    assert_eq!(huge.to_header_value(), Err(HeaderError::TooLarge));
}

// ---- credentials -----------------------------------------------------------------------------

fn cred(v: &str) -> AuthCredential {
    parse_credential(v).unwrap_or_else(|e| panic!("{v:?}: {e}"))
}

#[test]
fn l402_and_lsat_credentials_are_tokens() {
    let c = cred("L402 AgEAAA==:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    assert_eq!(c.scheme, "L402");
    assert_eq!(
        c.token.as_deref(),
        Some("AgEAAA==:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );
    assert!(c.params.is_empty());
    let c = cred("LSAT a,b:cafe");
    assert_eq!((c.scheme.as_str(), c.token.as_deref()), ("LSAT", Some("a,b:cafe")));
    let c = cred("  L402   AgE=,AgF=:cafe  ");
    assert_eq!(c.token.as_deref(), Some("AgE=,AgF=:cafe"));
}

#[test]
fn payment_credentials_are_tokens() {
    assert_eq!(cred("Payment eyJhIjoxfQ").token.as_deref(), Some("eyJhIjoxfQ"));
    assert_eq!(cred("Payment eyJhIjoxfQ==").token.as_deref(), Some("eyJhIjoxfQ=="));
    assert_eq!(cred("Payment eyJhIjoxfQ=").token.as_deref(), Some("eyJhIjoxfQ="));
    assert_eq!(cred("Basic dXNlcjpwYXNz").token.as_deref(), Some("dXNlcjpwYXNz"));
}

#[test]
fn param_credentials() {
    let c = cred(r#"Digest username="a", realm="b""#);
    assert_eq!(c.scheme, "Digest");
    assert_eq!(c.token, None);
    assert_eq!(c.params, vec![("username".into(), "a".into()), ("realm".into(), "b".into())]);
    assert_eq!(c.get("REALM"), Some("b"));
    let c = cred(r#"X a = b ,, c="q\"x" ,"#);
    assert_eq!(c.params, vec![("a".into(), "b".into()), ("c".into(), "q\"x".into())]);
    assert_eq!(cred("X a=b").params, vec![("a".into(), "b".into())]);
    // Not a whole parameter list: lenient token.
    assert_eq!(cred("X a=b c").token.as_deref(), Some("a=b c"));
    assert_eq!(cred(r#"X a="unterminated"#).token.as_deref(), Some(r#"a="unterminated"#));
    // A well-formed list that repeats a name is an error, not a token.
    assert!(matches!(parse_credential("X a=1, A=2"), Err(HeaderError::Syntax { at: 7, .. })));
    // ... but a repeated name in something that is not a list is just a token.
    assert_eq!(cred("X a=1, a=2 :z").token.as_deref(), Some("a=1, a=2 :z"));
}

#[test]
fn bare_scheme_and_credential_errors() {
    let c = cred("Bearer");
    assert_eq!((c.scheme.as_str(), c.token.as_deref(), c.params.len()), ("Bearer", None, 0));
    assert_eq!(cred(" Bearer  ").scheme, "Bearer");
    assert_eq!(syntax_at(parse_credential("")), 0);
    assert_eq!(syntax_at(parse_credential("   ")), 3);
    assert_eq!(syntax_at(parse_credential(":abc")), 0);
    assert_eq!(syntax_at(parse_credential("L402:abc")), 4);
    assert_eq!(syntax_at(parse_credential("L402 abc\u{1}def")), 8);
    assert_eq!(syntax_at(parse_credential("L402 ab\u{e9}")), 7);
    assert_eq!(syntax_at(parse_credential("L402 ab\ncd")), 7);
}

#[test]
fn scheme_of_finds_the_leading_token() {
    assert_eq!(scheme_of("L402 abc:def"), Some("L402"));
    assert_eq!(scheme_of("  \tPayment eyJ"), Some("Payment"));
    assert_eq!(scheme_of("Bearer"), Some("Bearer"));
    assert_eq!(scheme_of(""), None);
    assert_eq!(scheme_of("   "), None);
    assert_eq!(scheme_of("\"x\""), None);
    assert_eq!(scheme_of("\u{e9}t\u{e9}"), None);
}

// ---- properties ------------------------------------------------------------------------------

const TCHAR: &str = "[!#$%&'*+.^_`|~0-9A-Za-z-]";

fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{TCHAR}{{1,{max}}}")).unwrap()
}

fn challenge() -> impl Strategy<Value = AuthChallenge> {
    let value = proptest::string::string_regex("[\\t -~]{0,24}").unwrap();
    let params = proptest::collection::vec((token(8), value), 0..6).prop_map(|ps| {
        let mut seen: Vec<(String, String)> = Vec::new();
        for (k, v) in ps {
            if !seen.iter().any(|(s, _)| s.eq_ignore_ascii_case(&k)) {
                seen.push((k, v));
            }
        }
        seen
    });
    let t68 = proptest::string::string_regex("[A-Za-z0-9._~+/-]{1,24}={0,3}").unwrap();
    (token(10), prop_oneof![params.prop_map(Ok), t68.prop_map(Err)]).prop_map(|(scheme, body)| {
        match body {
            Ok(params) => AuthChallenge { scheme, token68: None, params },
            Err(t) => AuthChallenge { scheme, token68: Some(t), params: Vec::new() },
        }
    })
}

/// Strings made of the grammar's interesting characters, to reach deep into the parsers.
fn grammarish() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-cA=,\" \\t\\\\/:\\x00\\x7f\u{e9}\u{1F600}]{0,48}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn write_then_parse_round_trips(chs in proptest::collection::vec(challenge(), 1..6)) {
        let lines: Vec<String> = chs
            .iter()
            .map(|c| c.to_header_value().unwrap().to_str().unwrap().to_owned())
            .collect();
        for (c, l) in chs.iter().zip(&lines) {
            prop_assert_eq!(&c.to_string(), l);
        }
        // one challenge per field line
        prop_assert_eq!(&parse_challenges(lines.iter().map(String::as_str)).unwrap(), &chs);
        // all challenges in one field line
        let joined = lines.join(", ");
        prop_assert_eq!(&parse_challenges([joined.as_str()]).unwrap(), &chs);
        let tight = lines.join(",");
        prop_assert_eq!(&parse_challenges([tight.as_str()]).unwrap(), &chs);
        // the liberal reader reads the same, skipping nothing
        for input in [lines.iter().map(String::as_str).collect::<Vec<_>>(), vec![joined.as_str()], vec![tight.as_str()]] {
            let r = read_challenges(input);
            prop_assert_eq!(&r.challenges, &chs);
            prop_assert!(r.skipped.is_empty());
        }
        // each as a credential
        for c in &chs {
            let l = c.to_string();
            let got = parse_credential(&l).unwrap();
            prop_assert_eq!(&got.scheme, &c.scheme);
            prop_assert_eq!(scheme_of(&l), Some(c.scheme.as_str()));
            if c.params.is_empty() {
                prop_assert_eq!(&got.token, &c.token68);
            } else {
                prop_assert_eq!(&got.params, &c.params);
            }
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(a in "\\PC*", b in any::<String>()) {
        let _ = read_challenges([a.as_str(), b.as_str()]);
        let _ = parse_challenges([a.as_str()]);
        let _ = parse_challenges([a.as_str(), b.as_str()]);
        let _ = parse_credential(&a);
        let _ = parse_credential(&b);
        let _ = scheme_of(&a);
        let _ = scheme_of(&b);
    }

    #[test]
    fn grammar_soup_never_panics(a in grammarish(), b in grammarish()) {
        let _ = parse_challenges([a.as_str()]);
        let _ = parse_challenges([a.as_str(), b.as_str()]);
        let _ = parse_credential(&a);
        let _ = scheme_of(&a);
        let liberal = read_challenges([a.as_str(), b.as_str()]);
        prop_assert!(liberal.challenges.len() <= MAX_CHALLENGES);
        // whatever parses strictly reads the same liberally, with nothing skipped
        if let Ok(chs) = parse_challenges([a.as_str()]) {
            let r = read_challenges([a.as_str()]);
            prop_assert_eq!(&r.challenges, &chs);
            prop_assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        }
        // whatever parses re-writes to something that parses to the same challenges
        if let Ok(chs) = parse_challenges([a.as_str()]) {
            for c in &chs {
                if let Ok(v) = c.to_header_value() {
                    prop_assert_eq!(&parse_challenges([v.to_str().unwrap()]).unwrap(), &vec![c.clone()]);
                }
            }
        }
    }
}
