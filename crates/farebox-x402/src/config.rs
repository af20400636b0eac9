//! [`X402Config`]: what an x402 deployment charges in and pays to, checked once when it is
//! built ([`X402Config::builder`]), so that a rail never offers a requirement no wallet can pay
//! (a `payTo` that is not an address, a network without a chain id, an empty EIP-712 domain)
//! or one that sends the money nowhere (the zero address, a mistyped EIP-55 checksum).

use std::str::FromStr;

use farebox_core::money::Token;
use farebox_evm::Address;
use farebox_evm::address::parse_address;
use farebox_evm::token::TokenInfo;

use crate::network;

/// What an x402 deployment charges in and pays to. Built and checked by [`X402ConfigBuilder`].
#[derive(Debug, Clone)]
pub struct X402Config {
    network: String,
    asset: String,
    info: TokenInfo,
    pay_to: String,
    max_timeout_seconds: u64,
    public_url: String,
    offer_v1: bool,
}

/// A field of [`X402ConfigBuilder`] that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x402 configuration, `{field}`: {problem}")]
pub struct X402ConfigError {
    /// The builder method that sets it.
    pub field: &'static str,
    pub problem: String,
}

/// How long a signed authorization may take to arrive when the builder is not told
/// (the `maxTimeoutSeconds` most x402 servers offer).
pub const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 60;

impl X402Config {
    /// A builder; `network`, `asset`, `described_as`, `pay_to` and `public_url` are required.
    pub fn builder() -> X402ConfigBuilder {
        X402ConfigBuilder::default()
    }

    /// CAIP-2 network, e.g. `eip155:84532`.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The token contract, as configured.
    pub fn asset(&self) -> &str {
        &self.asset
    }

    /// The token's EIP-712 domain name (`"USDC"` on Base Sepolia).
    pub fn eip712_name(&self) -> &str {
        &self.info.eip712_name
    }

    /// The token's EIP-712 domain version (`"2"` for USDC).
    pub fn eip712_version(&self) -> &str {
        &self.info.eip712_version
    }

    /// Who is paid, as configured.
    pub fn pay_to(&self) -> &str {
        &self.pay_to
    }

    /// How long a signed authorization may take to arrive (the client's `validBefore` window).
    pub fn max_timeout_seconds(&self) -> u64 {
        self.max_timeout_seconds
    }

    /// The public base URL of the server, for `resource.url`.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Whether v1 (`X-PAYMENT`) is offered as well as v2.
    pub fn offer_v1(&self) -> bool {
        self.offer_v1
    }

    /// The asset this rail charges in, as the core's price table names it.
    pub fn token(&self) -> Token {
        Token {
            network: self.network.clone(),
            address: self.asset.clone(),
            symbol: self.info.symbol.clone(),
            decimals: self.info.decimals,
        }
    }
}

/// Builds an [`X402Config`]; [`X402ConfigBuilder::build`] says which field is missing or wrong.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct X402ConfigBuilder {
    network: Option<String>,
    asset: Option<String>,
    info: Option<TokenInfo>,
    pay_to: Option<String>,
    max_timeout_seconds: Option<u64>,
    public_url: Option<String>,
    offer_v1: bool,
}

impl X402ConfigBuilder {
    /// CAIP-2 `eip155:<chain id>`.
    pub fn network(mut self, caip2: impl Into<String>) -> Self {
        self.network = Some(caip2.into());
        self
    }

    /// The token contract: `0x` and 40 hex digits (mixed case must be a valid EIP-55 checksum).
    pub fn asset(mut self, address: impl Into<String>) -> Self {
        self.asset = Some(address.into());
        self
    }

    /// The token's symbol, decimals and EIP-712 domain (which payers sign under):
    /// `&usdc::BASE_SEPOLIA`, or a [`TokenInfo`].
    pub fn described_as(mut self, info: impl Into<TokenInfo>) -> Self {
        self.info = Some(info.into());
        self
    }

    /// Who is paid: an address, not the zero address.
    pub fn pay_to(mut self, address: impl Into<String>) -> Self {
        self.pay_to = Some(address.into());
        self
    }

    /// How long a signed authorization may take to arrive; [`DEFAULT_MAX_TIMEOUT_SECONDS`]
    /// unless set.
    pub fn max_timeout_seconds(mut self, seconds: u64) -> Self {
        self.max_timeout_seconds = Some(seconds);
        self
    }

