//! BOLT11 invoices: parsing untrusted strings into [`ParsedInvoice`] and signing new ones.
//!
//! Both directions sit on `lightning-invoice` (the rust-lightning codec). This module adds what
//! farebox needs on top of it:
//!
//! * a length bound checked *before* any decoding ([`MAX_INVOICE_LEN`]),
//! * the current BOLT11 rule that `p`, `h`, `s` and `n` fields of the wrong length fail the
//!   invoice (lightning-invoice 0.34 still skips them, which the spec stopped allowing in
//!   lightning/bolts#1243),
//! * an owned, plain-data [`ParsedInvoice`] so callers do not depend on lightning-invoice types
//!   beyond [`Currency`] and the secp256k1 [`PublicKey`],
//! * errors as a [`Bolt11Error`] (mapped into [`LightningError::InvalidInvoice`]), never panics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{Hash, sha256};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey, Signing};
use lightning_invoice::{
    Bolt11Invoice, Bolt11InvoiceDescriptionRef, Bolt11ParseError, Bolt11SemanticError,
    CreationError, InvoiceBuilder, PaymentSecret, RawTaggedField, SignedRawBolt11Invoice,
};

pub use lightning_invoice::Currency;

use crate::backend::{LightningError, PaymentHash};

/// Longest BOLT11 string accepted, in bytes (lightning-invoice's and LND's `MAX_LENGTH`).
/// Longer input is refused before any bech32 work, so parse cost is bounded.
pub const MAX_INVOICE_LEN: usize = lightning_invoice::MAX_LENGTH;

/// Longest `d` (description) field, in bytes: 1023 five-bit groups hold 639 whole bytes.
pub const MAX_DESCRIPTION_LEN: usize = 639;

/// Expiry BOLT11 implies when an invoice has no `x` field.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(lightning_invoice::DEFAULT_EXPIRY_TIME);

/// `min_final_cltv_expiry_delta` BOLT11 implies when an invoice has no `c` field.
pub const DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA: u64 =
    lightning_invoice::DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA;

/// Why a BOLT11 string was refused. Displayed text is meant for logs, not for end users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Bolt11Error {
    /// Over [`MAX_INVOICE_LEN`] bytes; not decoded at all.
    #[error("invoice is {len} bytes, over the {MAX_INVOICE_LEN}-byte limit")]
    TooLong { len: usize },
    /// Not valid bech32: bad checksum, no `1` separator, mixed case, bad characters…
    #[error("malformed bech32: {0}")]
    Bech32(String),
    /// The human-readable prefix is not `ln` + a known currency.
    #[error("bad human-readable part: {0}")]
    Prefix(String),
    /// The amount is malformed, uses an unknown multiplier, overflows or is sub-millisatoshi.
    #[error("invalid amount: {0}")]
    Amount(String),
    /// The data part is shorter than a signature.
    #[error("data part too short")]
    TooShort,
    /// A tagged field could not be decoded.
    #[error("malformed data part: {0}")]
    Malformed(String),
    /// A fixed-length field (`p`, `h`, `s` 52 groups; `n` 53 groups) has another length.
    #[error("field `{field}` has data length {len}, expected {expected}")]
    FieldLength { field: char, len: usize, expected: usize },
    /// A mandatory field is absent.
    #[error("missing required field: {0}")]
    MissingField(&'static str),
    /// A field that must appear once appears more than once (or both `d` and `h`).
    #[error("duplicate field: {0}")]
    DuplicateField(&'static str),
    /// Unknown even (required) feature bit, or the payment-secret feature is not set.
    #[error("unsupported or invalid feature bits")]
    Features,
    /// The signature does not verify against `n`, is high-S with `n`, or cannot be recovered.
    #[error("invalid signature: {0}")]
    Signature(String),
    /// lightning-invoice panicked on this input. Defensive: never observed, but the input is
    /// untrusted and a panic must not take a server down.
    #[error("invoice decoder failed internally")]
    Internal,
}

impl From<Bolt11Error> for LightningError {
    fn from(e: Bolt11Error) -> Self {
        LightningError::InvalidInvoice(e.to_string())
    }
}

/// The description an invoice commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceDescription {
    /// A `d` field: the text itself.
    Direct(String),
    /// An `h` field: sha256 of a description delivered out of band.
    Hash([u8; 32]),
}

/// `text` cut to at most `max` bytes on a character boundary: how a memo is fitted into the
/// description field (at most [`MAX_DESCRIPTION_LEN`] bytes).
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A signature-checked BOLT11 invoice, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedInvoice {
    /// Amount in millisatoshi; `None` for an amountless ("any amount") invoice.
    pub amount_msat: Option<u64>,
    /// The `p` field: sha256 of the preimage the payee releases on payment.
    pub payment_hash: PaymentHash,
    /// The `s` field, sent to the payee in the onion.
    pub payment_secret: [u8; 32],
    /// The `d` or `h` field.
    pub description: InvoiceDescription,
    /// Creation time, Unix seconds.
    pub timestamp: u64,
    /// How long after `timestamp` the invoice may be paid (`x`, default 3600 s).
    pub expiry: Duration,
    /// The `c` field (default 18).
    pub min_final_cltv_expiry_delta: u64,
    /// Chain the invoice is for, from the prefix (`lnbc`, `lntb`, `lntbs`, `lnbcrt`, `lnsb`).
    pub currency: Currency,
    /// The payee node: the `n` field if present (signature verified against it), otherwise the
    /// key recovered from the signature.
    pub payee: PublicKey,
}

