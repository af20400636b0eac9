//! NIP-47 on the wire, shared by the client and the wallet service: event kinds, encryption
//! negotiation, the JSON payloads, error codes and their mapping onto [`LightningError`].
//!
//! Every parser here takes untrusted input (an event from a relay): sizes are bounded before
//! decryption and before JSON parsing, numbers must be non-negative integers, and failures are
//! typed ([`WireError`]), never panics.

use std::time::Duration;

use nostr::nips::{nip04, nip44};
use nostr::{Event, EventBuilder, Keys, Kind, PublicKey, SecretKey, Tag, TagKind, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{LightningError, PaymentHash, Preimage};

/// Info event (replaceable): the wallet's capabilities and encryption schemes.
pub const KIND_INFO: u16 = 13194;
/// Request, client to wallet.
pub const KIND_REQUEST: u16 = 23194;
/// Response, wallet to client.
pub const KIND_RESPONSE: u16 = 23195;
/// Notification encrypted with NIP-04 (legacy).
pub const KIND_NOTIFICATION_NIP04: u16 = 23196;
/// Notification encrypted with NIP-44.
pub const KIND_NOTIFICATION_NIP44: u16 = 23197;

/// Largest encrypted content read from an event: NIP-47 asks relays to carry at least 64 KB
/// payloads, and nothing farebox sends or expects is near that.
pub const MAX_CONTENT_LEN: usize = 64 * 1024;
/// NIP-47: metadata longer than this MUST be dropped.
pub const MAX_METADATA_LEN: usize = 4096;
/// Longest wallet-supplied message kept in an error (they are shown to people, not parsed).
const MAX_MESSAGE_LEN: usize = 200;

/// The tag naming the encryption scheme (info event: the list; request: the one used).
pub const ENCRYPTION_TAG: &str = "encryption";
/// The info-event tag listing notification types.
pub const NOTIFICATIONS_TAG: &str = "notifications";

/// Why an event or payload was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("encrypted content is larger than {MAX_CONTENT_LEN} bytes")]
    TooLarge,
    #[error("content cannot be decrypted")]
    Decrypt,
    #[error("content cannot be encrypted")]
    Encrypt,
    #[error("payload is not the expected JSON: {0}")]
    Json(String),
    #[error("unexpected event: {0}")]
    Event(&'static str),
}

/// An encryption scheme NIP-47 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encryption {
    /// NIP-44 version 2: preferred.
    Nip44V2,
    /// NIP-04: deprecated, for wallets that have not moved to NIP-44.
    Nip04,
}

impl Encryption {
    /// The name used in `encryption` tags.
    pub fn tag_value(self) -> &'static str {
        match self {
            Self::Nip44V2 => "nip44_v2",
            Self::Nip04 => "nip04",
        }
    }

    /// The scheme a tag value names, if farebox speaks it.
    pub fn from_tag_value(value: &str) -> Option<Self> {
        match value {
            "nip44_v2" => Some(Self::Nip44V2),
            "nip04" => Some(Self::Nip04),
            _ => None,
        }
    }

    /// The notification kind carrying this scheme.
    pub fn notification_kind(self) -> u16 {
        match self {
            Self::Nip44V2 => KIND_NOTIFICATION_NIP44,
            Self::Nip04 => KIND_NOTIFICATION_NIP04,
        }
    }

    /// Encrypts `plaintext` from `secret` to `peer`.
    pub fn encrypt(
        self,
        secret: &SecretKey,
        peer: &PublicKey,
        plaintext: &str,
    ) -> Result<String, WireError> {
        match self {
            Self::Nip44V2 => nip44::encrypt(secret, peer, plaintext, nip44::Version::V2)
                .map_err(|_| WireError::Encrypt),
            Self::Nip04 => nip04::encrypt(secret, peer, plaintext).map_err(|_| WireError::Encrypt),
        }
    }

    /// Decrypts `payload` sent by `peer` to `secret`, refusing oversized payloads first.
    pub fn decrypt(
        self,
        secret: &SecretKey,
        peer: &PublicKey,
        payload: &str,
    ) -> Result<String, WireError> {
        if payload.len() > MAX_CONTENT_LEN {
            return Err(WireError::TooLarge);
        }
        match self {
            Self::Nip44V2 => nip44::decrypt(secret, peer, payload).map_err(|_| WireError::Decrypt),
            Self::Nip04 => nip04::decrypt(secret, peer, payload).map_err(|_| WireError::Decrypt),
        }
    }
}

