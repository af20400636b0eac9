//! Header codec: every x402 header value is standard base64 (`+/`, padded) of compact UTF-8 JSON.
//!
//! Encoding always produces the canonical form. Decoding is bounded ([`MAX_HEADER_LEN`] before
//! decoding) and lenient about the alphabet and padding (URL-safe `-_` and missing `=` are
//! accepted, as some clients send them), and its errors say which layer failed: the base64, the
//! JSON syntax, or the JSON's shape (with serde's message).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The longest header value [`decode_header`] accepts, in bytes of base64 text.
pub const MAX_HEADER_LEN: usize = 16 * 1024;

/// Canonical encoder: standard alphabet, padded.
const STANDARD: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Lenient decoder: standard alphabet (after mapping URL-safe characters), padding optional.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a header value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value is empty (or only whitespace).
    #[error("empty header value")]
    Empty,
    /// The value is longer than [`MAX_HEADER_LEN`].
    #[error("header value is {len} bytes, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    /// The value is not base64.
    #[error("header value is not base64: {0}")]
    Base64(String),
    /// The decoded bytes are not JSON (syntax error, truncated, or not UTF-8).
    #[error("header value is not JSON: {0}")]
    Json(String),
    /// The JSON is well formed but not the expected shape (missing or mistyped field).
    #[error("header JSON has the wrong shape: {0}")]
    Shape(String),
    /// The value could not be serialised (only from [`try_encode_header`]).
    #[error("cannot encode header value: {0}")]
    Encode(String),
}

/// Encodes `value` as a header value: standard padded base64 of its compact JSON.
///
/// # Panics
///
/// Only if `value`'s `Serialize` implementation fails (e.g. a map with non-string keys), which
/// none of this crate's types do. Use [`try_encode_header`] for arbitrary types.
pub fn encode_header<T: Serialize + ?Sized>(value: &T) -> String {
    match try_encode_header(value) {
        Ok(s) => s,
        Err(e) => panic!("x402 header value failed to serialise: {e}"),
    }
}

/// Encodes `value` as a header value, reporting a serialisation failure instead of panicking.
pub fn try_encode_header<T: Serialize + ?Sized>(value: &T) -> Result<String, CodecError> {
    let json = serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(STANDARD.encode(json))
}

/// Decodes a header value into `T`.
pub fn decode_header<T: DeserializeOwned>(value: &str) -> Result<T, CodecError> {
    let json = decode_header_bytes(value)?;
    from_json(&json)
}

/// Decodes the base64 layer of a header value, returning the JSON bytes.
pub fn decode_header_bytes(value: &str) -> Result<Vec<u8>, CodecError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(CodecError::TooLong { len: value.len(), max: MAX_HEADER_LEN });
    }
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.is_empty() {
        return Err(CodecError::Empty);
    }
    let decoded = if trimmed.bytes().any(|b| b == b'-' || b == b'_') {
        let mapped: String = trimmed
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        LENIENT.decode(mapped)
    } else {
        LENIENT.decode(trimmed)
    };
    decoded.map_err(|e| CodecError::Base64(e.to_string()))
}

/// Parses JSON bytes into `T`, classifying the failure as syntax ([`CodecError::Json`]) or shape
/// ([`CodecError::Shape`]).
pub fn from_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(json).map_err(classify)
}

/// Maps a serde_json error to the codec's taxonomy.
pub(crate) fn classify(e: serde_json::Error) -> CodecError {
    match e.classify() {
        serde_json::error::Category::Data => CodecError::Shape(e.to_string()),
        _ => CodecError::Json(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trips_canonically() {
        let v = T { a: 1, b: "x?>".into() };
        let h = encode_header(&v);
        assert_eq!(h, STANDARD.encode(br#"{"a":1,"b":"x?>"}"#));
        assert_eq!(decode_header::<T>(&h).unwrap(), v);
    }

    #[test]
    fn is_lenient_about_alphabet_and_padding() {
        // `{"a":1,"b":"x?>"}` has a `/` and a `+`-free encoding; craft one with both.
        let v = T { a: 1, b: "\u{3ff}\u{fbff}>>?".into() };
        let h = encode_header(&v);
        assert!(h.contains('/') || h.contains('+'), "{h}");
        let url = h.replace('+', "-").replace('/', "_");
        let unpadded = url.trim_end_matches('=');
        assert_eq!(decode_header::<T>(unpadded).unwrap(), v);
        assert_eq!(decode_header::<T>(&format!(" {h}\t")).unwrap(), v);
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(decode_header::<T>(""), Err(CodecError::Empty));
        assert_eq!(decode_header::<T>("  "), Err(CodecError::Empty));
        assert!(matches!(decode_header::<T>("!!!!"), Err(CodecError::Base64(_))));
        let long = "A".repeat(MAX_HEADER_LEN + 1);
        assert!(matches!(decode_header::<T>(&long), Err(CodecError::TooLong { .. })));
        let not_json = STANDARD.encode("{not json");
        assert!(matches!(decode_header::<T>(&not_json), Err(CodecError::Json(_))));
        let not_utf8 = STANDARD.encode([0xff, 0xfe]);
        assert!(matches!(decode_header::<T>(&not_utf8), Err(CodecError::Json(_))));
        let shape = STANDARD.encode(r#"{"a":"one","b":"x"}"#);
        match decode_header::<T>(&shape) {
            Err(CodecError::Shape(m)) => assert!(m.contains("invalid type"), "{m}"),
            other => panic!("{other:?}"),
        }
        let missing = STANDARD.encode(r#"{"a":1}"#);
        match decode_header::<T>(&missing) {
            Err(CodecError::Shape(m)) => assert!(m.contains("missing field `b`"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
