//! The `WWW-Authenticate: Payment` challenge and its HMAC-bound id.
//!
//! ```text
//! WWW-Authenticate: Payment id="…", realm="…", method="lightning", intent="charge",
//!     request="<base64url(JCS(request))>", [description="…",] [digest="…",]
//!     expires="<RFC 3339>", [opaque="<base64url(JCS(string map))>"], [header="…"]
//! ```
//!
//! # Binding
//!
//! The id is `base64url_nopad(HMAC-SHA256(secret, slots joined by "|"))` with seven slots
//! `realm | method | intent | request | expires | digest | opaque` (absent optionals are empty
//! strings; `request` and `opaque` are the *wire* strings; `description` is not bound). When the
//! challenge carries `header=` with a value other than `Authorization` (compared
//! case-insensitively; MPPX PR #821, not yet in the spec text), that value is an eighth slot
//! inserted before `opaque`; `header="Authorization"` is normalized away and gives the 7-slot id.
//! A server holding the key therefore recognises its own challenges without storing them
//! ([`ChallengeKey::verify_id`], constant time).
//!
//! # Parsing
//!
//! A client reads a server's 402 liberally and a server's challenges one by one:
//! [`read_www_authenticate`] uses `farebox_core::auth::read_challenges` (bounded, linear time,
//! quoted-string escapes, challenges split only outside quoted strings, one malformed challenge
//! or field line skipped without hiding the others, a value with an unescaped quote read up to
//! the quote) and then applies MPP's rules to each `Payment` challenge, skipping those that
//! break them: strict on duplicate parameters, on empty or missing
//! `id`/`realm`/`method`/`intent`/`request`, on a `method` that is not `1*LOWERALPHA`, an
//! `intent` that is not `1*(ALPHA/DIGIT/"-")`, a `request` that is not base64url of a JSON
//! object (at most [`MAX_REQUEST_LEN`] bytes), an `opaque` that is not base64url of a JSON
//! string→string object, and an `expires` that is not RFC 3339; permissive on the scheme's
//! case, whitespace, parameter order and unknown parameters (ignored).
//! [`parse_www_authenticate`] is the same with a `Result`: the valid challenges, or why there
//! are none.

use std::collections::BTreeMap;

use farebox_core::auth::{self, AuthChallenge, HeaderError};
use hmac::{Hmac, Mac};
use http::HeaderValue;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::jcs::{self, JcsError};

/// The auth-scheme.
pub const SCHEME: &str = "Payment";

/// Largest `request` (wire, base64url) or `opaque` parameter accepted, as MPPRS caps it.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;

/// Shortest HMAC secret [`ChallengeKey::new`] accepts (MPPX's guidance).
pub const MIN_SECRET_LEN: usize = 32;

/// Length of an encoded challenge id (base64url of 32 bytes, no padding).
pub const ID_LEN: usize = 43;