/// The NIP-47 methods farebox sends and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    PayInvoice,
    MakeInvoice,
    LookupInvoice,
    GetBalance,
    GetInfo,
}

impl Method {
    /// Every method, in the order an info event lists them.
    pub const ALL: [Method; 5] =
        [Self::PayInvoice, Self::MakeInvoice, Self::LookupInvoice, Self::GetBalance, Self::GetInfo];

    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PayInvoice => "pay_invoice",
            Self::MakeInvoice => "make_invoice",
            Self::LookupInvoice => "lookup_invoice",
            Self::GetBalance => "get_balance",
            Self::GetInfo => "get_info",
        }
    }

    /// The method a wire name names, if farebox knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// NIP-47 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    RateLimited,
    NotImplemented,
    InsufficientBalance,
    QuotaExceeded,
    Restricted,
    Unauthorized,
    Internal,
    UnsupportedEncryption,
    PaymentFailed,
    NotFound,
    Other,
}

impl ErrorCode {
    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "RATE_LIMITED",
            Self::NotImplemented => "NOT_IMPLEMENTED",
            Self::InsufficientBalance => "INSUFFICIENT_BALANCE",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::Restricted => "RESTRICTED",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Internal => "INTERNAL",
            Self::UnsupportedEncryption => "UNSUPPORTED_ENCRYPTION",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::NotFound => "NOT_FOUND",
            Self::Other => "OTHER",
        }
    }

    /// Reads a code; one farebox does not know is `OTHER`, as the spec's catch-all.
    pub fn from_name(name: &str) -> Self {
        [
            Self::RateLimited,
            Self::NotImplemented,
            Self::InsufficientBalance,
            Self::QuotaExceeded,
            Self::Restricted,
            Self::Unauthorized,
            Self::Internal,
            Self::UnsupportedEncryption,
            Self::PaymentFailed,
            Self::NotFound,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
        .unwrap_or(Self::Other)
    }

    /// Whether the wallet refused before doing anything: for `pay_invoice` these mean no money
    /// moved. `INTERNAL` and `OTHER` do not say, so a payment answered with them is looked up.
    pub fn refused_before_acting(self) -> bool {
        !matches!(self, Self::Internal | Self::Other)
    }

    /// The typed error for this code, answered to `method`. `NOT_FOUND` from `lookup_invoice`
    /// is not an error (the client reads it as an unknown invoice) and never reaches here.
    pub fn to_lightning_error(self, method: Method, message: &str) -> LightningError {
        let message = sanitize(message);
        match self {
            Self::RateLimited => LightningError::RateLimited(message),
            Self::NotImplemented => LightningError::Unsupported(match method {
                Method::PayInvoice => "the wallet does not implement pay_invoice",
                Method::MakeInvoice => "the wallet does not implement make_invoice",
                Method::LookupInvoice => "the wallet does not implement lookup_invoice",
                Method::GetBalance => "the wallet does not implement get_balance",
                Method::GetInfo => "the wallet does not implement get_info",
            }),
            Self::InsufficientBalance => LightningError::InsufficientBalance(message),
            Self::QuotaExceeded => LightningError::QuotaExceeded(message),
            Self::Restricted => LightningError::Restricted(message),
            Self::Unauthorized => LightningError::AuthRefused(message),
            Self::UnsupportedEncryption => LightningError::Unsupported(
                "the wallet accepts none of the encryption schemes farebox speaks",
            ),
            Self::PaymentFailed => LightningError::PaymentFailed(message),
            Self::NotFound => LightningError::InvalidRequest(format!("not found: {message}")),
            // The wallet failed: for anything but a payment (handled by the client, which
            // looks it up) that is a backend that cannot answer.
            Self::Internal | Self::Other => {
                LightningError::Unavailable(format!("wallet error {}: {message}", self.as_str()))
            }
        }
    }
}

