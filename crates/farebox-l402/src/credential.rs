//! The L402 header wire format, both sides.
//!
//! Server side: [`parse_credential`] reads `Authorization: L402 <macaroon>[,<macaroon>…]:<preimage>`
//! leniently (scheme `L402`/`LSAT` in any case; macaroons in standard or URL-safe base64, padded
//! or not; preimage as 64 hex digits in either case), and [`challenge_value`] writes the
//! `WWW-Authenticate` value. Client side: [`parse_challenge`] reads a challenge (`macaroon=` or
//! `token=`), [`format_credential`] writes the credential, [`attenuate`] appends caveats.

use base64::Engine as _;
use farebox_core::auth::AuthChallenge;

use crate::identifier::{Identifier, IdentifierError};
use crate::macaroon::{Macaroon, MacaroonError, decode_base64};

/// The auth schemes of this rail; `LSAT` is the legacy name.
pub const SCHEMES: &[&str] = &["L402", "LSAT"];
/// Most comma-separated macaroons accepted in one credential.
pub const MAX_MACAROONS: usize = 8;

/// A syntactically valid credential, borrowing from the header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCredential<'a> {
    /// The scheme as sent.
    pub scheme: &'a str,
    /// The macaroon list as sent (comma-separated base64), trimmed.
    pub macaroons: &'a str,
    /// The preimage.
    pub preimage: [u8; 32],
}

impl<'a> ParsedCredential<'a> {
    /// The individual base64 macaroons.
    pub fn macaroon_list(&self) -> impl Iterator<Item = &'a str> {
        self.macaroons.split(',').map(str::trim)
    }
}

/// Why a credential is not an L402 credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("scheme is not L402 or LSAT")]
    NotL402,
    #[error("expected <macaroon>:<preimage> after the scheme")]
    MissingColon,
    #[error("preimage must be 64 hex digits")]
    BadPreimage,
    #[error("empty macaroon in the list")]
    EmptyMacaroon,
    #[error("more than {MAX_MACAROONS} macaroons")]
    TooManyMacaroons,
}

/// Parses an `Authorization` value (the whole field value, scheme included).
pub fn parse_credential(value: &str) -> Result<ParsedCredential<'_>, CredentialError> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once([' ', '\t']).ok_or(CredentialError::NotL402)?;
    if !SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(CredentialError::NotL402);
    }
    let (macaroons, preimage_hex) = rest.rsplit_once(':').ok_or(CredentialError::MissingColon)?;
    let preimage_hex = preimage_hex.trim_matches(|c| c == ' ' || c == '\t');
    let mut preimage = [0u8; 32];
    if preimage_hex.len() != 64 || hex::decode_to_slice(preimage_hex, &mut preimage).is_err() {
        return Err(CredentialError::BadPreimage);
    }
    let macaroons = macaroons.trim_matches(|c| c == ' ' || c == '\t');
    let parsed = ParsedCredential { scheme, macaroons, preimage };
    let mut n = 0;
    for m in parsed.macaroon_list() {
        n += 1;
        if m.is_empty() {
            return Err(CredentialError::EmptyMacaroon);
        }
        if n > MAX_MACAROONS {
            return Err(CredentialError::TooManyMacaroons);
        }
    }
    Ok(parsed)
}

/// A `WWW-Authenticate` value: `<scheme> macaroon="…", invoice="…", version="0", token="…"`.
///
/// `macaroon` and `invoice` come first because Aperture's client and L402sdk match exactly that
/// prefix; `version` and `token` follow for clients of the current spec. The values are base64
/// and bech32, which never need escaping.
pub fn challenge_value(scheme: &str, macaroon_b64: &str, invoice: &str) -> String {
    format!(
        r#"{scheme} macaroon="{macaroon_b64}", invoice="{invoice}", version="0", token="{macaroon_b64}""#
    )
}

