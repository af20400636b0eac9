//! The `session` intent with the `evm` method (`draft-evm-session-00`): a unidirectional
//! payment channel in an escrow contract (`contracts/SessionEscrow.sol`), paid off chain with
//! EIP-712 cumulative vouchers ([`crate::evm::voucher`]).
//!
//! Request (the challenge's `request` JSON):
//!
//! ```json
//! {"amount": "1000", "unitType": "request", "suggestedDeposit": "100000",
//!  "currency": "0x<token>", "recipient": "0x<payee>",
//!  "methodDetails": {"chainId": 84532, "escrowContract": "0x<escrow>", "minVoucherDelta": "0",
//!                    "credentialTypes": ["hash"], "decimals": 6}}
//! ```
//!
//! `amount` is the price of one unit (here: one request) in the token's base units. farebox
//! offers the `hash` credential type: the payer sends `open` (and `topUp`) on chain itself and
//! hands the server the transaction hash, which the server checks against the escrow's events
//! and state. `decimals` is farebox's addition, for wallets that display amounts.
//!
//! Payloads, by `action` (amounts are decimal strings, hashes and signatures lowercase `0x` hex,
//! signatures 65 bytes `r ‖ s ‖ v`):
//!
//! ```json
//! {"action": "open", "type": "hash", "channelId": "0x…", "hash": "0x<open tx>",
//!  "salt": "0x…", "cumulativeAmount": "1000", "signature": "0x…", "authorizedSigner": "0x…"}
//! {"action": "voucher", "channelId": "0x…", "cumulativeAmount": "2000", "signature": "0x…"}
//! {"action": "topUp", "type": "hash", "channelId": "0x…", "hash": "0x<topUp tx>",
//!  "additionalDeposit": "100000"}
//! {"action": "close", "channelId": "0x…", "cumulativeAmount": "2000", "signature": "0x…"}
//! ```
//!
//! `authorizedSigner` is optional (absent: the payer signs). Unknown actions are refused,
//! unknown members ignored.

#[cfg(feature = "client")]
pub(crate) mod client;
pub mod server;

use farebox_evm::{Address, B256, TxHash, U256};
use serde_json::{Map, Value, json};

use crate::fields::{self, hex0x, parse_address, parse_b256, parse_blob, parse_u128, parse_u256};

/// The method id.
pub const METHOD: &str = "evm";
/// The intent id.
pub const INTENT: &str = "session";
/// The credential type farebox offers: the payer sends its own transactions.
pub const CREDENTIAL_HASH: &str = "hash";
/// The unit farebox sells: one request.
pub const UNIT_REQUEST: &str = "request";