/// A challenge that cannot be parsed or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("WWW-Authenticate: {0}")]
    Header(#[from] HeaderError),
    #[error("not a Payment challenge")]
    NotPayment,
    #[error("Payment challenge carries a token68 instead of parameters")]
    Token68,
    #[error("missing required parameter {0}")]
    Missing(&'static str),
    #[error("empty parameter {0}")]
    Empty(&'static str),
    #[error("method must be 1*LOWERALPHA")]
    InvalidMethod,
    #[error("intent must be 1*(ALPHA / DIGIT / \"-\")")]
    InvalidIntent,
    #[error("{0} longer than {MAX_REQUEST_LEN} bytes")]
    TooLarge(&'static str),
    #[error("{0} is not base64url")]
    NotBase64(&'static str),
    #[error("{0} is not a JSON object: {1}")]
    NotJson(&'static str, String),
    #[error("opaque must be a JSON object of strings")]
    OpaqueNotStringMap,
    #[error("expires is not RFC 3339: {0}")]
    Expires(String),
    /// A `description` holding CR, LF or another control character: no header can carry it,
    /// and rewriting it would hide a configuration error (or a header-injection attempt).
    #[error("description holds a control character (CR, LF, ...) that a header cannot carry")]
    DescriptionControl,
    #[error(transparent)]
    Jcs(#[from] JcsError),
}

/// One `Payment` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub id: String,
    pub realm: String,
    /// Payment method id, e.g. `lightning`.
    pub method: String,
    /// Intent, e.g. `charge`.
    pub intent: String,
    /// The decoded `request` JSON object.
    pub request: Value,
    /// The `request` parameter as sent: `base64url_nopad(JCS(request))`. The id binds this
    /// string, so it is kept rather than re-encoded.
    pub request_b64: String,
    /// RFC 3339 expiry, as sent.
    pub expires: Option<String>,
    /// Display text; not bound by the id.
    pub description: Option<String>,
    /// Request-body digest (see [`crate::digest`]).
    pub digest: Option<String>,
    /// The `opaque` parameter as sent (base64url of a JCS string map).
    pub opaque: Option<String>,
    /// The request header the credential must come in, when not `Authorization`.
    pub header: Option<String>,
}

/// What goes into a new challenge; see [`ChallengeKey::issue`].
#[derive(Debug, Clone, Default)]
pub struct ChallengeParams {
    pub realm: String,
    pub method: String,
    pub intent: String,
    pub request: Value,
    pub expires: Option<String>,
    pub description: Option<String>,
    pub digest: Option<String>,
    pub opaque: Option<BTreeMap<String, String>>,
    pub header: Option<String>,
}

/// The bound slots of a challenge id, borrowed. Absent values are `""` (and `None` for
/// `header`).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdSlots<'a> {
    pub realm: &'a str,
    pub method: &'a str,
    pub intent: &'a str,
    /// The wire (base64url) request.
    pub request: &'a str,
    pub expires: &'a str,
    pub digest: &'a str,
    /// `Some` only for a value other than `Authorization` (see [`normalize_header`]).
    pub header: Option<&'a str>,
    /// The wire opaque string (raw: whatever the `opaque` parameter holds).
    pub opaque: &'a str,
}

/// `header` as it enters the id: `None` when absent or (case-insensitively) `Authorization`.
pub fn normalize_header(header: Option<&str>) -> Option<&str> {
    header.filter(|h| !h.eq_ignore_ascii_case("authorization"))
}

/// The server's challenge-binding key, with the keyed HMAC state computed once.
#[derive(Clone)]
pub struct ChallengeKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(<redacted>)")
    }
}

/// A secret shorter than [`MIN_SECRET_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MPP challenge secret must be at least {MIN_SECRET_LEN} bytes, got {0}")]
pub struct SecretTooShort(pub usize);

impl ChallengeKey {
    /// A key from `secret` (at least [`MIN_SECRET_LEN`] bytes; e.g. `openssl rand -base64 32`).
    pub fn new(secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretTooShort(secret.len()));
        }
        // HMAC accepts keys of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map_err(|_| SecretTooShort(secret.len()))?;
        Ok(ChallengeKey { mac })
    }

    fn mac(&self, s: &IdSlots<'_>) -> [u8; 32] {
        let mut m = self.mac.clone();
        for (i, part) in
            [s.realm, s.method, s.intent, s.request, s.expires, s.digest].into_iter().enumerate()
        {
            if i > 0 {
                m.update(b"|");
            }
            m.update(part.as_bytes());
        }
        if let Some(h) = normalize_header(s.header) {
            m.update(b"|");
            m.update(h.as_bytes());
        }
        m.update(b"|");
        m.update(s.opaque.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Writes the id of `slots` into `out` (43 ASCII bytes) without allocating.
    pub fn compute_id_into(&self, slots: &IdSlots<'_>, out: &mut [u8; ID_LEN]) {
        use base64::Engine as _;
        let tag = self.mac(slots);
        // 32 bytes always encode to exactly 43 base64url characters.
        let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(tag, out);
    }

    /// The id of `slots`.
    pub fn compute_id(&self, slots: &IdSlots<'_>) -> String {
        let mut out = [0u8; ID_LEN];
        self.compute_id_into(slots, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether `presented` is the id of `slots`, compared in constant time.
    pub fn verify_id(&self, slots: &IdSlots<'_>, presented: &str) -> bool {
        let mut out = [0u8; ID_LEN];
        self.compute_id_into(slots, &mut out);
        // Slices of different lengths compare unequal; the length of an id is not secret.
        bool::from(out[..].ct_eq(presented.as_bytes()))
    }

    /// A new challenge from `params`, with its id. Fails when `request`/`opaque` cannot be
    /// canonicalized or `method`/`intent` are not valid.
    pub fn issue(&self, params: ChallengeParams) -> Result<Challenge, ChallengeError> {
        check_method(&params.method)?;
        check_intent(&params.intent)?;
        check_description(params.description.as_deref())?;
        if !params.request.is_object() {
            return Err(ChallengeError::NotJson("request", "not an object".into()));
        }
        let request_b64 = jcs::encode_b64_jcs(&params.request)?;
        let opaque = match &params.opaque {
            Some(map) => Some(encode_opaque(map)?),
            None => None,
        };
        let mut c = Challenge {
            id: String::new(),
            realm: params.realm,
            method: params.method,
            intent: params.intent,
            request: params.request,
            request_b64,
            expires: params.expires,
            description: params.description,
            digest: params.digest,
            opaque,
            header: params.header,
        };
        c.id = self.compute_id(&c.slots());
        Ok(c)
    }
}

/// `base64url_nopad(JCS(map))`, the wire form of `opaque`.
pub fn encode_opaque(map: &BTreeMap<String, String>) -> Result<String, JcsError> {
    let v = Value::Object(map.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect());
    jcs::encode_b64_jcs(&v)
}

/// Decodes an `opaque` wire string into its string map.
pub fn decode_opaque(wire: &str) -> Result<BTreeMap<String, String>, ChallengeError> {
    if wire.len() > MAX_REQUEST_LEN {
        return Err(ChallengeError::TooLarge("opaque"));
    }
    let bytes = jcs::b64url_decode(wire).map_err(|_| ChallengeError::NotBase64("opaque"))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ChallengeError::NotJson("opaque", e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(ChallengeError::OpaqueNotStringMap);
    };
    obj.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(ChallengeError::OpaqueNotStringMap),
        })
        .collect()
}

/// Decodes a `request` wire string into its JSON object.
pub fn decode_request(wire: &str) -> Result<Value, ChallengeError> {
    if wire.len() > MAX_REQUEST_LEN {
        return Err(ChallengeError::TooLarge("request"));
    }
    let bytes = jcs::b64url_decode(wire).map_err(|_| ChallengeError::NotBase64("request"))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ChallengeError::NotJson("request", e.to_string()))?;
    if !v.is_object() {
        return Err(ChallengeError::NotJson("request", "not an object".into()));
    }
    Ok(v)
}

fn check_method(m: &str) -> Result<(), ChallengeError> {
    if m.is_empty() {
        return Err(ChallengeError::Empty("method"));
    }
    if !m.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ChallengeError::InvalidMethod);
    }
    Ok(())
}

