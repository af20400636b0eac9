//! RFC 8785 JSON Canonicalization Scheme (JCS) for the values MPP signs, and base64url without
//! padding.
//!
//! MPP's challenge `request` and `opaque` auth-params are `base64url_nopad(JCS(json))`, and the
//! challenge id is an HMAC over those wire strings, so the serialization must be byte-exact:
//!
//! * object members sorted by their names' UTF-16 code units (RFC 8785 §3.2.3), not by UTF-8
//!   bytes — the two orders differ only above U+FFFF vs U+E000..U+FFFF, but they do differ;
//! * no whitespace;
//! * strings: `"` and `\` escaped, the control characters U+0000..U+001F as `\b \t \n \f \r` or
//!   `\u00xx` (lowercase hex), everything else literal UTF-8 (no `\u` escaping of non-ASCII, no
//!   HTML escaping of `<`, `>` or `&`);
//! * numbers: **integers only**, in the range where a JSON number is an exact IEEE 754 double
//!   (|n| ≤ 2^53 − 1), written in plain decimal — which is exactly what RFC 8785's ECMAScript
//!   number serialization produces for them. Non-integers and larger integers are refused with
//!   [`JcsError::UnsupportedNumber`]: MPP carries amounts as strings, so a float in a signed
//!   value is a bug, and refusing it avoids implementing the ECMAScript double-to-string
//!   algorithm.
//!
//! Nesting is bounded by [`MAX_DEPTH`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Deepest nesting of arrays/objects [`canonicalize`] accepts.
pub const MAX_DEPTH: usize = 64;

/// Largest integer magnitude JCS can carry exactly (2^53 − 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A value JCS (as implemented here) cannot serialize.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    /// A non-integer or an integer beyond ±(2^53 − 1).
    #[error("JCS: unsupported number {0} (only integers with |n| <= 2^53-1 are canonicalized)")]
    UnsupportedNumber(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("JCS: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// A base64url string that does not decode.
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

/// Decodes base64url. Padding is not expected, but trailing `=` padding is tolerated (some
/// clients add it); characters outside the URL-safe alphabet, non-canonical trailing bits and
/// impossible lengths are errors.
pub fn b64url_decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let body = text.strip_suffix("==").or_else(|| text.strip_suffix('=')).unwrap_or(text);
    URL_SAFE_NO_PAD.decode(body).map_err(|e| Base64Error(e.to_string()))
}

fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<(), JcsError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64().filter(|&u| u <= MAX_SAFE_INTEGER) {
                out.push_str(&u.to_string());
            } else if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER) {
                out.push_str(&i.to_string());
            } else {
                return Err(JcsError::UnsupportedNumber(n.to_string()));
            }
        }
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
    fn integers_only() {
        assert_eq!(
            canonicalize(&json!([0, -1, 9007199254740991u64])).unwrap(),
            "[0,-1,9007199254740991]"
        );
        assert!(matches!(canonicalize(&json!(1.5)), Err(JcsError::UnsupportedNumber(_))));
        assert!(matches!(
            canonicalize(&json!(9007199254740992u64)),
            Err(JcsError::UnsupportedNumber(_))
        ));
        assert!(matches!(
            canonicalize(&json!(-9007199254740992i64)),
            Err(JcsError::UnsupportedNumber(_))
        ));
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
    fn base64url_round_trip_without_padding() {
        assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(b64url_decode("-_8").unwrap(), b"\xfb\xff");
        assert_eq!(b64url_decode("-_8=").unwrap(), b"\xfb\xff");
        assert!(b64url_decode("+/8").is_err(), "standard alphabet is refused");
        assert!(b64url_decode("-_9").is_err(), "non-canonical trailing bits");
        assert!(b64url_decode("a").is_err());
    }
}
