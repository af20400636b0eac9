//! The credential: `Authorization: Payment <base64url_nopad(JSON)>`.
//!
//! ```json
//! {"challenge": {"id": "…", "realm": "…", "method": "lightning", "intent": "charge",
//!                "request": "<the request param, still base64url>", "expires": "…", …},
//!  "payload": {"preimage": "…"},
//!  "source": "did:…"}
//! ```
//!
//! The envelope is written as the SDKs write it (`JSON.stringify` order: `challenge`,
//! `payload`, `source`; echoed challenge fields `id, realm, method, intent, request,
//! description, digest, expires, opaque, header`), not JCS: only the echoed `request` and
//! `opaque` strings must be byte-exact, and the server re-derives the id from them. Parsing
//! accepts any member order, ignores unknown members, tolerates full `=` padding (but no
//! partial, surplus or non-canonical base64url: [`jcs::b64url_decode`]), and normalizes a
//! legacy `opaque` sent as an object back to its base64url JCS form (as MPPX does).
//!
//! Bounds: the header value is at most [`MAX_CREDENTIAL_LEN`] bytes; the JSON nesting is bounded
//! by `serde_json`'s recursion limit. Errors are [`CredentialError`]s.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::challenge::{self, Challenge, IdSlots, SCHEME};
use crate::jcs;

/// Largest `Authorization` value [`Credential::from_authorization`] reads.
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

/// A credential that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("credential longer than {MAX_CREDENTIAL_LEN} bytes")]
    TooLarge,
    #[error("not a Payment credential")]
    NotPayment,
    #[error("the Payment credential is empty")]
    Empty,
    #[error("the Payment credential is not base64url")]
    NotBase64,
    #[error("the Payment credential is not the expected JSON: {0}")]
    Json(String),
    #[error("the echoed challenge has an empty {0}")]
    EmptyField(&'static str),
}

/// The challenge as the client echoes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoedChallenge {
    pub id: String,
    pub realm: String,
    pub method: String,
    pub intent: String,
    /// The `request` parameter, still base64url.
    pub request: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The `opaque` parameter, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "opaque_wire")]
    pub opaque: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// Accepts `opaque` as its wire string or, as legacy clients send it, as the expanded object.
fn opaque_wire<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v @ Value::Object(_)) => {
            jcs::encode_b64_jcs(&v).map(Some).map_err(serde::de::Error::custom)
        }
        Some(_) => Err(serde::de::Error::custom("opaque must be a string")),
    }
}

impl EchoedChallenge {
    /// The slots its id binds.
    pub fn slots(&self) -> IdSlots<'_> {
        IdSlots {
            realm: &self.realm,
            method: &self.method,
            intent: &self.intent,
            request: &self.request,
            expires: self.expires.as_deref().unwrap_or(""),
            digest: self.digest.as_deref().unwrap_or(""),
            header: challenge::normalize_header(self.header.as_deref()),
            opaque: self.opaque.as_deref().unwrap_or(""),
        }
    }
}

impl From<&Challenge> for EchoedChallenge {
    fn from(c: &Challenge) -> Self {
        EchoedChallenge {
            id: c.id.clone(),
            realm: c.realm.clone(),
            method: c.method.clone(),
            intent: c.intent.clone(),
            request: c.request_b64.clone(),
            description: c.description.clone(),
            digest: c.digest.clone(),
            expires: c.expires.clone(),
            opaque: c.opaque.clone(),
            header: c.header.clone(),
        }
    }
}

/// A decoded `Payment` credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub challenge: EchoedChallenge,
    /// The method-specific proof (must be a JSON object).
    pub payload: serde_json::Map<String, Value>,
    /// The payer, RECOMMENDED as a DID; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Credential {
    /// A credential answering `challenge` with `payload`.
    pub fn new(challenge: &Challenge, payload: serde_json::Map<String, Value>) -> Self {
        Credential { challenge: challenge.into(), payload, source: None }
    }

    /// The base64url token (what follows `Payment `).
    pub fn encode(&self) -> String {
        // A struct of strings and JSON values always serializes.
        jcs::b64url_encode(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// The `Authorization` field value: `Payment <token>`.
    pub fn to_authorization(&self) -> String {
        format!("{SCHEME} {}", self.encode())
    }

    /// Decodes the base64url token.
    pub fn decode(token: &str) -> Result<Self, CredentialError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(CredentialError::TooLarge);
        }
        if token.is_empty() {
            return Err(CredentialError::Empty);
        }
        let bytes = jcs::b64url_decode(token).map_err(|_| CredentialError::NotBase64)?;
        let c: Credential =
            serde_json::from_slice(&bytes).map_err(|e| CredentialError::Json(e.to_string()))?;
        for (name, value) in [
            ("id", &c.challenge.id),
            ("realm", &c.challenge.realm),
            ("method", &c.challenge.method),
            ("intent", &c.challenge.intent),
            ("request", &c.challenge.request),
        ] {
            if value.is_empty() {
                return Err(CredentialError::EmptyField(name));
            }
        }
        Ok(c)
    }

    /// Reads an `Authorization` field value. The `Payment` scheme is matched case-insensitively;
    /// when the field lists several comma-separated credentials, the `Payment` one is used.
    pub fn from_authorization(value: &str) -> Result<Self, CredentialError> {
        if value.len() > MAX_CREDENTIAL_LEN {
            return Err(CredentialError::TooLarge);
        }
        Self::decode(payment_token(value).ok_or(CredentialError::NotPayment)?)
    }
}

