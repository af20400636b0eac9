//! Macaroons: the V2 binary codec and the HMAC-SHA256 signature chain.
//!
//! The byte format is go-macaroon's (`gopkg.in/macaroon.v2`, the library Aperture uses), not the
//! one drawn in the L402 `macaroon-spec.md`, which is wrong in several places:
//!
//! ```text
//! 0x02                                  version
//! [0x01 varint(len) location]           optional
//! 0x02 varint(len) identifier
//! 0x00                                  end of header
//! per caveat:
//!   [0x01 varint(len) location]         third-party only
//!   0x02 varint(len) caveat id          "condition=value" for first-party caveats
//!   [0x04 varint(len) verification id]  third-party only
//!   0x00                                end of caveat
//! 0x00                                  end of caveat list
//! 0x06 varint(32) signature             nothing after it
//! ```
//!
//! The signature chain is libmacaroons', with its key derivation step:
//! `k = HMAC(key = "macaroons-key-generator", root_key)`, `sig_0 = HMAC(k, identifier)`,
//! `sig_i = HMAC(sig_{i-1}, caveat_i)`. The spec's `HMAC(root_key, identifier)` does not
//! interoperate with anything.
//!
//! Decoding borrows from the input ([`Macaroon`]) so that verifying a token allocates nothing;
//! [`OwnedMacaroon`] is for minting and attenuating.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Largest binary macaroon accepted. L402 tokens are a few hundred bytes; the cap keeps a hostile
/// header from costing more than a bounded amount of hashing.
pub const MAX_MACAROON_LEN: usize = 8 * 1024;
/// Most caveats accepted in one macaroon.
pub const MAX_CAVEATS: usize = 64;
/// Length of a macaroon signature (HMAC-SHA256).
pub const SIGNATURE_LEN: usize = 32;

const VERSION_V2: u8 = 0x02;
const FIELD_EOS: u8 = 0;
const FIELD_LOCATION: u8 = 1;
const FIELD_IDENTIFIER: u8 = 2;
const FIELD_VERIFICATION_ID: u8 = 4;
const FIELD_SIGNATURE: u8 = 6;
/// go-macaroon refuses varints above this.
const MAX_VARINT: u64 = 0x7fff_ffff;

/// Why bytes or text are not a macaroon this codec accepts, or why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MacaroonError {
    #[error("empty macaroon")]
    Empty,
    #[error("macaroon of {0} bytes is larger than the {MAX_MACAROON_LEN}-byte limit")]
    TooLarge(usize),
    #[error("unsupported macaroon format version byte 0x{0:02x} (only V2 binary is accepted)")]
    UnsupportedVersion(u8),
    #[error("macaroon truncated")]
    Truncated,
    #[error("varint too large or malformed")]
    BadVarint,
    #[error("fields out of order or unexpected field type {0}")]
    UnexpectedField(u64),
    #[error("macaroon header has no identifier")]
    MissingIdentifier,
    #[error("caveat has no identifier")]
    CaveatWithoutId,
    #[error("more than {MAX_CAVEATS} caveats")]
    TooManyCaveats,
    #[error("signature is {0} bytes, expected {SIGNATURE_LEN}")]
    BadSignatureLength(usize),
    #[error("{0} unexpected bytes after the signature")]
    TrailingBytes(usize),
    #[error("not valid base64")]
    Base64,
    #[error("caveat {0} is a third-party caveat; only first-party caveats are supported")]
    ThirdPartyCaveat(usize),
    #[error("signature does not match")]
    InvalidSignature,
}

/// `HMAC-SHA256(key, msg)`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // Infallible: HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// HMAC state keyed with libmacaroons' constant, computed once: it saves two SHA-256
/// compressions per verification.
static KEY_GENERATOR: LazyLock<HmacSha256> = LazyLock::new(|| {
    HmacSha256::new_from_slice(b"macaroons-key-generator").unwrap_or_else(|_| unreachable!())
});