impl ErrorCode {
    /// The code a wallet service answers for a backend's error (the inverse of
    /// [`ErrorCode::to_lightning_error`] where one exists).
    pub fn for_error(error: &LightningError) -> Self {
        match error {
            LightningError::QuotaExceeded(_) => Self::QuotaExceeded,
            LightningError::InsufficientBalance(_) => Self::InsufficientBalance,
            LightningError::RateLimited(_) => Self::RateLimited,
            LightningError::AuthRefused(_) => Self::Unauthorized,
            LightningError::Restricted(_) => Self::Restricted,
            LightningError::Unsupported(_) => Self::NotImplemented,
            LightningError::PaymentFailed(_) | LightningError::InvalidInvoice(_) => {
                Self::PaymentFailed
            }
            LightningError::InvalidRequest(_) => Self::Other,
            _ => Self::Internal,
        }
    }
}

/// A wallet-supplied message, cut to a bounded length and stripped of control characters.
pub fn sanitize(message: &str) -> String {
    message.chars().filter(|c| !c.is_control()).take(MAX_MESSAGE_LEN).collect()
}

/// What a wallet's info event (kind 13194) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletInfo {
    /// Capabilities from the content (methods, and `notifications`), unknown ones kept.
    pub capabilities: Vec<String>,
    /// Encryption schemes farebox speaks that the wallet offers. An info event without an
    /// `encryption` tag means NIP-04 only.
    pub encryptions: Vec<Encryption>,
    /// Notification types from the `notifications` tag.
    pub notifications: Vec<String>,
}

impl WalletInfo {
    /// Reads an info event; the caller has checked its author and signature.
    pub fn from_event(event: &Event) -> Result<Self, WireError> {
        if event.kind != Kind::Custom(KIND_INFO) {
            return Err(WireError::Event("not an info event"));
        }
        if event.content.len() > MAX_CONTENT_LEN {
            return Err(WireError::TooLarge);
        }
        let words = |s: &str| s.split_whitespace().take(64).map(str::to_owned).collect::<Vec<_>>();
        let tag = |name: &str| {
            event.tags.iter().find_map(|t| {
                let t = t.as_slice();
                (t.first().map(String::as_str) == Some(name)).then(|| t.get(1).cloned())
            })
        };
        let encryptions = match tag(ENCRYPTION_TAG) {
            None => vec![Encryption::Nip04],
            Some(list) => words(list.as_deref().unwrap_or(""))
                .iter()
                .filter_map(|w| Encryption::from_tag_value(w))
                .collect(),
        };
        Ok(Self {
            capabilities: words(&event.content),
            encryptions,
            notifications: words(tag(NOTIFICATIONS_TAG).flatten().as_deref().unwrap_or("")),
        })
    }

    /// The scheme to use: NIP-44 when offered, else NIP-04, else none (the wallet speaks only
    /// schemes farebox does not).
    pub fn preferred_encryption(&self) -> Option<Encryption> {
        [Encryption::Nip44V2, Encryption::Nip04].into_iter().find(|e| self.encryptions.contains(e))
    }

    /// Whether the wallet pushes `payment_received` notifications.
    pub fn notifies_payments_received(&self) -> bool {
        self.capabilities.iter().any(|c| c == "notifications")
            && self.notifications.iter().any(|n| n == "payment_received")
    }

    /// The info event a wallet service publishes for one connection key.
    pub fn to_event(&self, wallet: &Keys) -> Result<Event, WireError> {
        let mut tags = Vec::new();
        // A NIP-04-only wallet writes no tag: that is how legacy wallets look on the wire.
        if self.encryptions != [Encryption::Nip04] {
            let list: Vec<&str> = self.encryptions.iter().map(|e| e.tag_value()).collect();
            tags.push(Tag::custom(TagKind::custom(ENCRYPTION_TAG), [list.join(" ")]));
        }
        if !self.notifications.is_empty() {
            tags.push(Tag::custom(
                TagKind::custom(NOTIFICATIONS_TAG),
                [self.notifications.join(" ")],
            ));
        }
        EventBuilder::new(Kind::Custom(KIND_INFO), self.capabilities.join(" "))
            .tags(tags)
            .sign_with_keys(wallet)
            .map_err(|_| WireError::Encrypt)
    }
}

/// A request payload: `{"method", "params"}`. `method` stays a string so that a service can
/// answer `NOT_IMPLEMENTED` to methods it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestPayload {
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

/// `pay_invoice` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayInvoiceParams {
    pub invoice: String,
    /// msat, for amountless invoices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
}

/// `make_invoice` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeInvoiceParams {
    /// msat.
    pub amount: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_hash: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<u64>,
}