/// A session request or payload that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvmSessionError {
    #[error("{0} is missing or has the wrong type")]
    Missing(&'static str),
    #[error("{0} is not a valid amount")]
    Number(&'static str),
    #[error("{0} is not a valid address")]
    Address(&'static str),
    #[error("{0} is not 32 bytes of 0x hex")]
    Word(&'static str),
    #[error("{0} is not a 65-byte 0x hex signature")]
    Signature(&'static str),
    #[error("unknown action {0:?} (expected open, voucher, topUp or close)")]
    Action(String),
    #[error("payload.type {0:?} is not supported (only \"hash\")")]
    CredentialType(String),
}

/// An EVM session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmSessionRequest {
    /// Price of one unit, base units of the token.
    pub amount: U256,
    pub unit_type: Option<String>,
    /// What the server suggests depositing.
    pub suggested_deposit: Option<U256>,
    /// The token contract.
    pub currency: Address,
    /// The payee (the channel's `payee`).
    pub recipient: Address,
    pub chain_id: u64,
    pub escrow: Address,
    /// A channel the client may resume.
    pub channel_id: Option<B256>,
    /// Smallest increase of a voucher over the last accepted one.
    pub min_voucher_delta: U256,
    pub credential_types: Vec<String>,
    pub decimals: Option<u8>,
    pub description: Option<String>,
}

impl EvmSessionRequest {
    /// The request JSON.
    pub fn to_json(&self) -> Value {
        let mut details = json!({
            "chainId": self.chain_id,
            "escrowContract": format!("{:#x}", self.escrow),
            "minVoucherDelta": self.min_voucher_delta.to_string(),
            "credentialTypes": self.credential_types,
        });
        let details_obj = details.as_object_mut().expect("an object literal");
        if let Some(c) = self.channel_id {
            details_obj.insert("channelId".into(), Value::String(format!("{c:#x}")));
        }
        if let Some(d) = self.decimals {
            details_obj.insert("decimals".into(), Value::from(d));
        }
        let mut v = json!({
            "amount": self.amount.to_string(),
            "currency": format!("{:#x}", self.currency),
            "recipient": format!("{:#x}", self.recipient),
            "methodDetails": details,
        });
        let obj = v.as_object_mut().expect("an object literal");
        if let Some(u) = &self.unit_type {
            obj.insert("unitType".into(), Value::String(u.clone()));
        }
        if let Some(d) = self.suggested_deposit {
            obj.insert("suggestedDeposit".into(), Value::String(d.to_string()));
        }
        if let Some(d) = &self.description {
            obj.insert("description".into(), Value::String(d.clone()));
        }
        v
    }

    /// Reads a request JSON.
    pub fn from_json(v: &Value) -> Result<Self, EvmSessionError> {
        use EvmSessionError as E;
        let obj = v.as_object().ok_or(E::Missing("request"))?;
        let details = obj
            .get("methodDetails")
            .and_then(Value::as_object)
            .ok_or(E::Missing("methodDetails"))?;
        let amount = number(obj, "amount")?;
        let suggested_deposit = match obj.get("suggestedDeposit") {
            None => None,
            Some(_) => Some(number(obj, "suggestedDeposit")?),
        };
        let min_voucher_delta = match details.get("minVoucherDelta") {
            None => U256::ZERO,
            Some(_) => number(details, "minVoucherDelta")?,
        };
        let credential_types = match details.get("credentialTypes") {
            None => vec![CREDENTIAL_HASH.to_string()],
            Some(Value::Array(a)) => {
                a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
            Some(_) => return Err(E::Missing("methodDetails.credentialTypes")),
        };
        let channel_id = match fields::str_field(details, "channelId") {
            None => None,
            Some(c) => Some(parse_b256(c).ok_or(E::Word("methodDetails.channelId"))?),
        };
        let decimals = match details.get("decimals") {
            None => None,
            Some(_) => Some(
                fields::u64_member(details, "decimals")
                    .and_then(|d| u8::try_from(d).ok())
                    .ok_or(E::Number("methodDetails.decimals"))?,
            ),
        };
        Ok(EvmSessionRequest {
            amount,
            unit_type: fields::str_field(obj, "unitType").map(str::to_owned),
            suggested_deposit,
            currency: address(obj, "currency")?,
            recipient: address(obj, "recipient")?,
            chain_id: fields::u64_member(details, "chainId")
                .ok_or(E::Number("methodDetails.chainId"))?,
            escrow: address(details, "escrowContract")?,
            channel_id,
            min_voucher_delta,
            credential_types,
            decimals,
            description: fields::str_field(obj, "description").map(str::to_owned),
        })
    }
}

/// A voucher as a payload carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVoucher {
    pub channel_id: B256,
    pub cumulative_amount: u128,
    /// 65 bytes `r ‖ s ‖ v`.
    pub signature: Vec<u8>,
}

impl SignedVoucher {
    /// The voucher for `amount` on `channel`, signed by `signer` in the escrow's `domain`.
    pub fn sign(
        signer: &farebox_evm::PrivateKeySigner,
        domain: &crate::evm::voucher::VoucherDomain,
        channel: B256,
        amount: u128,
    ) -> Self {
        let v = crate::evm::voucher::Voucher { channelId: channel, cumulativeAmount: amount };
        SignedVoucher {
            channel_id: channel,
            cumulative_amount: amount,
            signature: crate::evm::voucher::sign(signer, domain, &v).to_vec(),
        }
    }
}

/// An `open` payload (`type: "hash"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPayload {
    /// The transaction that called `open`.
    pub hash: TxHash,
    pub salt: B256,
    pub authorized_signer: Option<Address>,
    /// The first voucher (its amount is often the first request's price, or zero).
    pub voucher: SignedVoucher,
}

/// A `topUp` payload (`type: "hash"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpPayload {
    pub channel_id: B256,
    /// The transaction that called `topUp`.
    pub hash: TxHash,
    pub additional_deposit: u128,
}

/// A session payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPayload {
    Open(OpenPayload),
    Voucher(SignedVoucher),
    TopUp(TopUpPayload),
    Close(SignedVoucher),
}

