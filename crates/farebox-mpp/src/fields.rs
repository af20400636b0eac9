//! Reading the JSON members MPP requests and payloads are made of: decimal (or `0x`) numbers,
//! `0x` addresses and 32-byte words, hex blobs. Each helper answers `None` for a value of the
//! wrong shape; callers turn that into their own typed error naming the member.

use farebox_evm::{Address, B256, U256};
use serde_json::{Map, Value};

/// Longest hex blob (a signature) a payload may carry, in bytes.
pub(crate) const MAX_BLOB_LEN: usize = 4096;

pub(crate) fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    obj.get(name).and_then(Value::as_str)
}

/// A decimal string of at most 78 digits, or `0x` hex.
pub(crate) fn parse_u256(text: &str) -> Option<U256> {
    if text.is_empty() || text.len() > 78 {
        return None;
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return U256::from_str_radix(hex, 16).ok();
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    U256::from_str_radix(text, 10).ok()
}

/// A decimal string that fits a `u128` (cumulative amounts, deposits).
pub(crate) fn parse_u128(text: &str) -> Option<u128> {
    parse_u256(text)?.try_into().ok()
}

/// A JSON number or numeric string that fits a `u64`.
pub(crate) fn u64_member(obj: &Map<String, Value>, name: &str) -> Option<u64> {
    match obj.get(name)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => parse_u256(s)?.try_into().ok(),
        _ => None,
    }
}

/// `0x` and 40 hex digits, any case.
pub(crate) fn parse_address(text: &str) -> Option<Address> {
    if text.len() != 42 || !text.starts_with("0x") {
        return None;
    }
    text.parse().ok()
}

/// `0x` and 64 hex digits, any case.
pub(crate) fn parse_b256(text: &str) -> Option<B256> {
    let hex = text.strip_prefix("0x")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(B256::from(out))
}

/// 64 hex digits without prefix (payment hashes, preimages), any case.
pub(crate) fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A non-empty hex blob (`0x` optional) of at most [`MAX_BLOB_LEN`] bytes.
pub(crate) fn parse_blob(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.is_empty() || hex.len() > 2 * MAX_BLOB_LEN {
        return None;
    }
    hex::decode(hex).ok()
}

/// Lowercase `0x` hex.
pub(crate) fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}