fn check_intent(i: &str) -> Result<(), ChallengeError> {
    if i.is_empty() {
        return Err(ChallengeError::Empty("intent"));
    }
    if !i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ChallengeError::InvalidIntent);
    }
    Ok(())
}

/// Refuses a description with a control character other than HTAB (see
/// [`ChallengeError::DescriptionControl`]).
fn check_description(description: Option<&str>) -> Result<(), ChallengeError> {
    match description {
        Some(d) if d.chars().any(|c| c.is_control() && c != '\t') => {
            Err(ChallengeError::DescriptionControl)
        }
        _ => Ok(()),
    }
}

/// Writes non-ASCII display text with `?` in place of each character a header value cannot
/// carry as text (`description` is display only and not bound by the id). Controls are kept,
/// for [`check_description`] / [`AuthChallenge::validate`] to refuse.
fn header_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii() { c } else { '?' }).collect()
}

impl Challenge {
    /// The slots its id binds.
    pub fn slots(&self) -> IdSlots<'_> {
        IdSlots {
            realm: &self.realm,
            method: &self.method,
            intent: &self.intent,
            request: &self.request_b64,
            expires: self.expires.as_deref().unwrap_or(""),
            digest: self.digest.as_deref().unwrap_or(""),
            header: normalize_header(self.header.as_deref()),
            opaque: self.opaque.as_deref().unwrap_or(""),
        }
    }

    /// The decoded `opaque` map, if any.
    pub fn opaque_map(&self) -> Result<Option<BTreeMap<String, String>>, ChallengeError> {
        self.opaque.as_deref().map(decode_opaque).transpose()
    }

    /// As an [`AuthChallenge`], parameters in MPPX's order: `id, realm, method, intent,
    /// request, description, digest, expires, opaque, header`. A `description`'s non-ASCII
    /// characters are written as `?`; a control character in it makes the result invalid
    /// (see [`Challenge::to_header_value`]).
    pub fn to_auth_challenge(&self) -> AuthChallenge {
        let mut a = AuthChallenge::new(SCHEME)
            .param("id", &self.id)
            .param("realm", &self.realm)
            .param("method", &self.method)
            .param("intent", &self.intent)
            .param("request", &self.request_b64);
        if let Some(d) = &self.description {
            a = a.param("description", header_safe(d));
        }
        for (name, value) in [("digest", &self.digest), ("expires", &self.expires)] {
            if let Some(v) = value {
                a = a.param(name, v);
            }
        }
        if let Some(o) = &self.opaque {
            a = a.param("opaque", o);
        }
        if let Some(h) = &self.header {
            a = a.param("header", h);
        }
        a
    }

    /// The `WWW-Authenticate` field value. A description with CR, LF or another control
    /// character is refused ([`ChallengeError::DescriptionControl`]), never rewritten.
    pub fn to_header_value(&self) -> Result<HeaderValue, ChallengeError> {
        check_description(self.description.as_deref())?;
        Ok(self.to_auth_challenge().to_header_value()?)
    }

    /// Reads a parsed `Payment` challenge, applying MPP's rules (see the module docs).
    pub fn from_auth(a: &AuthChallenge) -> Result<Self, ChallengeError> {
        if !a.scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(ChallengeError::NotPayment);
        }
        if a.token68.is_some() {
            return Err(ChallengeError::Token68);
        }
        // The `auth` readers already refuse duplicate names.
        let required = |name: &'static str| -> Result<String, ChallengeError> {
            match a.get(name) {
                None => Err(ChallengeError::Missing(name)),
                Some("") => Err(ChallengeError::Empty(name)),
                Some(v) => Ok(v.to_owned()),
            }
        };
        let id = required("id")?;
        let realm = required("realm")?;
        let method = required("method")?;
        let intent = required("intent")?;
        let request_b64 = required("request")?;
        check_method(&method)?;
        check_intent(&intent)?;
        let request = decode_request(&request_b64)?;
        let optional = |name: &str| a.get(name).map(str::to_owned);
        let expires = optional("expires");
        if let Some(e) = &expires {
            crate::time::parse(e).map_err(|err| ChallengeError::Expires(err.to_string()))?;
        }
        let opaque = optional("opaque");
        if let Some(o) = &opaque {
            decode_opaque(o)?;
        }
        Ok(Challenge {
            id,
            realm,
            method,
            intent,
            request,
            request_b64,
            expires,
            description: optional("description"),
            digest: optional("digest"),
            opaque,
            header: optional("header"),
        })
    }
}