impl ParsedInvoice {
    /// The bitcoin network of [`Self::currency`] (simnet maps to regtest).
    pub fn network(&self) -> bitcoin::Network {
        self.currency.clone().into()
    }

    /// Unix second at which the invoice expires (saturating).
    pub fn expires_at(&self) -> u64 {
        self.timestamp.saturating_add(self.expiry.as_secs())
    }

    /// Whether the invoice is past its expiry at `now`: strictly after `timestamp + expiry`,
    /// as lightning-invoice and LND count it. A `now` before the epoch is never expired.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        match now.duration_since(UNIX_EPOCH) {
            Ok(now) => now > Duration::from_secs(self.expires_at()),
            Err(_) => false,
        }
    }
}

/// Parses and signature-checks a BOLT11 string; errors are [`LightningError::InvalidInvoice`].
///
/// Accepts all-lower or all-upper case. Does not check expiry or network: that depends on the
/// caller's clock and chain (see [`ParsedInvoice::is_expired`]).
pub fn parse_invoice(bolt11: &str) -> Result<ParsedInvoice, LightningError> {
    parse_bolt11(bolt11).map_err(Into::into)
}

/// [`parse_invoice`] with the detailed [`Bolt11Error`].
pub fn parse_bolt11(bolt11: &str) -> Result<ParsedInvoice, Bolt11Error> {
    if bolt11.len() > MAX_INVOICE_LEN {
        return Err(Bolt11Error::TooLong { len: bolt11.len() });
    }
    // lightning-invoice is not known to panic on any input, but it sits on a network boundary;
    // turning a hypothetical panic into an error keeps a malicious invoice from killing a task.
    catch_unwind(AssertUnwindSafe(|| decode(bolt11))).unwrap_or(Err(Bolt11Error::Internal))
}

fn decode(bolt11: &str) -> Result<ParsedInvoice, Bolt11Error> {
    let signed: SignedRawBolt11Invoice = bolt11.parse().map_err(map_parse_error)?;
    check_fixed_field_lengths(&signed)?;
    let invoice = Bolt11Invoice::from_signed(signed).map_err(map_semantic_error)?;

    let description = match invoice.description() {
        Bolt11InvoiceDescriptionRef::Direct(d) => {
            InvoiceDescription::Direct(d.as_inner().0.clone())
        }
        Bolt11InvoiceDescriptionRef::Hash(h) => InvoiceDescription::Hash(h.0.to_byte_array()),
    };
    Ok(ParsedInvoice {
        amount_msat: invoice.amount_milli_satoshis(),
        payment_hash: invoice.payment_hash().to_byte_array(),
        payment_secret: invoice.payment_secret().0,
        description,
        timestamp: invoice.duration_since_epoch().as_secs(),
        expiry: invoice.expiry_time(),
        min_final_cltv_expiry_delta: invoice.min_final_cltv_expiry_delta(),
        currency: invoice.currency(),
        // `from_signed` verified the signature, so this recovery cannot fail.
        payee: invoice.get_payee_pub_key(),
    })
}

/// lightning-invoice turns wrong-length `p`/`h`/`s`/`n` fields into unknown (ignored) fields;
/// BOLT11 since lightning/bolts#1243 says the reader MUST fail instead. An ignored wrong-length
/// `n` or `p` next to a valid one is exactly the kind of ambiguity a payer should not accept.
fn check_fixed_field_lengths(signed: &SignedRawBolt11Invoice) -> Result<(), Bolt11Error> {
    for field in &signed.raw_invoice().data.tagged_fields {
        let RawTaggedField::UnknownSemantics(groups) = field else {
            continue;
        };
        // An unknown field keeps its tag and 2-group length prefix in front of the data.
        let Some(tag) = groups.first() else { continue };
        let expected = match tag.to_char() {
            'p' | 'h' | 's' => 52,
            'n' => 53,
            _ => continue,
        };
        let len = groups.len().saturating_sub(3);
        if len != expected {
            return Err(Bolt11Error::FieldLength { field: tag.to_char(), len, expected });
        }
        // Right length but still unparsed (cannot happen for these tags today): refuse too.
        return Err(Bolt11Error::Malformed(format!("undecodable `{}` field", tag.to_char())));
    }
    Ok(())
}