/// What a client needs from an L402 challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L402Challenge {
    /// The macaroon, base64, as sent.
    pub macaroon: String,
    /// The BOLT11 invoice to pay.
    pub invoice: String,
    /// The payment hash the macaroon commits to: check that the invoice has the same one before
    /// paying it.
    pub payment_hash: [u8; 32],
}

/// Why a challenge cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("scheme {0:?} is not L402 or LSAT")]
    NotL402(String),
    #[error("challenge has neither macaroon= nor token=")]
    MissingMacaroon,
    #[error("challenge has no invoice=")]
    MissingInvoice,
    #[error("challenge macaroon: {0}")]
    Macaroon(#[from] MacaroonError),
    #[error("challenge macaroon identifier: {0}")]
    Identifier(#[from] IdentifierError),
}

/// Reads an L402 (or LSAT) challenge; accepts `macaroon=` or `token=` (preferring `macaroon`),
/// and checks that the macaroon decodes and carries an L402 identifier.
pub fn parse_challenge(challenge: &AuthChallenge) -> Result<L402Challenge, ChallengeError> {
    if !SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(&challenge.scheme)) {
        return Err(ChallengeError::NotL402(challenge.scheme.clone()));
    }
    let macaroon = challenge
        .get("macaroon")
        .filter(|m| !m.is_empty())
        .or_else(|| challenge.get("token"))
        .ok_or(ChallengeError::MissingMacaroon)?;
    let invoice =
        challenge.get("invoice").filter(|i| !i.is_empty()).ok_or(ChallengeError::MissingInvoice)?;
    let bytes = decode_base64(macaroon)?;
    let mac = Macaroon::decode(&bytes)?;
    let id = Identifier::decode(mac.identifier())?;
    Ok(L402Challenge {
        macaroon: macaroon.to_string(),
        invoice: invoice.to_string(),
        payment_hash: id.payment_hash,
    })
}

/// The `Authorization` value proving payment: `L402 <macaroon>:<hex preimage>`.
pub fn format_credential(macaroon_b64: &str, preimage: &[u8; 32]) -> String {
    format!("L402 {macaroon_b64}:{}", hex::encode(preimage))
}

/// Appends first-party caveats to a token (re-chaining its signature; no key needed) and returns
/// it as standard padded base64. The server enforces every appended caveat.
pub fn attenuate<S: AsRef<[u8]>>(
    macaroon_b64: &str,
    caveats: &[S],
) -> Result<String, MacaroonError> {
    let bytes = decode_base64(macaroon_b64)?;
    let mut owned = Macaroon::decode(&bytes)?.to_owned();
    for c in caveats {
        owned.add_first_party_caveat(c.as_ref());
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(owned.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

    #[test]
    fn lenient_parse() {
        let text = format!("lsat  AAA=,BBB :{}", PRE.to_uppercase());
        let c = parse_credential(&text).unwrap();
        assert_eq!(c.scheme, "lsat");
        assert_eq!(c.macaroon_list().collect::<Vec<_>>(), ["AAA=", "BBB"]);
        assert_eq!(c.preimage[0], 0x20);
        assert_eq!(parse_credential("Bearer x:y"), Err(CredentialError::NotL402));
        assert_eq!(parse_credential("L402"), Err(CredentialError::NotL402));
        assert_eq!(parse_credential("L402 abc"), Err(CredentialError::MissingColon));
        assert_eq!(parse_credential("L402 abc:12"), Err(CredentialError::BadPreimage));
        assert_eq!(
            parse_credential(&format!("L402 a,,b:{PRE}")),
            Err(CredentialError::EmptyMacaroon)
        );
        assert_eq!(parse_credential(&format!("L402 :{PRE}")), Err(CredentialError::EmptyMacaroon));
    }

    #[test]
    fn formats() {
        assert_eq!(
            format_credential("AA==", &[0x20; 32]),
            format!("L402 AA==:{}", "20".repeat(32))
        );
        assert_eq!(
            challenge_value("L402", "M", "lnbc1"),
            r#"L402 macaroon="M", invoice="lnbc1", version="0", token="M""#
        );
    }
}
