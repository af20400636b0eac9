//! The `charge` intent with the `evm` method (`draft-evm-charge-00`), credential type
//! `authorization` (EIP-3009 `transferWithAuthorization`).
//!
//! Request (the challenge's `request` JSON; names as mppx writes them):
//!
//! ```json
//! {"amount": "150", "currency": "0x<token>", "recipient": "0x<payee>",
//!  "methodDetails": {"chainId": 31337, "decimals": 2, "credentialTypes": ["authorization"],
//!                    "authorization": {"name": "USDC", "version": "2"}}}
//! ```
//!
//! `amount` is in the token's base units. The payer signs an EIP-3009 authorization in the
//! token's EIP-712 domain (`methodDetails.authorization` names it) with `to = recipient`,
//! `value = amount`, `validAfter = 0`, `validBefore = expires` (unix time) and the
//! challenge-bound nonce `keccak256(utf8(challenge.id ‖ challenge.realm))` ([`challenge_nonce`],
//! the draft's form, which farebox signs), so one signature pays one challenge only. Servers
//! also accept `keccak256` of the compact JSON array `["<id>","<realm>"]`, which another SDK
//! signs ([`challenge_nonces`]): both forms are bound to the HMAC-checked id and realm.
//!
//! Payload, flat as mppx (the reference SDK) writes and reads it:
//!
//! ```json
//! {"type": "authorization", "from": "0x…", "to": "0x…", "value": "150", "validAfter": "0",
//!  "validBefore": "1767225600", "nonce": "0x<32 bytes>", "signature": "0x<65 bytes>"}
//! ```
//!
//! Reading also accepts the fields nested in an `authorization` object (the x402 shape, which
//! early drafts used). Numbers are decimal strings (as x402 and mppx write them); `0x` hex is
//! also read. mppx compares `source` with `did:pkh:eip155:<chainId>:<EIP-55 address>` as a
//! string, so [`source`] writes the checksummed form.

#[cfg(feature = "client")]
pub(crate) mod client;
pub mod server;

use farebox_evm::eip3009::TransferWithAuthorization;
use farebox_evm::{Address, B256, U256};
use serde_json::{Map, Value, json};

use crate::fields;

/// The method id.
pub const METHOD: &str = "evm";
/// The intent id.
pub const INTENT: &str = "charge";
/// The credential type farebox accepts and writes.
pub const CREDENTIAL_AUTHORIZATION: &str = "authorization";

/// An EVM charge request or payload that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvmChargeError {
    #[error("{0} is missing or has the wrong type")]
    Missing(&'static str),
    #[error("{0} is not a valid number")]
    Number(&'static str),
    #[error("{0} is not a valid address")]
    Address(&'static str),
    #[error("payload.nonce is not 32 bytes of hex")]
    Nonce,
    #[error("payload.signature is not hex")]
    Signature,
    #[error("payload.type {0:?} is not supported (only \"authorization\")")]
    CredentialType(String),
}

/// An EVM charge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmChargeRequest {
    /// Base units of the token.
    pub amount: U256,
    /// The token contract.
    pub currency: Address,
    pub recipient: Address,
    pub chain_id: u64,
    pub decimals: u8,
    /// Credential types the server accepts, in order of preference.
    pub credential_types: Vec<String>,
    /// The token's EIP-712 domain name and version (`methodDetails.authorization`). farebox
    /// servers write it; mppx servers do not (their clients are configured with it).
    pub authorization: Option<TokenName>,
    pub description: Option<String>,
}

/// An EIP-3009 token's EIP-712 domain `name` and `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName {
    pub name: String,
    pub version: String,
}

/// The challenge-bound EIP-3009 nonce: `keccak256(utf8(id ‖ realm))`.
pub fn challenge_nonce(id: &str, realm: &str) -> B256 {
    let mut bytes = Vec::with_capacity(id.len() + realm.len());
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(realm.as_bytes());
    alloy_primitives::keccak256(bytes)
}

/// The nonce some SDKs sign instead: `keccak256` of the compact JSON array `["<id>","<realm>"]`
/// (JSON-escaped strings, no spaces).
pub fn challenge_nonce_json(id: &str, realm: &str) -> B256 {
    alloy_primitives::keccak256(Value::from(vec![id, realm]).to_string())
}