/// `lookup_invoice` parameters: one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupInvoiceParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
}

/// A response payload: `{"result_type", "error", "result"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePayload {
    pub result_type: String,
    #[serde(default)]
    pub error: Option<ErrorPayload>,
    #[serde(default)]
    pub result: Option<Value>,
}

/// The `error` member of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// `pay_invoice` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayInvoiceResult {
    pub preimage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fees_paid: Option<u64>,
}

/// `get_balance` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetBalanceResult {
    /// msat.
    pub balance: u64,
}

/// `get_info` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetInfoResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<String>,
}

/// Whether a transaction is an invoice (incoming) or a payment (outgoing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Incoming,
    Outgoing,
}

/// A transaction's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    Pending,
    Settled,
    Accepted,
    Expired,
    Failed,
}

/// The transaction object of `make_invoice`, `lookup_invoice` and notifications. Fields a
/// wallet may leave out are optional; unknown `type`/`state` values fail the parse (a state
/// farebox cannot read must not be guessed at).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TxState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preimage: Option<String>,
    pub payment_hash: String,
    /// msat.
    #[serde(default)]
    pub amount: u64,
    /// msat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fees_paid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<u64>,
}

impl Transaction {
    /// The preimage, if present, 32 bytes, and the preimage of this transaction's hash. A
    /// wallet's "settled" is only believed with this proof.
    pub fn proven_preimage(&self, payment_hash: &PaymentHash) -> Option<Preimage> {
        let preimage = decode_hash(self.preimage.as_deref()?)?;
        crate::preimage_matches(&preimage, payment_hash).then_some(preimage)
    }
}

/// A notification payload: `{"notification_type", "notification"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationPayload {
    pub notification_type: String,
    pub notification: Value,
}

/// A 32-byte value in hex (payment hash, preimage).
pub fn decode_hash(hex_str: &str) -> Option<[u8; 32]> {
    if hex_str.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

/// Parses a JSON payload of at most [`MAX_CONTENT_LEN`] bytes.
pub fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, WireError> {
    if json.len() > MAX_CONTENT_LEN {
        return Err(WireError::TooLarge);
    }
    serde_json::from_str(json).map_err(|e| WireError::Json(sanitize(&e.to_string())))
}

/// Reads a typed result out of a response's `result` member.
pub fn parse_result<T: serde::de::DeserializeOwned>(result: Value) -> Result<T, WireError> {
    serde_json::from_value(result).map_err(|e| WireError::Json(sanitize(&e.to_string())))
}

/// The first value of tag `name` on `event`.
pub fn tag_value<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.tags.iter().find_map(|t| {
        let t = t.as_slice();
        (t.first().map(String::as_str) == Some(name)).then(|| t.get(1).map(String::as_str))?
    })
}

/// The encryption a request names: its `encryption` tag, NIP-04 without one; `None` for a
/// scheme farebox does not speak.
pub fn request_encryption(event: &Event) -> Option<Encryption> {
    match tag_value(event, ENCRYPTION_TAG) {
        None => Some(Encryption::Nip04),
        Some(value) => Encryption::from_tag_value(value.trim()),
    }
}

/// Builds and signs an encrypted NIP-47 event of `kind` from `keys` to `peer`, with `tags`
/// besides the `p` tag.
pub fn encrypted_event(
    keys: &Keys,
    kind: u16,
    peer: &PublicKey,
    encryption: Encryption,
    plaintext: &str,
    tags: Vec<Tag>,
) -> Result<Event, WireError> {
    let content = encryption.encrypt(keys.secret_key(), peer, plaintext)?;
    let mut all = vec![Tag::public_key(*peer)];
    all.extend(tags);
    EventBuilder::new(Kind::Custom(kind), content)
        .tags(all)
        .sign_with_keys(keys)
        .map_err(|_| WireError::Encrypt)
}

