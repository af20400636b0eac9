//! RFC 8785 JSON Canonicalization Scheme (JCS), and the one base64url decoder for MPP's
//! untrusted input.
//!
//! MPP's challenge `request` and `opaque` auth-params are `base64url_nopad(JCS(json))`, and the
//! challenge id is an HMAC over those wire strings, so the serialization must be byte-exact with
//! every other implementation's:
//!
//! * object members sorted by their names' UTF-16 code units (RFC 8785 §3.2.3), not by UTF-8
//!   bytes — the two orders differ only above U+FFFF vs U+E000..U+FFFF, but they do differ;
//! * no whitespace;
//! * strings: `"` and `\` escaped, the control characters U+0000..U+001F as `\b \t \n \f \r` or
//!   `\u00xx` (lowercase hex), everything else literal UTF-8 (no `\u` escaping of non-ASCII, no
//!   HTML escaping of `<`, `>` or `&`);
//! * numbers as ECMAScript's `Number.prototype.toString` writes the IEEE 754 double the JSON
//!   number denotes (§3.2.2.3): shortest round-trip digits, `1e+21` and `1e-7` forms outside
//!   [1e-6, 1e21), `-0` as `0`, `1.0` as `1`, and an integer beyond 2^53 rounded to the nearest
//!   double (`9007199254740993` is written `9007199254740992`, as `JSON.parse` then
//!   `JSON.stringify` do in a browser). The digits come from `ryu-js` (boa's ECMAScript-exact
//!   Ryū); the tests check it against RFC 8785 Appendix B and against node's own output.
//!
//! Re-canonicalizing what another SDK sent reproduces its bytes only if the parse was exact:
//! farebox turns on serde_json's `float_roundtrip` (correctly rounded float parsing; the default
//! parser may miss by one ulp), so `canonicalize(parse(jcs_text)) == jcs_text` for any JCS text.
//! Amounts in MPP are strings, so no money passes through a double here.
//!
//! Nesting is bounded by [`MAX_DEPTH`].
//!
//! [`b64url_decode`] is the only decoder MPP input goes through (challenge `request`/`opaque`,
//! credentials, receipts), and it accepts exactly one spelling per byte string (see its docs).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Number, Value};

/// Deepest nesting of arrays/objects [`canonicalize`] accepts.
pub const MAX_DEPTH: usize = 64;

/// A value JCS cannot serialize.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    /// NaN or an infinity (RFC 8785 §3.2.2.3: an error). serde_json never holds one; this is
    /// the guard should that change.
    #[error("JCS: {0} is not a finite number")]
    UnsupportedNumber(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("JCS: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// A base64url string that is not the canonical encoding of any bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64url: {0}")]
pub struct Base64Error(pub String);

/// The RFC 8785 canonical form of `value`.
pub fn canonicalize(value: &Value) -> Result<String, JcsError> {
    let mut out = String::with_capacity(128);
    write_value(value, &mut out, 0)?;
    Ok(out)
}

/// `base64url_nopad(JCS(value))`: the wire form of MPP's `request` and `opaque` params.
pub fn encode_b64_jcs(value: &Value) -> Result<String, JcsError> {
    Ok(b64url_encode(canonicalize(value)?.as_bytes()))
}

/// base64url without padding (RFC 4648 §5).
pub fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The padded form, for the one case [`b64url_decode`] tolerates: full `=` padding.
const URL_SAFE_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes base64url (RFC 4648 §5), canonical forms only, so that each byte string has one
/// accepted spelling (plus its fully padded twin):
///
/// * no padding (what MPP writes), or exactly the padding RFC 4648 §3.2 puts there (`YQ==`,
///   `YWI=`; some clients add it). Partial or surplus padding (`YQ=`, `YWI==`, `YWJj=`) is
///   refused;
/// * no length that no encoding has (`len % 4 == 1` once unpadded);
/// * no non-zero bits after the last byte (`YR` is not another spelling of `YQ`);
/// * only the URL-safe alphabet (`+` and `/` are refused), no whitespace.
pub fn b64url_decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let engine = if text.ends_with('=') { &URL_SAFE_PADDED } else { &URL_SAFE_NO_PAD };
    engine.decode(text).map_err(|e| Base64Error(e.to_string()))
}