/// The macaroon signing key for `root_key`: `HMAC-SHA256("macaroons-key-generator", root_key)`
/// (go-macaroon `makeKey`, libmacaroons, pymacaroons; `MacaroonKey::generate` in the `macaroon`
/// crate).
pub fn derive_key(root_key: &[u8]) -> [u8; 32] {
    let mut mac = KEY_GENERATOR.clone();
    mac.update(root_key);
    mac.finalize().into_bytes().into()
}

/// The signature of a macaroon with `identifier` and first-party `caveats`, from `root_key`.
pub fn signature_chain<'c>(
    root_key: &[u8],
    identifier: &[u8],
    caveats: impl IntoIterator<Item = &'c [u8]>,
) -> [u8; 32] {
    let mut sig = hmac_sha256(&derive_key(root_key), identifier);
    for c in caveats {
        sig = hmac_sha256(&sig, c);
    }
    sig
}

/// One caveat as found in a macaroon. First-party caveats have no verification id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caveat<'a> {
    pub location: Option<&'a [u8]>,
    /// For a first-party caveat, the predicate (`condition=value` in L402).
    pub id: &'a [u8],
    pub verification_id: Option<&'a [u8]>,
}

impl Caveat<'_> {
    pub fn is_first_party(&self) -> bool {
        self.verification_id.is_none()
    }
}

/// A decoded V2 macaroon borrowing from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Macaroon<'a> {
    location: Option<&'a [u8]>,
    identifier: &'a [u8],
    /// The caveat section (validated at decode time), re-walked by [`Macaroon::caveats`] so that
    /// decoding needs no allocation.
    caveat_bytes: &'a [u8],
    caveat_count: usize,
    signature: [u8; SIGNATURE_LEN],
}

/// A byte cursor over V2 packets.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, MacaroonError> {
        let mut value: u64 = 0;
        for (i, &b) in self.data.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.data = &self.data[i + 1..];
                return if value > MAX_VARINT { Err(MacaroonError::BadVarint) } else { Ok(value) };
            }
            if value > MAX_VARINT {
                return Err(MacaroonError::BadVarint);
            }
        }
        Err(if self.data.len() < 10 { MacaroonError::Truncated } else { MacaroonError::BadVarint })
    }

    /// Reads one packet: `(field type, payload)`; EOS has no payload.
    fn packet(&mut self) -> Result<(u64, &'a [u8]), MacaroonError> {
        let field = self.varint()?;
        if field == u64::from(FIELD_EOS) {
            return Ok((field, &[]));
        }
        let len = usize::try_from(self.varint()?).map_err(|_| MacaroonError::BadVarint)?;
        if len > self.data.len() {
            return Err(MacaroonError::Truncated);
        }
        let (payload, rest) = self.data.split_at(len);
        self.data = rest;
        Ok((field, payload))
    }

    /// Reads one section up to its EOS: up to three fields, each of the given allowed types, in
    /// strictly increasing order (go-macaroon `parseSectionV2` plus the header/caveat shape
    /// checks). Returns the payloads indexed by field type 1, 2, 4 and whether the section was
    /// empty.
    fn section(&mut self, allowed: &[u8]) -> Result<Section<'a>, MacaroonError> {
        let mut s = Section::default();
        let mut prev = 0u64;
        loop {
            let (field, payload) = self.packet()?;
            if field == u64::from(FIELD_EOS) {
                return Ok(s);
            }
            if field <= prev || !allowed.iter().any(|&a| u64::from(a) == field) {
                return Err(MacaroonError::UnexpectedField(field));
            }
            prev = field;
            s.any = true;
            match field as u8 {
                FIELD_LOCATION => s.location = Some(payload),
                FIELD_IDENTIFIER => s.id = Some(payload),
                _ => s.verification_id = Some(payload),
            }
        }
    }
}

#[derive(Default)]
struct Section<'a> {
    /// Whether the section had any field (an empty one ends the caveat list).
    any: bool,
    location: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    verification_id: Option<&'a [u8]>,
}