    /// The public base URL of the server (`https://api.example.com`).
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(url.into());
        self
    }

    /// Offer v1 (`X-PAYMENT`) as well as v2; the network needs a v1 name.
    pub fn offer_v1(mut self, offer: bool) -> Self {
        self.offer_v1 = offer;
        self
    }

    pub fn build(self) -> Result<X402Config, X402ConfigError> {
        let wrong = |field, problem: &str| X402ConfigError { field, problem: problem.into() };
        let required =
            |field, value: Option<String>| value.ok_or_else(|| wrong(field, "is required"));

        let network = required("network", self.network)?;
        if network::eip155_chain_id(&network).is_none() {
            return Err(wrong("network", "must be a CAIP-2 EVM network, eip155:<chain id>"));
        }
        let asset = required("asset", self.asset)?;
        address("asset", &asset)?;
        let pay_to = required("pay_to", self.pay_to)?;
        if address("pay_to", &pay_to)?.is_zero() {
            return Err(wrong("pay_to", "is the zero address: the money would be burnt"));
        }
        let info = self.info.ok_or_else(|| wrong("described_as", "is required"))?;
        if let Some((field, problem)) = info.problem(true) {
            return Err(wrong(field, problem));
        }
        let max_timeout_seconds = self.max_timeout_seconds.unwrap_or(DEFAULT_MAX_TIMEOUT_SECONDS);
        if max_timeout_seconds == 0 {
            return Err(wrong("max_timeout_seconds", "must be at least 1"));
        }
        let public_url = required("public_url", self.public_url)?;
        let uri = http::Uri::from_str(&public_url).ok();
        let absolute = uri.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if !absolute || uri.is_some_and(|u| u.query().is_some()) {
            return Err(wrong("public_url", "must be an absolute http(s) URL without a query"));
        }
        if self.offer_v1 && network::caip2_to_v1(&network).is_none() {
            return Err(wrong("offer_v1", "this network has no x402 v1 name"));
        }
        Ok(X402Config {
            network,
            asset,
            info,
            pay_to,
            max_timeout_seconds,
            public_url,
            offer_v1: self.offer_v1,
        })
    }
}

/// An address as [`farebox_evm::address`] reads one.
fn address(field: &'static str, text: &str) -> Result<Address, X402ConfigError> {
    parse_address(text).map_err(|e| X402ConfigError { field, problem: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    const PAYEE: &str = "0x209693bc6afc0c5328ba36faf03c514ef312287c";

    fn base() -> X402ConfigBuilder {
        X402Config::builder()
            .network("eip155:84532")
            .asset(USDC)
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .pay_to(PAYEE)
            .public_url("https://api.example.com")
    }

    #[test]
    fn a_complete_config_builds_with_the_default_timeout() {
        let c = base().offer_v1(true).build().unwrap();
        assert_eq!(c.pay_to(), PAYEE);
        assert_eq!(c.max_timeout_seconds(), DEFAULT_MAX_TIMEOUT_SECONDS);
        assert_eq!(c.token().decimals, 6);
        assert!(c.offer_v1());
    }

    #[test]
    fn every_wrong_field_is_named() {
        let zero = "0x0000000000000000000000000000000000000000";
        // One digit of the checksummed USDC address changed in case.
        let bad_checksum = "0x036CbD53842c5426634e7929541eC2318f3dCF7E";
        let cases: Vec<(X402ConfigBuilder, &str)> = vec![
            (X402ConfigBuilder::default(), "network"),
            (base().network("base-sepolia"), "network"),
            (base().asset("USDC"), "asset"),
            (base().asset(bad_checksum), "asset"),
            (base().pay_to("alice"), "pay_to"),
            (base().pay_to("0x209693bc6afc0c5328ba36faf03c514ef31228"), "pay_to"),
            (base().pay_to(zero), "pay_to"),
            (base().described_as(TokenInfo::unsigned("USDC", 6)), "eip712_domain"),
            (base().described_as(TokenInfo::unsigned(" ", 6)), "symbol"),
            (base().described_as(TokenInfo::unsigned("USDC", 77)), "decimals"),
            (base().max_timeout_seconds(0), "max_timeout_seconds"),
            (base().public_url("api.example.com"), "public_url"),
            (base().public_url("ftp://api.example.com"), "public_url"),
            (base().network("eip155:31337").offer_v1(true), "offer_v1"),
        ];
        for (builder, field) in cases {
            assert_eq!(builder.build().unwrap_err().field, field);
        }
    }
}
