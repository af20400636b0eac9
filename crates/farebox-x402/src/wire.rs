//! Small wire types shared by both protocol versions: the `x402Version` marker, decimal-string
//! amounts, and scheme payloads kept as the client's exact JSON text.

use std::fmt;

use alloy_primitives::U256;
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The `x402Version` field of a type that exists in exactly one protocol version.
///
/// Serialises as the number `N`. Deserialises from the number `N` or the string `"N"` (the
/// extension spec examples write `"x402Version": "2"`); any other value is a shape error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Version<const N: u8>;

impl<const N: u8> Version<N> {
    /// The protocol version number.
    pub const NUMBER: u8 = N;
}

impl<const N: u8> Serialize for Version<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(N)
    }
}

impl<'de, const N: u8> Deserialize<'de> for Version<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(VersionNumberVisitor)?;
        if v == u64::from(N) {
            Ok(Version)
        } else {
            Err(de::Error::custom(format_args!("x402Version {v} where {N} was expected")))
        }
    }
}

/// Reads an `x402Version`: a non-negative integer, or a string holding one.
pub(crate) struct VersionNumberVisitor;

impl Visitor<'_> for VersionNumberVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an x402 version number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom("negative x402Version"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        if v.is_empty() || v.len() > 3 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::invalid_value(de::Unexpected::Str(v), &self));
        }
        v.parse().map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// Deserialises a bare `x402Version` number (or numeric string).
pub(crate) fn version_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(VersionNumberVisitor)
}

/// An amount in the asset's atomic units, as a decimal string (`"10000"`).
///
/// Kept as the text that was sent, so that an echoed requirement compares equal only when it is
/// the same text (as the reference's deep equality does). Deserialises from a string of ASCII
/// digits or from a non-negative JSON integer (some implementations send numbers); always
/// serialises as a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Amount(String);

/// A string that is not a decimal amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid amount {0:?}: expected 1 to 78 decimal digits")]
pub struct AmountError(pub String);

impl Amount {
    /// The longest accepted amount: `2^256 - 1` has 78 digits.
    pub const MAX_DIGITS: usize = 78;

    /// Validates a decimal string.
    pub fn new(s: impl Into<String>) -> Result<Self, AmountError> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError(s));
        }
        Ok(Amount(s))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value, when it fits a `U256`.
    pub fn to_u256(&self) -> Option<U256> {
        U256::from_str_radix(&self.0, 10).ok()
    }
}

impl From<u64> for Amount {
    fn from(v: u64) -> Self {
        Amount(v.to_string())
    }
}

impl From<u128> for Amount {
    fn from(v: u128) -> Self {
        Amount(v.to_string())
    }
}

impl From<U256> for Amount {
    fn from(v: U256) -> Self {
        Amount(v.to_string())
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(DecimalVisitor)?;
        Amount::new(s).map_err(de::Error::custom)
    }
}

/// Reads a decimal string or a non-negative JSON integer as decimal text.
pub(crate) struct DecimalVisitor;

impl Visitor<'_> for DecimalVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal string or a non-negative integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        u64::try_from(v).map(|v| v.to_string()).map_err(|_| E::custom("negative amount"))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

/// A scheme-specific payload, kept as the exact JSON text received (or produced).
///
/// Re-encoding a decoded message therefore reproduces the sender's bytes, key order included, and
/// unknown members survive. Parse it into a scheme's type with [`Payload::parse`] (e.g.
/// [`crate::exact_evm::ExactEvmPayload`]). Two payloads are equal when their JSON values are.
///
/// Only serde_json can deserialise this type (it is a [`RawValue`]); decoding a message that holds
/// one from a `serde_json::Value` fails. Decode from text or bytes instead.
#[derive(Debug, Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The payload for a serialisable scheme type (compact JSON, in field order).
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Payload)
    }

    /// Validates JSON text and keeps it as is.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Payload)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parses the payload into a scheme's type.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The payload as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        self.parse().unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_accepts_number_and_string() {
        assert!(serde_json::from_str::<Version<2>>("2").is_ok());
        assert!(serde_json::from_str::<Version<2>>("\"2\"").is_ok());
        assert!(serde_json::from_str::<Version<2>>("1").is_err());
        assert!(serde_json::from_str::<Version<2>>("-2").is_err());
        assert!(serde_json::from_str::<Version<2>>("2.0").is_err());
        assert!(serde_json::from_str::<Version<2>>("\"+2\"").is_err());
        assert_eq!(serde_json::to_string(&Version::<1>).unwrap(), "1");
    }

    #[test]
    fn amount_accepts_string_and_integer_only() {
        let a: Amount = serde_json::from_str("\"10000\"").unwrap();
        assert_eq!(a.to_u256(), Some(U256::from(10_000u64)));
        let n: Amount = serde_json::from_str("10000").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"10000\"");
        for bad in ["\"\"", "\"1e3\"", "\"-1\"", "\" 1\"", "1.5", "-1", "null", "\"0x10\""] {
            assert!(serde_json::from_str::<Amount>(bad).is_err(), "{bad}");
        }
        let max = U256::MAX.to_string();
        assert_eq!(Amount::new(max.clone()).unwrap().to_u256(), Some(U256::MAX));
        let over = format!("{max}0");
        assert!(Amount::new(over).is_err());
        // 78 digits but above 2^256-1: a valid amount that does not fit.
        assert_eq!(Amount::new("9".repeat(78)).unwrap().to_u256(), None);
    }

    #[test]
    fn payload_keeps_bytes_and_compares_by_value() {
        let a = Payload::from_json(r#"{"z":1,"a":[1,2]}"#).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"z":1,"a":[1,2]}"#);
        let b = Payload::from_json(r#"{"a":[1,2],"z":1}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Payload::from_json(r#"{"a":[1,2],"z":2}"#).unwrap());
    }
}