impl<'a> Macaroon<'a> {
    /// Decodes a V2 binary macaroon. Refuses V1, oversized input, more than [`MAX_CAVEATS`]
    /// caveats and bytes after the signature (go-macaroon ignores those; a token is exactly one
    /// macaroon, and refusing them keeps the encoding unambiguous).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, MacaroonError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(MacaroonError::Empty);
        };
        if bytes.len() > MAX_MACAROON_LEN {
            return Err(MacaroonError::TooLarge(bytes.len()));
        }
        if version != VERSION_V2 {
            return Err(MacaroonError::UnsupportedVersion(version));
        }
        let mut r = Reader { data: body };
        let header = r.section(&[FIELD_LOCATION, FIELD_IDENTIFIER])?;
        let identifier = header.id.ok_or(MacaroonError::MissingIdentifier)?;

        let caveats_start = r.data;
        let mut caveat_count = 0;
        loop {
            let before = r.data.len();
            let s = r.section(&[FIELD_LOCATION, FIELD_IDENTIFIER, FIELD_VERIFICATION_ID])?;
            if !s.any {
                let consumed = caveats_start.len() - before;
                let caveat_bytes = &caveats_start[..consumed];
                let (field, sig) = r.packet()?;
                if field != u64::from(FIELD_SIGNATURE) {
                    return Err(MacaroonError::UnexpectedField(field));
                }
                let signature: [u8; SIGNATURE_LEN] =
                    sig.try_into().map_err(|_| MacaroonError::BadSignatureLength(sig.len()))?;
                if !r.data.is_empty() {
                    return Err(MacaroonError::TrailingBytes(r.data.len()));
                }
                return Ok(Macaroon {
                    location: header.location,
                    identifier,
                    caveat_bytes,
                    caveat_count,
                    signature,
                });
            }
            if s.id.is_none() {
                return Err(MacaroonError::CaveatWithoutId);
            }
            caveat_count += 1;
            if caveat_count > MAX_CAVEATS {
                return Err(MacaroonError::TooManyCaveats);
            }
        }
    }

    /// Decodes base64 text (standard or URL-safe alphabet, padded or not) into `buf` and then the
    /// macaroon in it. `buf` needs room for [`MAX_MACAROON_LEN`] bytes.
    pub fn decode_base64(text: &str, buf: &'a mut [u8]) -> Result<Self, MacaroonError> {
        let n = decode_base64_into(text, buf)?;
        Macaroon::decode(&buf[..n])
    }

    pub fn location(&self) -> Option<&'a [u8]> {
        self.location
    }

    pub fn identifier(&self) -> &'a [u8] {
        self.identifier
    }

    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    pub fn caveat_count(&self) -> usize {
        self.caveat_count
    }

    /// The caveats, in order.
    pub fn caveats(&self) -> CaveatIter<'a> {
        CaveatIter { reader: Reader { data: self.caveat_bytes } }
    }

    /// Recomputes the signature chain from `root_key` and compares it in constant time.
    /// Third-party caveats are refused: L402 does not use them and we cannot discharge them.
    pub fn verify_signature(&self, root_key: &[u8]) -> Result<(), MacaroonError> {
        self.verify_signature_with_key(&derive_key(root_key))
    }

    /// As [`Macaroon::verify_signature`], with the already derived signing key.
    pub fn verify_signature_with_key(&self, key: &[u8; 32]) -> Result<(), MacaroonError> {
        self.verify_signature_inspecting(key, |_, _| {})
    }

    /// As [`Macaroon::verify_signature_with_key`], showing `each` every caveat with the chain's
    /// signature through it: the signature of the token a holder had right after appending that
    /// caveat. It is a bearer secret (it can be extended into a valid token), so whatever is kept
    /// of it must be a one-way function of it. Only meaningful once the whole chain verified.
    pub fn verify_signature_inspecting(
        &self,
        key: &[u8; 32],
        mut each: impl FnMut(&'a [u8], &[u8; 32]),
    ) -> Result<(), MacaroonError> {
        let mut sig = hmac_sha256(key, self.identifier);
        for (i, c) in self.caveats().enumerate() {
            if !c.is_first_party() {
                return Err(MacaroonError::ThirdPartyCaveat(i));
            }
            sig = hmac_sha256(&sig, c.id);
            each(c.id, &sig);
        }
        if bool::from(sig.ct_eq(&self.signature)) {
            Ok(())
        } else {
            Err(MacaroonError::InvalidSignature)
        }
    }

    /// An owned copy, e.g. to append caveats.
    pub fn to_owned(&self) -> OwnedMacaroon {
        OwnedMacaroon {
            location: self.location.map(<[u8]>::to_vec),
            identifier: self.identifier.to_vec(),
            caveats: self
                .caveats()
                .map(|c| OwnedCaveat {
                    location: c.location.map(<[u8]>::to_vec),
                    id: c.id.to_vec(),
                    verification_id: c.verification_id.map(<[u8]>::to_vec),
                })
                .collect(),
            signature: self.signature,
        }
    }
}