/// Every nonce a server accepts for the challenge `id` of `realm`: the draft's
/// [`challenge_nonce`], then [`challenge_nonce_json`].
pub fn challenge_nonces(id: &str, realm: &str) -> [B256; 2] {
    [challenge_nonce(id, realm), challenge_nonce_json(id, realm)]
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, EvmChargeError> {
    fields::str_field(obj, name).ok_or(EvmChargeError::Missing(name))
}

fn parse_u256(text: &str, name: &'static str) -> Result<U256, EvmChargeError> {
    fields::parse_u256(text).ok_or(EvmChargeError::Number(name))
}

fn parse_address(text: &str, name: &'static str) -> Result<Address, EvmChargeError> {
    fields::parse_address(text).ok_or(EvmChargeError::Address(name))
}

fn u64_field(obj: &Map<String, Value>, name: &'static str) -> Result<u64, EvmChargeError> {
    match obj.get(name) {
        None => Err(EvmChargeError::Missing(name)),
        Some(_) => fields::u64_member(obj, name).ok_or(EvmChargeError::Number(name)),
    }
}

impl EvmChargeRequest {
    /// The request JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "amount": self.amount.to_string(),
            "currency": format!("{:#x}", self.currency),
            "recipient": format!("{:#x}", self.recipient),
            "methodDetails": {
                "chainId": self.chain_id,
                "decimals": self.decimals,
                "credentialTypes": self.credential_types,
            },
        });
        if let Some(a) = &self.authorization {
            v["methodDetails"]["authorization"] = json!({"name": a.name, "version": a.version});
        }
        if let (Some(d), Some(obj)) = (&self.description, v.as_object_mut()) {
            obj.insert("description".into(), Value::String(d.clone()));
        }
        v
    }

    /// Reads a request JSON.
    pub fn from_json(v: &Value) -> Result<Self, EvmChargeError> {
        let obj = v.as_object().ok_or(EvmChargeError::Missing("request"))?;
        let amount = parse_u256(str_field(obj, "amount")?, "amount")?;
        let currency = parse_address(str_field(obj, "currency")?, "currency")?;
        let recipient = parse_address(str_field(obj, "recipient")?, "recipient")?;
        let details = obj
            .get("methodDetails")
            .and_then(Value::as_object)
            .ok_or(EvmChargeError::Missing("methodDetails"))?;
        let chain_id = u64_field(details, "chainId")?;
        let decimals = u8::try_from(u64_field(details, "decimals")?)
            .map_err(|_| EvmChargeError::Number("decimals"))?;
        let credential_types = match details.get("credentialTypes") {
            None => vec![CREDENTIAL_AUTHORIZATION.to_string()],
            Some(Value::Array(a)) => {
                a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
            Some(_) => return Err(EvmChargeError::Missing("methodDetails.credentialTypes")),
        };
        let authorization = match details.get("authorization") {
            None => None,
            Some(domain) => {
                let domain = domain
                    .as_object()
                    .ok_or(EvmChargeError::Missing("methodDetails.authorization"))?;
                Some(TokenName {
                    name: str_field(domain, "name")?.to_string(),
                    version: str_field(domain, "version")?.to_string(),
                })
            }
        };
        Ok(EvmChargeRequest {
            amount,
            currency,
            recipient,
            chain_id,
            decimals,
            credential_types,
            authorization,
            description: obj.get("description").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// The payload JSON of a signed authorization (mppx's flat shape).
pub fn payload(auth: &TransferWithAuthorization, signature: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.into(), Value::String(v));
    };
    put("type", CREDENTIAL_AUTHORIZATION.into());
    put("from", auth.from.to_string());
    put("to", auth.to.to_string());
    put("value", auth.value.to_string());
    put("validAfter", auth.validAfter.to_string());
    put("validBefore", auth.validBefore.to_string());
    put("nonce", format!("{:#x}", auth.nonce));
    put("signature", fields::hex0x(signature));
    m
}

/// The credential `source` of a payer: `did:pkh:eip155:<chainId>:<EIP-55 address>`.
pub fn source(chain_id: u64, payer: Address) -> String {
    format!("did:pkh:eip155:{chain_id}:{payer}")
}

/// The authorization and signature in a payload.
pub fn authorization_of(
    payload: &Map<String, Value>,
) -> Result<(TransferWithAuthorization, Vec<u8>), EvmChargeError> {
    if let Some(t) = payload.get("type") {
        let t = t.as_str().ok_or(EvmChargeError::Missing("payload.type"))?;
        if t != CREDENTIAL_AUTHORIZATION {
            return Err(EvmChargeError::CredentialType(t.into()));
        }
    }
    // Flat (mppx), or nested in `authorization` (the x402 shape).
    let a = match payload.get("authorization") {
        Some(nested) => {
            nested.as_object().ok_or(EvmChargeError::Missing("payload.authorization"))?
        }
        None => payload,
    };
    let nonce = fields::parse_b256(str_field(a, "nonce")?).ok_or(EvmChargeError::Nonce)?;
    let number = |name: &'static str| -> Result<U256, EvmChargeError> {
        match a.get(name) {
            Some(Value::String(s)) => parse_u256(s, name),
            Some(Value::Number(n)) => {
                n.as_u64().map(U256::from).ok_or(EvmChargeError::Number(name))
            }
            _ => Err(EvmChargeError::Missing(name)),
        }
    };
    let auth = TransferWithAuthorization {
        from: parse_address(str_field(a, "from")?, "from")?,
        to: parse_address(str_field(a, "to")?, "to")?,
        value: number("value")?,
        validAfter: number("validAfter")?,
        validBefore: number("validBefore")?,
        nonce,
    };
    let sig = payload
        .get("signature")
        .and_then(Value::as_str)
        .ok_or(EvmChargeError::Missing("payload.signature"))?;
    let sig = fields::parse_blob(sig).ok_or(EvmChargeError::Signature)?;
    Ok((auth, sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_payload_round_trip() {
        let r = EvmChargeRequest {
            amount: U256::from(150u64),
            currency: Address::repeat_byte(0x11),
            recipient: Address::repeat_byte(0x22),
            chain_id: 31_337,
            decimals: 2,
            credential_types: vec!["authorization".into()],
            authorization: Some(TokenName { name: "USDC".into(), version: "2".into() }),
            description: None,
        };
        let v = r.to_json();
        assert_eq!(v["amount"], "150");
        assert_eq!(v["methodDetails"]["chainId"], 31_337);
        assert_eq!(EvmChargeRequest::from_json(&v).unwrap(), r);
        // As mppx writes it: no domain; checksummed addresses.
        let mppx = json!({"amount": "150", "currency": "0x1111111111111111111111111111111111111111",
            "recipient": "0x2222222222222222222222222222222222222222",
            "methodDetails": {"chainId": 31337, "credentialTypes": ["authorization"], "decimals": 2}});
        assert_eq!(
            EvmChargeRequest::from_json(&mppx).unwrap(),
            EvmChargeRequest { authorization: None, ..r }
        );
        let auth = TransferWithAuthorization {
            from: Address::repeat_byte(1),
            to: Address::repeat_byte(2),
            value: U256::from(150u64),
            validAfter: U256::ZERO,
            validBefore: U256::from(1_767_225_600u64),
            nonce: challenge_nonce("id", "realm"),
        };
        let p = payload(&auth, &[7; 65]);
        assert_eq!(p["from"], auth.from.to_string(), "flat, EIP-55, as mppx writes it");
        assert_eq!(authorization_of(&p).unwrap(), (auth.clone(), vec![7; 65]));
        // The nested (x402-shaped) form reads the same.
        let mut nested = Map::new();
        let inner: Map<String, Value> = p
            .iter()
            .filter(|(k, _)| *k != "type" && *k != "signature")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        nested.insert("type".into(), json!("authorization"));
        nested.insert("authorization".into(), Value::Object(inner));
        nested.insert("signature".into(), p["signature"].clone());
        assert_eq!(authorization_of(&nested).unwrap(), (auth, vec![7; 65]));
        assert_eq!(
            source(84532, Address::repeat_byte(0xab)),
            "did:pkh:eip155:84532:0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"
        );
    }

    #[test]
    fn nonce_is_keccak_of_the_concatenation() {
        assert_eq!(challenge_nonce("ab", "c"), alloy_primitives::keccak256(b"abc"));
    }

    #[test]
    fn json_nonce_is_keccak_of_the_compact_escaped_array() {
        assert_eq!(challenge_nonce_json("ab", "c"), alloy_primitives::keccak256(br#"["ab","c"]"#));
        assert_eq!(
            challenge_nonce_json("a\"b", "c\\d"),
            alloy_primitives::keccak256(br#"["a\"b","c\\d"]"#)
        );
        assert_eq!(
            challenge_nonces("ab", "c"),
            [challenge_nonce("ab", "c"), challenge_nonce_json("ab", "c")]
        );
    }
}