impl SessionPayload {
    /// The channel the payload is about.
    pub fn channel_id(&self) -> B256 {
        match self {
            SessionPayload::Open(o) => o.voucher.channel_id,
            SessionPayload::Voucher(v) | SessionPayload::Close(v) => v.channel_id,
            SessionPayload::TopUp(t) => t.channel_id,
        }
    }

    /// The action name.
    pub fn action(&self) -> &'static str {
        match self {
            SessionPayload::Open(_) => "open",
            SessionPayload::Voucher(_) => "voucher",
            SessionPayload::TopUp(_) => "topUp",
            SessionPayload::Close(_) => "close",
        }
    }

    /// The payload JSON.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.into(), Value::String(v));
        };
        put("action", self.action().into());
        match self {
            SessionPayload::Open(o) => {
                put("type", CREDENTIAL_HASH.into());
                put("hash", format!("{:#x}", o.hash));
                put("salt", format!("{:#x}", o.salt));
                if let Some(s) = o.authorized_signer {
                    put("authorizedSigner", format!("{s:#x}"));
                }
                voucher_members(&mut put, &o.voucher);
            }
            SessionPayload::Voucher(v) | SessionPayload::Close(v) => voucher_members(&mut put, v),
            SessionPayload::TopUp(t) => {
                put("type", CREDENTIAL_HASH.into());
                put("channelId", format!("{:#x}", t.channel_id));
                put("hash", format!("{:#x}", t.hash));
                put("additionalDeposit", t.additional_deposit.to_string());
            }
        }
        m
    }

    /// Reads a payload JSON.
    pub fn from_json(p: &Map<String, Value>) -> Result<Self, EvmSessionError> {
        use EvmSessionError as E;
        let action = fields::str_field(p, "action").ok_or(E::Missing("payload.action"))?;
        let hash_type = || match fields::str_field(p, "type") {
            None | Some(CREDENTIAL_HASH) => Ok(()),
            Some(other) => Err(E::CredentialType(other.into())),
        };
        Ok(match action {
            "open" => {
                hash_type()?;
                let authorized_signer = match fields::str_field(p, "authorizedSigner") {
                    None => None,
                    Some(a) => {
                        Some(parse_address(a).ok_or(E::Address("payload.authorizedSigner"))?)
                            .filter(|a| *a != Address::ZERO)
                    }
                };
                SessionPayload::Open(OpenPayload {
                    hash: word(p, "hash")?,
                    salt: word(p, "salt")?,
                    authorized_signer,
                    voucher: voucher_of(p)?,
                })
            }
            "voucher" => SessionPayload::Voucher(voucher_of(p)?),
            "close" => SessionPayload::Close(voucher_of(p)?),
            "topUp" => {
                hash_type()?;
                SessionPayload::TopUp(TopUpPayload {
                    channel_id: word(p, "channelId")?,
                    hash: word(p, "hash")?,
                    additional_deposit: amount(p, "additionalDeposit")?,
                })
            }
            other => return Err(E::Action(other.chars().take(32).collect())),
        })
    }
}

fn voucher_members(put: &mut impl FnMut(&str, String), v: &SignedVoucher) {
    put("channelId", format!("{:#x}", v.channel_id));
    put("cumulativeAmount", v.cumulative_amount.to_string());
    put("signature", hex0x(&v.signature));
}

fn voucher_of(p: &Map<String, Value>) -> Result<SignedVoucher, EvmSessionError> {
    let signature = fields::str_field(p, "signature")
        .and_then(parse_blob)
        .filter(|s| s.len() == 65)
        .ok_or(EvmSessionError::Signature("payload.signature"))?;
    Ok(SignedVoucher {
        channel_id: word(p, "channelId")?,
        cumulative_amount: amount(p, "cumulativeAmount")?,
        signature,
    })
}

fn number(obj: &Map<String, Value>, name: &'static str) -> Result<U256, EvmSessionError> {
    let text = fields::str_field(obj, name).ok_or(EvmSessionError::Missing(name))?;
    parse_u256(text).ok_or(EvmSessionError::Number(name))
}

/// A `uint128` amount (the escrow's amounts are `uint128`).
fn amount(obj: &Map<String, Value>, name: &'static str) -> Result<u128, EvmSessionError> {
    let text = fields::str_field(obj, name).ok_or(EvmSessionError::Missing(name))?;
    parse_u128(text).ok_or(EvmSessionError::Number(name))
}