/// Iterator over the caveats of a [`Macaroon`].
pub struct CaveatIter<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for CaveatIter<'a> {
    type Item = Caveat<'a>;

    fn next(&mut self) -> Option<Caveat<'a>> {
        // The section was validated by `Macaroon::decode`; errors cannot occur here, and if they
        // did the iteration would simply stop.
        let s =
            self.reader.section(&[FIELD_LOCATION, FIELD_IDENTIFIER, FIELD_VERIFICATION_ID]).ok()?;
        let id = s.id?;
        Some(Caveat { location: s.location, id, verification_id: s.verification_id })
    }
}

/// An owned caveat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedCaveat {
    pub location: Option<Vec<u8>>,
    pub id: Vec<u8>,
    pub verification_id: Option<Vec<u8>>,
}

/// An owned macaroon, for minting and attenuating. Its fields are plain data: nothing about a
/// value of this type is trusted until [`Macaroon::verify_signature`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMacaroon {
    pub location: Option<Vec<u8>>,
    pub identifier: Vec<u8>,
    pub caveats: Vec<OwnedCaveat>,
    pub signature: [u8; SIGNATURE_LEN],
}

impl OwnedMacaroon {
    /// A new macaroon signed from `root_key` (the key is derived as libmacaroons does).
    pub fn new(root_key: &[u8], identifier: &[u8], location: Option<&[u8]>) -> Self {
        OwnedMacaroon {
            location: location.map(<[u8]>::to_vec),
            identifier: identifier.to_vec(),
            caveats: Vec::new(),
            signature: hmac_sha256(&derive_key(root_key), identifier),
        }
    }

    /// Appends a first-party caveat and re-chains the signature. Needs no root key: this is how a
    /// holder attenuates a token.
    pub fn add_first_party_caveat(&mut self, predicate: &[u8]) -> &mut Self {
        self.signature = hmac_sha256(&self.signature, predicate);
        self.caveats.push(OwnedCaveat {
            location: None,
            id: predicate.to_vec(),
            verification_id: None,
        });
        self
    }