/// What [`read_www_authenticate`] finds: the valid `Payment` challenges, in order, and why each
/// other one (or piece of the header) was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentChallenges {
    pub challenges: Vec<Challenge>,
    pub skipped: Vec<ChallengeError>,
}

/// Every valid `Payment` challenge in one or more `WWW-Authenticate` field values, in order,
/// read as a client should (see the module docs): a malformed challenge is skipped, and the
/// rest are still seen. Challenges of other schemes (e.g. `L402`) are left out.
pub fn read_www_authenticate<'a>(values: impl IntoIterator<Item = &'a str>) -> PaymentChallenges {
    from_read(auth::read_challenges(values))
}

/// [`read_www_authenticate`] over every `WWW-Authenticate` field of a response, including
/// fields that are not UTF-8 (see `farebox_core::auth::read_challenges_from`).
pub fn read_www_authenticate_from(headers: &http::HeaderMap) -> PaymentChallenges {
    from_read(auth::read_challenges_from(headers))
}

fn from_read(read: auth::ReadChallenges) -> PaymentChallenges {
    let mut out = PaymentChallenges {
        challenges: Vec::new(),
        skipped: read.skipped.into_iter().map(ChallengeError::Header).collect(),
    };
    for a in read.challenges.iter().filter(|a| a.scheme.eq_ignore_ascii_case(SCHEME)) {
        match Challenge::from_auth(a) {
            Ok(c) => out.challenges.push(c),
            Err(e) => out.skipped.push(e),
        }
    }
    out
}