/// A request's `expiration` tag value: now plus `ttl`, rounded up to the next second.
pub fn expiration_after(ttl: Duration) -> Timestamp {
    let now = Timestamp::now().as_secs();
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
    Timestamp::from(now.saturating_add(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_round_trips_and_unknown_is_other() {
        for code in [
            ErrorCode::RateLimited,
            ErrorCode::NotImplemented,
            ErrorCode::InsufficientBalance,
            ErrorCode::QuotaExceeded,
            ErrorCode::Restricted,
            ErrorCode::Unauthorized,
            ErrorCode::Internal,
            ErrorCode::UnsupportedEncryption,
            ErrorCode::PaymentFailed,
            ErrorCode::NotFound,
            ErrorCode::Other,
        ] {
            assert_eq!(ErrorCode::from_name(code.as_str()), code);
        }
        assert_eq!(ErrorCode::from_name("SOMETHING_NEW"), ErrorCode::Other);
    }

    #[test]
    fn wallet_refusals_keep_their_meaning_both_ways() {
        use ErrorCode::*;
        for code in [
            RateLimited,
            NotImplemented,
            InsufficientBalance,
            QuotaExceeded,
            Restricted,
            Unauthorized,
            PaymentFailed,
            Internal,
        ] {
            let error = code.to_lightning_error(Method::PayInvoice, "why");
            assert_eq!(ErrorCode::for_error(&error), code, "{error}");
        }
        // The two an agent's budget logic must tell apart.
        let quota = QuotaExceeded.to_lightning_error(Method::PayInvoice, "budget");
        let balance = InsufficientBalance.to_lightning_error(Method::PayInvoice, "funds");
        assert!(matches!(quota, LightningError::QuotaExceeded(_)));
        assert!(matches!(balance, LightningError::InsufficientBalance(_)));
    }

    #[test]
    fn wallet_messages_are_bounded_and_without_control_characters() {
        let long = format!("a\u{1b}[31m\n{}", "x".repeat(10_000));
        let message = sanitize(&long);
        assert!(message.chars().count() <= MAX_MESSAGE_LEN);
        assert!(!message.chars().any(char::is_control));
    }

    #[test]
    fn info_event_without_encryption_tag_means_nip04_only() {
        let keys = Keys::generate();
        let legacy = EventBuilder::new(Kind::Custom(KIND_INFO), "pay_invoice get_balance")
            .sign_with_keys(&keys)
            .unwrap();
        let info = WalletInfo::from_event(&legacy).unwrap();
        assert_eq!(info.encryptions, [Encryption::Nip04]);
        assert_eq!(info.preferred_encryption(), Some(Encryption::Nip04));

        let both = WalletInfo {
            capabilities: vec!["pay_invoice".into(), "notifications".into()],
            encryptions: vec![Encryption::Nip04, Encryption::Nip44V2],
            notifications: vec!["payment_received".into()],
        };
        let read = WalletInfo::from_event(&both.to_event(&keys).unwrap()).unwrap();
        assert_eq!(read, both);
        assert_eq!(read.preferred_encryption(), Some(Encryption::Nip44V2));
        assert!(read.notifies_payments_received());

        let unknown_only = EventBuilder::new(Kind::Custom(KIND_INFO), "pay_invoice")
            .tag(Tag::custom(TagKind::custom(ENCRYPTION_TAG), ["nip99"]))
            .sign_with_keys(&keys)
            .unwrap();
        assert_eq!(WalletInfo::from_event(&unknown_only).unwrap().preferred_encryption(), None);
    }

    #[test]
    fn both_schemes_round_trip_between_two_keys() {
        let (a, b) = (Keys::generate(), Keys::generate());
        for scheme in [Encryption::Nip44V2, Encryption::Nip04] {
            let sealed = scheme.encrypt(a.secret_key(), &b.public_key(), "{\"x\":1}").unwrap();
            let opened = scheme.decrypt(b.secret_key(), &a.public_key(), &sealed).unwrap();
            assert_eq!(opened, "{\"x\":1}");
            assert_eq!(
                scheme.decrypt(b.secret_key(), &a.public_key(), &"A".repeat(MAX_CONTENT_LEN + 1)),
                Err(WireError::TooLarge)
            );
        }
    }

    #[test]
    fn transactions_refuse_negative_amounts_and_unknown_states() {
        let ok: Transaction =
            parse_json(r#"{"type":"incoming","state":"settled","payment_hash":"00","amount":5}"#)
                .unwrap();
        assert_eq!(ok.state, Some(TxState::Settled));
        assert!(parse_json::<Transaction>(r#"{"payment_hash":"00","amount":-5}"#).is_err());
        assert!(parse_json::<Transaction>(r#"{"payment_hash":"00","state":"maybe"}"#).is_err());
    }
}