    /// The V2 binary encoding (go-macaroon `MarshalBinary`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.push(VERSION_V2);
        if let Some(loc) = &self.location {
            put_field(&mut out, FIELD_LOCATION, loc);
        }
        put_field(&mut out, FIELD_IDENTIFIER, &self.identifier);
        out.push(FIELD_EOS);
        for c in &self.caveats {
            if let Some(loc) = &c.location {
                put_field(&mut out, FIELD_LOCATION, loc);
            }
            put_field(&mut out, FIELD_IDENTIFIER, &c.id);
            if let Some(vid) = &c.verification_id {
                put_field(&mut out, FIELD_VERIFICATION_ID, vid);
            }
            out.push(FIELD_EOS);
        }
        out.push(FIELD_EOS);
        put_field(&mut out, FIELD_SIGNATURE, &self.signature);
        out
    }

    /// Standard base64 with padding, the form sent in headers.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.encode())
    }

    fn encoded_len_hint(&self) -> usize {
        let caveats: usize = self.caveats.iter().map(|c| c.id.len() + 8).sum();
        16 + self.identifier.len() + self.location.as_ref().map_or(0, Vec::len) + caveats + 40
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_field(out: &mut Vec<u8>, field: u8, data: &[u8]) {
    out.push(field);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Largest base64 text that can hold [`MAX_MACAROON_LEN`] bytes.
pub const MAX_BASE64_LEN: usize = MAX_MACAROON_LEN.div_ceil(3) * 4;

/// Decodes base64 in either alphabet, padded or not, into `buf`; returns the byte count.
pub fn decode_base64_into(text: &str, buf: &mut [u8]) -> Result<usize, MacaroonError> {
    if text.is_empty() {
        return Err(MacaroonError::Empty);
    }
    if text.len() > MAX_BASE64_LEN {
        return Err(MacaroonError::TooLarge(text.len() / 4 * 3));
    }
    let engine = if text.bytes().any(|b| b == b'-' || b == b'_') {
        &URL_SAFE_LENIENT
    } else {
        &STANDARD_LENIENT
    };
    engine.decode_slice(text, buf).map_err(|e| match e {
        base64::DecodeSliceError::OutputSliceTooSmall => {
            MacaroonError::TooLarge(text.len() / 4 * 3)
        }
        base64::DecodeSliceError::DecodeError(_) => MacaroonError::Base64,
    })
}

/// Decodes base64 in either alphabet, padded or not, into a new vector.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, MacaroonError> {
    let mut buf = vec![0u8; MAX_MACAROON_LEN];
    let n = decode_base64_into(text, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> OwnedMacaroon {
        let root: Vec<u8> = (0u8..32).collect();
        let mut m = OwnedMacaroon::new(&root, b"test-id", None);
        m.add_first_party_caveat(b"account=12345");
        m
    }

    #[test]
    fn round_trips_and_verifies() {
        let m = minimal();
        let bytes = m.encode();
        let d = Macaroon::decode(&bytes).unwrap();
        assert_eq!(d.to_owned(), m);
        let root: Vec<u8> = (0u8..32).collect();
        d.verify_signature(&root).unwrap();
        assert_eq!(d.verify_signature(&[0u8; 32]), Err(MacaroonError::InvalidSignature));
    }

    #[test]
    fn refuses_malformed() {
        let bytes = minimal().encode();
        assert_eq!(Macaroon::decode(&[]), Err(MacaroonError::Empty));
        assert_eq!(Macaroon::decode(b"0a"), Err(MacaroonError::UnsupportedVersion(b'0')));
        for n in 1..bytes.len() {
            assert!(Macaroon::decode(&bytes[..n]).is_err(), "prefix {n} accepted");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Macaroon::decode(&extra), Err(MacaroonError::TrailingBytes(1)));
        // A second identifier field in the header (field types must strictly increase), refused
        // as go-macaroon does ("fields out of order").
        let bad = [2u8, 2, 1, b'x', 2, 1, b'y', 0];
        assert_eq!(Macaroon::decode(&bad), Err(MacaroonError::UnexpectedField(2)));
    }

    #[test]
    fn refuses_too_many_caveats() {
        let mut m = minimal();
        for _ in 0..MAX_CAVEATS {
            m.add_first_party_caveat(b"a=b");
        }
        assert_eq!(Macaroon::decode(&m.encode()), Err(MacaroonError::TooManyCaveats));
    }

    #[test]
    fn base64_is_lenient() {
        let bytes = minimal().encode();
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(decode_base64(&std).unwrap(), bytes);
        assert_eq!(decode_base64(&url).unwrap(), bytes);
        assert_eq!(decode_base64(std.trim_end_matches('=')).unwrap(), bytes);
        assert_eq!(decode_base64("a+b-"), Err(MacaroonError::Base64));
    }
}
