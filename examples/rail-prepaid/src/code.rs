//! Credit codes: what a seller signs and a buyer spends.
//!
//! A code is `<payload>.<signature>`, both unpadded base64url. The payload is 40 bytes: a
//! 16-byte random id, the value in base units of the rail's asset (u128, big-endian) and the
//! expiry in Unix seconds (u64, big-endian). The signature is Ed25519 by the seller's key over
//! [`DOMAIN`], the asset the value is in ([`asset_key`]), a NUL, and the payload: a signature
//! made for anything else is never a code, and a code is worth its value in its own asset only.
//! The value is what the code may spend in all; the server keeps what it has spent.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use farebox_core::Asset;

/// The `Authorization` (and `WWW-Authenticate`) scheme of credit codes.
pub const SCHEME: &str = "Prepaid";

/// What a code's signature covers before the payload.
pub const DOMAIN: &[u8] = b"farebox-prepaid-v1:";

/// The longest text a code can be (40-byte payload, 64-byte signature, a dot).
pub const MAX_CODE_LEN: usize = 54 + 1 + 86;

const PAYLOAD_LEN: usize = 16 + 16 + 8;

/// How a code's signature names its asset: `bitcoin`, or `<CAIP-2 network>/<token address>`
/// (the address in lower case).
pub fn asset_key(asset: &Asset) -> String {
    match asset {
        Asset::Bitcoin => "bitcoin".into(),
        Asset::Token(t) => format!("{}/{}", t.network, t.address.to_ascii_lowercase()),
        // An asset kind newer than this rail: its whole serialized form.
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// What the seller signs: the domain, the asset, a NUL, the payload.
fn signed_message(asset: &Asset, payload: &[u8]) -> Vec<u8> {
    [DOMAIN, asset_key(asset).as_bytes(), b"\0", payload].concat()
}

/// A credit code, signature checked or about to be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditCode {
    pub id: [u8; 16],
    /// Base units of the rail's asset the code may spend in all.
    pub value: u128,
    /// Unix seconds after which it buys nothing.
    pub expires: u64,
}

/// Why a code is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error(
        "a credit code is `<payload>.<signature>` in base64url, at most {MAX_CODE_LEN} characters"
    )]
    Malformed,
    #[error("the code is not signed by this seller")]
    BadSignature,
}

impl CreditCode {
    fn payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut out = [0u8; PAYLOAD_LEN];
        out[..16].copy_from_slice(&self.id);
        out[16..32].copy_from_slice(&self.value.to_be_bytes());
        out[32..].copy_from_slice(&self.expires.to_be_bytes());
        out
    }

    /// The code's id as text: how the server names its balance.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// This code, worth its value in `asset`, signed by `seller`: the text to hand to the buyer.
    pub fn sign(&self, seller: &SigningKey, asset: &Asset) -> String {
        let payload = self.payload();
        let signature = seller.sign(&signed_message(asset, &payload));
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// Reads `text` and checks that `seller` signed it as a code in `asset`. The expiry is the
    /// caller's to check.
    pub fn verify(
        text: &str,
        seller: &VerifyingKey,
        asset: &Asset,
    ) -> Result<CreditCode, CodeError> {
        let code = Self::read(text)?;
        let (_, signature) = text.split_once('.').ok_or(CodeError::Malformed)?;
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(CodeError::Malformed)?;
        // `verify_strict` refuses the malleable and small-order encodings plain `verify` allows.
        seller
            .verify_strict(
                &signed_message(asset, &code.payload()),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| CodeError::BadSignature)?;
        Ok(code)
    }

    /// Reads `text` without checking its signature: what a buyer's wallet knows of its own codes.
    pub fn read(text: &str) -> Result<CreditCode, CodeError> {
        if text.len() > MAX_CODE_LEN {
            return Err(CodeError::Malformed);
        }
        let (payload, _) = text.split_once('.').ok_or(CodeError::Malformed)?;
        let payload: [u8; PAYLOAD_LEN] = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(CodeError::Malformed)?;
        let take = |range: std::ops::Range<usize>| &payload[range];
        Ok(CreditCode {
            id: take(0..16).try_into().map_err(|_| CodeError::Malformed)?,
            value: u128::from_be_bytes(take(16..32).try_into().map_err(|_| CodeError::Malformed)?),
            expires: u64::from_be_bytes(take(32..40).try_into().map_err(|_| CodeError::Malformed)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seller(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    const SAT: Asset = Asset::Bitcoin;

    fn usdc() -> Asset {
        Asset::Token(farebox_core::Token {
            network: "eip155:8453".into(),
            address: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
            symbol: "USDC".into(),
            decimals: 6,
        })
    }

    #[test]
    fn a_signed_code_reads_back_only_under_its_sellers_key_and_asset() {
        let code = CreditCode { id: [7; 16], value: 2_100, expires: 4_000_000_000 };
        let text = code.sign(&seller(1), &SAT);
        assert!(text.len() <= MAX_CODE_LEN, "{}", text.len());
        assert_eq!(CreditCode::verify(&text, &seller(1).verifying_key(), &SAT), Ok(code.clone()));
        assert_eq!(
            CreditCode::verify(&text, &seller(2).verifying_key(), &SAT),
            Err(CodeError::BadSignature)
        );
        // 2,100 msat is not 2,100 base units of USDC.
        assert_eq!(
            CreditCode::verify(&text, &seller(1).verifying_key(), &usdc()),
            Err(CodeError::BadSignature)
        );
        // The value raised by hand: the signature no longer covers it.
        let mut raised = code.clone();
        raised.value = 1_000_000;
        let forged = format!(
            "{}.{}",
            raised.sign(&seller(9), &SAT).split_once('.').unwrap().0,
            text.split_once('.').unwrap().1
        );
        assert_eq!(
            CreditCode::verify(&forged, &seller(1).verifying_key(), &SAT),
            Err(CodeError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let key = seller(1).verifying_key();
        for junk in ["", ".", "x.y", "AAAA.BBBB", &"A".repeat(MAX_CODE_LEN + 1)] {
            assert_eq!(CreditCode::verify(junk, &key, &SAT), Err(CodeError::Malformed), "{junk}");
        }
    }
}