fn address(obj: &Map<String, Value>, name: &'static str) -> Result<Address, EvmSessionError> {
    let text = fields::str_field(obj, name).ok_or(EvmSessionError::Missing(name))?;
    parse_address(text).ok_or(EvmSessionError::Address(name))
}

fn word(obj: &Map<String, Value>, name: &'static str) -> Result<B256, EvmSessionError> {
    let text = fields::str_field(obj, name).ok_or(EvmSessionError::Missing(name))?;
    parse_b256(text).ok_or(EvmSessionError::Word(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> EvmSessionRequest {
        EvmSessionRequest {
            amount: U256::from(1000u64),
            unit_type: Some(UNIT_REQUEST.into()),
            suggested_deposit: Some(U256::from(100_000u64)),
            currency: Address::repeat_byte(0x11),
            recipient: Address::repeat_byte(0x22),
            chain_id: 84_532,
            escrow: Address::repeat_byte(0x33),
            channel_id: None,
            min_voucher_delta: U256::ZERO,
            credential_types: vec![CREDENTIAL_HASH.into()],
            decimals: Some(6),
            description: None,
        }
    }

    #[test]
    fn request_round_trips_with_the_drafts_names() {
        let r = request();
        let v = r.to_json();
        assert_eq!(v["amount"], "1000");
        assert_eq!(v["suggestedDeposit"], "100000");
        assert_eq!(v["methodDetails"]["escrowContract"], format!("{:#x}", r.escrow));
        assert_eq!(v["methodDetails"]["chainId"], 84_532);
        assert_eq!(v["methodDetails"]["credentialTypes"], json!(["hash"]));
        assert_eq!(EvmSessionRequest::from_json(&v).unwrap(), r);
        let mut resume = r.clone();
        resume.channel_id = Some(B256::repeat_byte(9));
        resume.suggested_deposit = None;
        assert_eq!(EvmSessionRequest::from_json(&resume.to_json()).unwrap(), resume);
    }

    #[test]
    fn every_action_round_trips() {
        let v = SignedVoucher {
            channel_id: B256::repeat_byte(1),
            cumulative_amount: u128::MAX,
            signature: vec![7; 65],
        };
        for p in [
            SessionPayload::Open(OpenPayload {
                hash: B256::repeat_byte(2),
                salt: B256::repeat_byte(3),
                authorized_signer: Some(Address::repeat_byte(4)),
                voucher: v.clone(),
            }),
            SessionPayload::Voucher(v.clone()),
            SessionPayload::Close(v.clone()),
            SessionPayload::TopUp(TopUpPayload {
                channel_id: B256::repeat_byte(1),
                hash: B256::repeat_byte(5),
                additional_deposit: 10,
            }),
        ] {
            assert_eq!(SessionPayload::from_json(&p.to_json()).unwrap(), p);
            assert_eq!(p.channel_id(), B256::repeat_byte(1));
        }
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        let good = SessionPayload::Voucher(SignedVoucher {
            channel_id: B256::repeat_byte(1),
            cumulative_amount: 5,
            signature: vec![7; 65],
        })
        .to_json();
        let with = |k: &str, v: Value| {
            let mut p = good.clone();
            p.insert(k.into(), v);
            SessionPayload::from_json(&p).unwrap_err()
        };
        assert_eq!(with("action", json!("settle")), EvmSessionError::Action("settle".into()));
        assert_eq!(
            with("signature", json!("0x1234")),
            EvmSessionError::Signature("payload.signature")
        );
        assert_eq!(with("channelId", json!("0x12")), EvmSessionError::Word("channelId"));
        assert_eq!(
            with("cumulativeAmount", json!("-1")),
            EvmSessionError::Number("cumulativeAmount")
        );
        // Above uint128: refused (the escrow's amounts are uint128).
        let too_big = (U256::from(u128::MAX) + U256::from(1u8)).to_string();
        assert_eq!(
            with("cumulativeAmount", json!(too_big)),
            EvmSessionError::Number("cumulativeAmount")
        );
        assert_eq!(with("action", json!(7)), EvmSessionError::Missing("payload.action"));
        let mut open = good.clone();
        open.insert("action".into(), json!("open"));
        open.insert("type".into(), json!("permit2"));
        assert_eq!(
            SessionPayload::from_json(&open).unwrap_err(),
            EvmSessionError::CredentialType("permit2".into())
        );
    }
}
