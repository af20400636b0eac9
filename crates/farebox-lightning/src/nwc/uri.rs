//! Connection URIs: `nostr+walletconnect://<wallet pubkey>?relay=…&secret=…[&lud16=…]`.
//!
//! The URI carries the client's secret key, so it is handled like a password: [`ConnectionUri`]'s
//! `Debug` and `Display` print `secret=<redacted>`, parse errors name the parameter at fault but
//! never quote the input, and only [`ConnectionUri::expose_secret`] writes the full string (for
//! handing a new connection to its client).
//!
//! Parsing follows NIP-47 and what wallets write: the parameters come in any order (rust-nostr
//! writes `secret` first, Alby Hub `relay` first), `relay` may repeat, values are
//! percent-decoded, unknown parameters are ignored, and the scheme is matched case-insensitively.

use std::fmt;
use std::str::FromStr;

use nostr::{Keys, PublicKey, RelayUrl, SecretKey};

/// The URI scheme of NIP-47 connection strings.
pub const SCHEME: &str = "nostr+walletconnect://";

/// Longest connection URI accepted: a pubkey, a secret and a handful of relay URLs fit in far
/// less; anything longer is not a connection string.
pub const MAX_URI_LEN: usize = 8 * 1024;

/// Most relays accepted in one URI (each is a connection the client keeps open).
pub const MAX_RELAYS: usize = 16;

/// Why a connection URI was refused. Never carries the input: it may hold the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    #[error("connection URI is longer than {MAX_URI_LEN} bytes")]
    TooLong,
    #[error("connection URI does not start with nostr+walletconnect://")]
    Scheme,
    #[error("the wallet public key is not a 32-byte x-only key in hex")]
    WalletPubkey,
    #[error("the connection URI has no relay parameter")]
    MissingRelay,
    #[error("relay parameter #{index} is not a ws:// or wss:// URL")]
    Relay { index: usize },
    #[error("the connection URI names more than {MAX_RELAYS} relays")]
    TooManyRelays,
    #[error("the connection URI has no secret parameter")]
    MissingSecret,
    #[error("the secret parameter is not a 32-byte secp256k1 secret key in hex")]
    Secret,
    #[error("the connection URI has the {0} parameter more than once")]
    Duplicate(&'static str),
}

/// A parsed NIP-47 connection: the wallet service's key, where to reach it, and the client
/// key the wallet knows this connection by.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUri {
    /// The wallet service's public key: requests are addressed to it and responses must be
    /// signed by it.
    pub wallet_pubkey: PublicKey,
    /// Relays the wallet service listens on, in the URI's order, without duplicates.
    pub relays: Vec<RelayUrl>,
    secret: SecretKey,
    /// A lightning address the wallet suggests for the user's profile.
    pub lud16: Option<String>,
}

impl ConnectionUri {
    /// A connection from its parts (what a wallet service hands out).
    pub fn new(
        wallet_pubkey: PublicKey,
        relays: Vec<RelayUrl>,
        secret: SecretKey,
        lud16: Option<String>,
    ) -> Self {
        Self { wallet_pubkey, relays, secret, lud16 }
    }

    /// The client's key pair, derived from the secret.
    pub fn client_keys(&self) -> Keys {
        Keys::new(self.secret.clone())
    }

    /// The client's public key: the one the wallet knows this connection by.
    pub fn client_pubkey(&self) -> PublicKey {
        self.client_keys().public_key()
    }

    /// The full connection string, secret included, to hand to the client that will use it.
    /// Store it like a password; never log it.
    pub fn expose_secret(&self) -> String {
        let mut out = self.write_without_secret();
        out.push_str("&secret=");
        out.push_str(&self.secret.to_secret_hex());
        out
    }

    /// `relay` parameters first (as wallets write them), then `lud16`; the caller appends the
    /// secret, redacted or not.
    fn write_without_secret(&self) -> String {
        let mut out = format!("{SCHEME}{}", self.wallet_pubkey.to_hex());
        let mut separator = '?';
        for relay in &self.relays {
            out.push(separator);
            separator = '&';
            out.push_str("relay=");
            out.push_str(&encode(relay.as_str()));
        }
        if let Some(lud16) = &self.lud16 {
            out.push_str("&lud16=");
            out.push_str(&encode(lud16));
        }
        out
    }
}

fn encode(value: &str) -> String {
    nostr::types::url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl fmt::Debug for ConnectionUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionUri")
            .field("wallet_pubkey", &self.wallet_pubkey.to_hex())
            .field("relays", &self.relays.iter().map(RelayUrl::as_str).collect::<Vec<_>>())
            .field("secret", &"<redacted>")
            .field("lud16", &self.lud16)
            .finish()
    }
}

impl fmt::Display for ConnectionUri {
    /// The URI with `secret=<redacted>`: safe to print, useless to connect with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}&secret=<redacted>", self.write_without_secret())
    }
}

impl FromStr for ConnectionUri {
    type Err = UriError;

    fn from_str(input: &str) -> Result<Self, UriError> {
        parse(input)
    }
}