/// [`read_www_authenticate`] as a `Result`: the valid `Payment` challenges when there is one
/// (malformed ones beside it are skipped), otherwise why there is none (the first problem with
/// a `Payment` challenge, else the first problem with the header); no challenge at all and
/// nothing malformed is an empty list.
pub fn parse_www_authenticate<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Challenge>, ChallengeError> {
    let read = read_www_authenticate(values);
    if !read.challenges.is_empty() {
        return Ok(read.challenges);
    }
    let mut skipped = read.skipped;
    let about_payment = skipped.iter().position(|e| !matches!(e, ChallengeError::Header(_)));
    match about_payment.or((!skipped.is_empty()).then_some(0)) {
        Some(i) => Err(skipped.swap_remove(i)),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ChallengeKey {
        ChallengeKey::new(b"test-vector-secret-minimum-32-byte-secret").unwrap()
    }

    fn sample_params() -> ChallengeParams {
        ChallengeParams {
            realm: "api.example.com".into(),
            method: "lightning".into(),
            intent: "charge".into(),
            request: json!({"amount": "21", "currency": "sat"}),
            expires: Some("2030-01-01T00:00:00Z".into()),
            description: Some("Café \"quoted\"".into()),
            opaque: Some(BTreeMap::from([("route".into(), "/data".into())])),
            ..Default::default()
        }
    }

    fn sample() -> Challenge {
        key().issue(sample_params()).unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(ChallengeKey::new(&[0; 31]).unwrap_err(), SecretTooShort(31));
    }

    #[test]
    fn round_trips_through_the_header() {
        let c = sample();
        let value = c.to_header_value().unwrap();
        let text = value.to_str().unwrap();
        assert!(text.starts_with("Payment id=\""), "{text}");
        let back = parse_www_authenticate([text]).unwrap();
        assert_eq!(back.len(), 1);
        let mut expected = c.clone();
        expected.description = Some("Caf? \"quoted\"".into());
        assert_eq!(back[0], expected);
        assert!(key().verify_id(&back[0].slots(), &back[0].id));
        assert_eq!(
            back[0].opaque_map().unwrap().unwrap()["route"],
            "/data",
            "opaque decodes to the map it was made from"
        );
    }

    #[test]
    fn id_does_not_bind_description_but_binds_the_rest() {
        let c = sample();
        let mut d = c.clone();
        d.description = None;
        assert!(key().verify_id(&d.slots(), &c.id));
        let mut e = c.clone();
        e.expires = Some("2031-01-01T00:00:00Z".into());
        assert!(!key().verify_id(&e.slots(), &c.id));
        assert!(!key().verify_id(&c.slots(), &c.id[..42]));
        assert!(!key().verify_id(&c.slots(), ""));
    }

    #[test]
    fn invalid_method_and_intent_are_refused_when_issuing() {
        let p = |m: &str, i: &str| ChallengeParams {
            method: m.into(),
            intent: i.into(),
            request: json!({}),
            ..Default::default()
        };
        assert_eq!(key().issue(p("Tempo", "charge")).unwrap_err(), ChallengeError::InvalidMethod);
        assert_eq!(key().issue(p("tempo", "ch arge")).unwrap_err(), ChallengeError::InvalidIntent);
        assert!(key().issue(ChallengeParams { request: json!(1.5), ..p("a", "b") }).is_err());
    }

    #[test]
    fn a_description_with_a_line_break_is_refused_not_rewritten() {
        for bad in ["Line one\r\nLine two", "a\nb", "a\rb", "nul\0", "del\u{7f}", "c1\u{85}"] {
            let params = ChallengeParams { description: Some(bad.into()), ..sample_params() };
            assert_eq!(
                key().issue(params).unwrap_err(),
                ChallengeError::DescriptionControl,
                "{bad:?}"
            );
            // A challenge built by hand is refused when written.
            let mut c = sample();
            c.description = Some(bad.into());
            assert_eq!(c.to_header_value().unwrap_err(), ChallengeError::DescriptionControl);
        }
        let tab = ChallengeParams { description: Some("a\tb".into()), ..sample_params() };
        let c = key().issue(tab).unwrap();
        let back = parse_www_authenticate([c.to_header_value().unwrap().to_str().unwrap()]);
        assert_eq!(back.unwrap()[0].description.as_deref(), Some("a\tb"));
    }
}
