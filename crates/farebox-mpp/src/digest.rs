//! Request-body binding: the challenge's `digest` parameter.
//!
//! The spec says RFC 9530 (`sha-256=:<base64>:`); both SDKs emit `sha-256=<base64>` without the
//! colons. farebox follows the SDKs when writing ([`body_digest`]) and accepts both forms when
//! checking ([`digest_matches`]); the comparison is constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// `sha-256=<standard base64 of SHA-256(body)>`, the SDK form.
pub fn body_digest(body: &[u8]) -> String {
    format!("sha-256={}", STANDARD.encode(Sha256::digest(body)))
}

/// Whether `digest` (SDK or RFC 9530 form; algorithm name case-insensitive) is the SHA-256 of
/// `body`. Other algorithms and malformed values do not match.
pub fn digest_matches(digest: &str, body: &[u8]) -> bool {
    let Some((alg, value)) = digest.trim().split_once('=') else {
        return false;
    };
    if !alg.eq_ignore_ascii_case("sha-256") {
        return false;
    }
    let value = value.strip_prefix(':').and_then(|v| v.strip_suffix(':')).unwrap_or(value);
    let Ok(presented) = STANDARD.decode(value) else {
        return false;
    };
    bool::from(Sha256::digest(body).as_slice().ct_eq(&presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_example_in_both_forms() {
        let body = br#"{"hello": "world"}"#;
        assert_eq!(body_digest(body), "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=");
        assert!(digest_matches("sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", body));
        assert!(digest_matches("SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", body));
        assert!(!digest_matches("sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", b"{}"));
        assert!(!digest_matches("sha-512=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", body));
        assert!(!digest_matches("garbage", body));
    }
}