/// The base64url token of the `Payment` credential in an `Authorization` value, if any.
pub fn payment_token(value: &str) -> Option<&str> {
    value.split(',').find_map(|part| {
        let part = part.trim_matches([' ', '\t']);
        let (scheme, rest) = part.split_once([' ', '\t']).unwrap_or((part, ""));
        scheme.eq_ignore_ascii_case(SCHEME).then(|| rest.trim_matches([' ', '\t']))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echoed() -> Value {
        json!({"id": "abc", "realm": "r", "method": "lightning", "intent": "charge", "request": "e30"})
    }

    fn token(v: &Value) -> String {
        jcs::b64url_encode(v.to_string().as_bytes())
    }

    #[test]
    fn decodes_and_encodes() {
        let v = json!({"challenge": echoed(), "payload": {"preimage": "00"}, "source": "did:x"});
        let c = Credential::from_authorization(&format!("payment  {}", token(&v))).unwrap();
        assert_eq!(c.challenge.id, "abc");
        assert_eq!(c.source.as_deref(), Some("did:x"));
        let again = Credential::from_authorization(&c.to_authorization()).unwrap();
        assert_eq!(again, c);
        let text = String::from_utf8(jcs::b64url_decode(&c.encode()).unwrap()).unwrap();
        assert!(text.starts_with(r#"{"challenge":{"id":"abc","realm":"r","method":"lightning","intent":"charge","request":"e30"}"#), "{text}");
    }

    #[test]
    fn extracts_payment_from_a_list() {
        let v = json!({"challenge": echoed(), "payload": {}});
        let value = format!("Bearer abc, Payment {}", token(&v));
        assert!(Credential::from_authorization(&value).is_ok());
    }

    #[test]
    fn legacy_object_opaque_is_normalized() {
        let mut ch = echoed();
        ch["opaque"] = json!({"b": "2", "a": "1"});
        let c = Credential::decode(&token(&json!({"challenge": ch, "payload": {}}))).unwrap();
        assert_eq!(c.challenge.opaque.unwrap(), jcs::b64url_encode(br#"{"a":"1","b":"2"}"#));
    }

    #[test]
    fn refuses_what_the_conformance_vectors_refuse() {
        assert_eq!(Credential::from_authorization("Bearer abc"), Err(CredentialError::NotPayment));
        assert_eq!(Credential::from_authorization("Payment !!!"), Err(CredentialError::NotBase64));
        assert_eq!(Credential::from_authorization("Payment"), Err(CredentialError::Empty));
        assert!(
            matches!(Credential::decode("W10"), Err(CredentialError::Json(_))),
            "[] is not an object"
        );
        assert!(matches!(
            Credential::decode(&token(&json!({"payload": {}}))),
            Err(CredentialError::Json(_))
        ));
        let mut no_id = echoed();
        no_id.as_object_mut().unwrap().remove("id");
        assert!(matches!(
            Credential::decode(&token(&json!({"challenge": no_id, "payload": {}}))),
            Err(CredentialError::Json(_))
        ));
        let mut empty_id = echoed();
        empty_id["id"] = json!("");
        assert_eq!(
            Credential::decode(&token(&json!({"challenge": empty_id, "payload": {}}))),
            Err(CredentialError::EmptyField("id"))
        );
        assert!(matches!(
            Credential::decode(&token(&json!({"challenge": echoed(), "payload": "x"}))),
            Err(CredentialError::Json(_))
        ));
        assert_eq!(
            Credential::decode(&"A".repeat(MAX_CREDENTIAL_LEN + 1)),
            Err(CredentialError::TooLarge)
        );
    }
}