/// Parses a connection URI (see the module docs for what is accepted).
pub fn parse(input: &str) -> Result<ConnectionUri, UriError> {
    let input = input.trim();
    if input.len() > MAX_URI_LEN {
        return Err(UriError::TooLong);
    }
    let rest = match input.get(..SCHEME.len()) {
        Some(scheme) if scheme.eq_ignore_ascii_case(SCHEME) => &input[SCHEME.len()..],
        _ => return Err(UriError::Scheme),
    };
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    // Some writers put a slash between the key and the query.
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.len() != 64 {
        return Err(UriError::WalletPubkey);
    }
    let wallet_pubkey = PublicKey::from_hex(authority).map_err(|_| UriError::WalletPubkey)?;

    let mut relays: Vec<RelayUrl> = Vec::new();
    let mut relay_index = 0;
    let mut secret = None;
    let mut lud16 = None;
    for (key, value) in nostr::types::url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "relay" => {
                relay_index += 1;
                if relay_index > MAX_RELAYS {
                    return Err(UriError::TooManyRelays);
                }
                let url = RelayUrl::parse(value.trim())
                    .map_err(|_| UriError::Relay { index: relay_index })?;
                if !relays.contains(&url) {
                    relays.push(url);
                }
            }
            "secret" => {
                if secret.is_some() {
                    return Err(UriError::Duplicate("secret"));
                }
                if value.len() != 64 {
                    return Err(UriError::Secret);
                }
                secret = Some(SecretKey::from_hex(&value).map_err(|_| UriError::Secret)?);
            }
            "lud16" => {
                if lud16.is_some() {
                    return Err(UriError::Duplicate("lud16"));
                }
                lud16 = Some(value.into_owned());
            }
            _ => {}
        }
    }
    if relays.is_empty() {
        return Err(UriError::MissingRelay);
    }
    let secret = secret.ok_or(UriError::MissingSecret)?;
    Ok(ConnectionUri { wallet_pubkey, relays, secret, lud16 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBKEY: &str = "b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4";
    const SECRET: &str = "71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c";

    #[test]
    fn the_spec_example_parses() {
        let uri: ConnectionUri = format!(
            "nostr+walletconnect://{PUBKEY}?relay=wss%3A%2F%2Frelay.damus.io&secret={SECRET}"
        )
        .parse()
        .unwrap();
        assert_eq!(uri.wallet_pubkey.to_hex(), PUBKEY);
        assert_eq!(uri.relays.len(), 1);
        assert_eq!(uri.relays[0].as_str_without_trailing_slash(), "wss://relay.damus.io");
        assert_eq!(uri.secret.to_secret_hex(), SECRET);
    }

    #[test]
    fn secret_first_several_relays_and_lud16_in_any_order() {
        let uri: ConnectionUri = format!(
            "NOSTR+WALLETCONNECT://{PUBKEY}/?secret={SECRET}&relay=wss://a.example&lud16=me%40getalby.com\
             &relay=wss%3A%2F%2Fb.example%2Fnwc&unknown=1&relay=wss://a.example"
        )
        .parse()
        .unwrap();
        let relays: Vec<_> = uri.relays.iter().map(|r| r.as_str_without_trailing_slash()).collect();
        assert_eq!(relays, ["wss://a.example", "wss://b.example/nwc"]);
        assert_eq!(uri.lud16.as_deref(), Some("me@getalby.com"));
    }

    #[test]
    fn errors_and_printing_never_show_the_secret() {
        let good = format!("nostr+walletconnect://{PUBKEY}?relay=wss://r.example&secret={SECRET}");
        let uri: ConnectionUri = good.parse().unwrap();
        assert!(!format!("{uri:?}").contains(SECRET));
        assert!(!uri.to_string().contains(SECRET));
        assert_eq!(uri.expose_secret().parse::<ConnectionUri>().unwrap(), uri);

        let bad_secret = format!("{good}&secret={}", &SECRET[..63]);
        let almost = format!("nostr+walletconnect://{PUBKEY}?relay=nope&secret={SECRET}");
        for input in [bad_secret, almost] {
            let err = input.parse::<ConnectionUri>().unwrap_err();
            assert!(!format!("{err} {err:?}").contains(&SECRET[..16]));
        }
    }

    #[test]
    fn each_missing_or_broken_part_has_its_error() {
        let cases = [
            (
                format!("nostr+walletconnect:{PUBKEY}?relay=wss://r&secret={SECRET}"),
                UriError::Scheme,
            ),
            (
                format!("nostr+walletconnect://{}?relay=wss://r&secret={SECRET}", &PUBKEY[2..]),
                UriError::WalletPubkey,
            ),
            (format!("nostr+walletconnect://{PUBKEY}?secret={SECRET}"), UriError::MissingRelay),
            (
                format!("nostr+walletconnect://{PUBKEY}?relay=https://r&secret={SECRET}"),
                UriError::Relay { index: 1 },
            ),
            (format!("nostr+walletconnect://{PUBKEY}?relay=wss://r"), UriError::MissingSecret),
            (
                format!(
                    "nostr+walletconnect://{PUBKEY}?relay=wss://r&secret={SECRET}&secret={SECRET}"
                ),
                UriError::Duplicate("secret"),
            ),
            (
                format!("nostr+walletconnect://{PUBKEY}?relay=wss://r&secret={}", "00".repeat(32)),
                UriError::Secret,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<ConnectionUri>().unwrap_err(), expected, "{expected}");
        }
        let many =
            (0..=MAX_RELAYS).map(|i| format!("relay=wss://r{i}.example")).collect::<Vec<_>>();
        let input = format!("nostr+walletconnect://{PUBKEY}?{}&secret={SECRET}", many.join("&"));
        assert_eq!(input.parse::<ConnectionUri>().unwrap_err(), UriError::TooManyRelays);
    }
}