/// ECMAScript's `Number::toString` of the double `n` denotes (RFC 8785 §3.2.2.3).
fn write_number(n: &Number, out: &mut String) -> Result<(), JcsError> {
    // serde_json keeps integers exact (u64 / i64); JSON has only doubles, so they are rounded
    // to the nearest one first, as `JSON.parse` does. `as f64` rounds to nearest, ties to even.
    let double = n.as_f64().filter(|d| d.is_finite());
    let Some(double) = double else {
        return Err(JcsError::UnsupportedNumber(n.to_string()));
    };
    out.push_str(ryu_js::Buffer::new().format_finite(double));
    Ok(())
}

fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<(), JcsError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(JcsError::TooDeep);
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            if depth >= MAX_DEPTH {
                return Err(JcsError::TooDeep);
            }
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            0x08 => Some("\\b"),
            b'\t' => Some("\\t"),
            b'\n' => Some("\\n"),
            0x0c => Some("\\f"),
            b'\r' => Some("\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        // `i` is an ASCII byte, hence a char boundary.
        out.push_str(&s[run..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x"});
        assert_eq!(canonicalize(&v).unwrap(), r#"{"a":"x","b":[1,{"a":true,"z":null}]}"#);
    }

    #[test]
    fn sorts_by_utf16_code_units_not_utf8() {
        // U+1F600 is D83D DE00 in UTF-16 and sorts before U+FB01 (FB01), although its UTF-8
        // (F0 9F ..) sorts after EF AC 81.
        let v = json!({"\u{FB01}": 1, "\u{1F600}": 2});
        assert_eq!(canonicalize(&v).unwrap(), "{\"\u{1F600}\":2,\"\u{FB01}\":1}");
    }

    #[test]
    fn escapes_only_what_rfc8785_escapes() {
        let v = json!("<a & b> \"q\" \\ \u{7f} caf\u{e9} \u{2028} \n\t\u{1}\u{1f}\u{8}\u{c}\r");
        assert_eq!(
            canonicalize(&v).unwrap(),
            "\"<a & b> \\\"q\\\" \\\\ \u{7f} caf\u{e9} \u{2028} \\n\\t\\u0001\\u001f\\b\\f\\r\""
        );
    }

    #[test]
    fn numbers_are_written_as_ecmascript_writes_them() {
        let parsed: Value =
            serde_json::from_str("[1.0, -0, 0.5e1, 1e21, 1e-7, 0.000001, 9007199254740993, 18446744073709551615, -1.5E-3]")
                .unwrap();
        assert_eq!(
            canonicalize(&parsed).unwrap(),
            "[1,0,5,1e+21,1e-7,0.000001,9007199254740992,18446744073709552000,-0.0015]"
        );
        assert_eq!(canonicalize(&json!(-0.0)).unwrap(), "0");
        assert_eq!(canonicalize(&json!(i64::MIN)).unwrap(), "-9223372036854776000");
    }

    #[test]
    fn depth_is_bounded() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        assert!(canonicalize(&v).is_ok());
        assert_eq!(canonicalize(&json!([v])), Err(JcsError::TooDeep));
    }

    #[test]
    fn base64url_accepts_one_spelling_per_byte_string() {
        assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(b64url_decode("-_8").unwrap(), b"\xfb\xff");
        assert_eq!(b64url_decode("").unwrap(), b"");
        // Full padding is tolerated, as some clients add it ...
        assert_eq!(b64url_decode("-_8=").unwrap(), b"\xfb\xff");
        assert_eq!(b64url_decode("YQ==").unwrap(), b"a");
        assert_eq!(b64url_decode("YWI=").unwrap(), b"ab");
        // ... partial, surplus or misplaced padding is not.
        for bad in ["YQ=", "YWI==", "YWJj=", "YWJj====", "YQ===", "=", "==", "Y=Q=", "YQ==YQ"] {
            assert!(b64url_decode(bad).is_err(), "{bad}");
        }
        assert!(b64url_decode("+/8").is_err(), "standard alphabet is refused");
        assert!(b64url_decode("-_9").is_err(), "non-canonical trailing bits");
        assert!(b64url_decode("YR").is_err(), "non-canonical trailing bits");
        assert!(b64url_decode("a").is_err(), "no encoding is 1 mod 4 long");
        assert!(b64url_decode("YWJjZ").is_err(), "no encoding is 1 mod 4 long");
        assert!(b64url_decode("YW Jj").is_err(), "whitespace");
    }
}