fn map_parse_error(e: Bolt11ParseError) -> Bolt11Error {
    use Bolt11ParseError as P;
    match e {
        P::Bech32Error(e) => Bolt11Error::Bech32(error_chain(&e)),
        P::BadPrefix | P::UnknownCurrency | P::MalformedHRP => Bolt11Error::Prefix(e.to_string()),
        P::ParseAmountError(_) | P::UnknownSiPrefix => Bolt11Error::Amount(e.to_string()),
        P::MalformedSignature(e) => Bolt11Error::Signature(e.to_string()),
        P::TooShortDataPart => Bolt11Error::TooShort,
        other => Bolt11Error::Malformed(other.to_string()),
    }
}

/// `e` and its sources joined: bech32's top-level messages ("parse failed") hide the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn map_semantic_error(e: Bolt11SemanticError) -> Bolt11Error {
    use Bolt11SemanticError as S;
    match e {
        S::NoPaymentHash => Bolt11Error::MissingField("p (payment hash)"),
        S::NoDescription => Bolt11Error::MissingField("d or h (description)"),
        S::NoPaymentSecret => Bolt11Error::MissingField("s (payment secret)"),
        S::MultiplePaymentHashes => Bolt11Error::DuplicateField("p (payment hash)"),
        S::MultipleDescriptions => Bolt11Error::DuplicateField("d/h (description)"),
        S::MultiplePaymentSecrets => Bolt11Error::DuplicateField("s (payment secret)"),
        S::InvalidFeatures => Bolt11Error::Features,
        S::InvalidSignature => Bolt11Error::Signature(e.to_string()),
        S::ImpreciseAmount => Bolt11Error::Amount(e.to_string()),
        // Bolt11SemanticError is not exhaustive across versions; keep the text.
        #[allow(unreachable_patterns)]
        other => Bolt11Error::Malformed(other.to_string()),
    }
}

/// Everything needed to sign an invoice. [`InvoiceParams::new`] fills BOLT11 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceParams {
    /// Chain prefix; [`Currency::Regtest`] (`lnbcrt`) by default.
    pub currency: Currency,
    pub payment_hash: PaymentHash,
    /// `None` signs an amountless invoice.
    pub amount_msat: Option<u64>,
    /// The `d` field, at most [`MAX_DESCRIPTION_LEN`] bytes.
    pub description: String,
    /// Sub-second parts round up: an expiry is never shorter than asked.
    pub expiry: Duration,
    pub min_final_cltv_expiry_delta: u64,
    pub payment_secret: [u8; 32],
    /// Creation time; sub-second parts are dropped (BOLT11 counts seconds).
    pub timestamp: SystemTime,
}

impl InvoiceParams {
    /// Regtest, now, expiry 3600 s, CLTV delta 18, a random payment secret.
    pub fn new(
        payment_hash: PaymentHash,
        amount_msat: Option<u64>,
        description: impl Into<String>,
    ) -> Self {
        let mut payment_secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut payment_secret);
        InvoiceParams {
            currency: Currency::Regtest,
            payment_hash,
            amount_msat,
            description: description.into(),
            expiry: DEFAULT_EXPIRY,
            min_final_cltv_expiry_delta: DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA,
            payment_secret,
            timestamp: SystemTime::now(),
        }
    }
}

/// Builds and signs a BOLT11 invoice with `secret_key` (the payee's node key). The payee is
/// recovered from the signature, so no `n` field is written. Errors are
/// [`LightningError::InvalidRequest`].
pub fn sign_invoice(
    params: &InvoiceParams,
    secret_key: &SecretKey,
) -> Result<String, LightningError> {
    sign_invoice_with(&Secp256k1::signing_only(), params, secret_key)
}

/// [`sign_invoice`] reusing a secp256k1 context (creating one costs about as much as a signature).
pub fn sign_invoice_with<C: Signing>(
    secp: &Secp256k1<C>,
    params: &InvoiceParams,
    secret_key: &SecretKey,
) -> Result<String, LightningError> {
    if params.description.len() > MAX_DESCRIPTION_LEN {
        return Err(LightningError::InvalidRequest(format!(
            "description is {} bytes, over the {MAX_DESCRIPTION_LEN}-byte limit",
            params.description.len()
        )));
    }
    let expiry_secs =
        params.expiry.as_secs().saturating_add(u64::from(params.expiry.subsec_nanos() > 0));
    let mut builder = InvoiceBuilder::new(params.currency.clone())
        .description(params.description.clone())
        .payment_hash(sha256::Hash::from_byte_array(params.payment_hash))
        .timestamp(params.timestamp)
        .min_final_cltv_expiry_delta(params.min_final_cltv_expiry_delta)
        .payment_secret(PaymentSecret(params.payment_secret))
        .expiry_time(Duration::from_secs(expiry_secs));
    if let Some(amount) = params.amount_msat {
        builder = builder.amount_milli_satoshis(amount);
    }
    let invoice =
        builder.build_signed(|msg| secp.sign_ecdsa_recoverable(msg, secret_key)).map_err(|e| {
            LightningError::InvalidRequest(match e {
                CreationError::TimestampOutOfBounds => {
                    "timestamp outside BOLT11's 35-bit range".into()
                }
                other => other.to_string(),
            })
        })?;
    Ok(invoice.to_string())
}
