//! The client half: [`PrepaidWallet`], a `farebox_wallet::Wallet` that spends credit codes
//! (added to `farebox-client`'s middleware like any rail's wallet).
//!
//! A code is a bearer instrument: whoever is shown it can spend it with the seller. So the
//! wallet is pinned to the hosts the seller serves from, and shows its codes to no other
//! server, whatever a 402 elsewhere claims (the seller's key in a challenge is public).
//!
//! The wallet holds codes bought from one seller and keeps its own count of what each has left:
//! it never takes the server's word for it. The count lives as long as the wallet (one agent
//! process); a new process counts from the codes' full values, and a code the server has
//! spent meanwhile is refused there, with nothing served. A 402 whose `Prepaid` challenge names that seller
//! and the wallet's asset is an offer; paying it sends the first code with enough left and
//! takes the price off it. If the server refuses the proof, the price goes back on the code
//! (the server debits only what it serves; a handler failure is credited back there too).

use std::sync::Mutex;

use async_trait::async_trait;
use farebox_core::{Asset, Money};
use farebox_wallet::{
    ClientError, Funding, Offer, PaymentRequired, Proof, RailSettings, Wallet, WalletPlugin,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::code::{CodeError, CreditCode, SCHEME};

/// A code in the wallet and what the wallet counts it has left.
struct Held {
    text: String,
    code: CreditCode,
    left: u128,
}

/// Pays `Prepaid` challenges of one seller, on the seller's own hosts, with the codes it holds.
pub struct PrepaidWallet {
    asset: Asset,
    seller_hex: String,
    /// `host` (any port) or `host:port`, lower case.
    hosts: Vec<String>,
    codes: Mutex<Vec<Held>>,
}

/// How a wallet file configures this wallet, for `farebox pay` and any program that lists it:
///
/// ```toml
/// [rails.prepaid]
/// seller = "<the seller's Ed25519 public key, 64 hex digits>"
/// hosts = ["api.example.com"] # where the seller serves: codes are shown to no other host
/// currency = "sat"            # or a name of the wallet file's [assets]
/// codes_file = "codes.txt"    # one code per line, readable by its owner only (or codes_env)
/// ```
pub const WALLET_PLUGIN: WalletPlugin = WalletPlugin { name: "prepaid", build: from_settings };

fn from_settings(settings: &RailSettings<'_>) -> Result<Box<dyn Wallet>, String> {
    const KEYS: [&str; 5] = ["seller", "hosts", "currency", "codes_file", "codes_env"];
    let table = settings.table.as_object().ok_or("expected a table")?;
    if let Some(unknown) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("`{unknown}`: unknown key (known: {})", KEYS.join(", ")));
    }
    let text = |key: &str| table.get(key).and_then(|v| v.as_str());
    let seller: [u8; 32] = text("seller")
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or("`seller`: the seller's Ed25519 public key, 64 hex digits")?;
    let hosts: Vec<&str> = match table.get("hosts").and_then(|h| h.as_array()) {
        Some(list) => list.iter().filter_map(|h| h.as_str().filter(|h| !h.is_empty())).collect(),
        None => Vec::new(),
    };
    if hosts.is_empty() {
        return Err("`hosts`: the seller's hosts, a list of at least one (codes are bearer \
                    secrets, shown to no other server)"
            .into());
    }
    let currency = text("currency").unwrap_or("sat");
    let asset = (settings.asset)(currency)
        .ok_or_else(|| format!("`currency`: {currency:?} is not \"sat\" nor an [assets] name"))?;
    let codes = (settings.secret)("codes")?;
    let mut wallet = PrepaidWallet::new(asset, seller, hosts);
    for (i, line) in codes.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        wallet = wallet.with_code(line).map_err(|e| format!("`codes`, code {}: {e}", i + 1))?;
    }
    Ok(Box::new(wallet))
}

/// What an offer pays (the price, in the wallet's asset) and, once paid, with which code.
struct PrepaidOffer {
    amount: u128,
    paid_with: Mutex<Option<String>>,
}

impl PrepaidWallet {
    /// A wallet for codes of the seller whose public key is `seller` (32 bytes), in `asset`,
    /// shown only to `hosts` (`host` for any port, `host:port` for one): where the seller
    /// serves.
    pub fn new<S: Into<String>>(
        asset: Asset,
        seller: [u8; 32],
        hosts: impl IntoIterator<Item = S>,
    ) -> Self {
        let hosts = hosts.into_iter().map(|h| h.into().to_ascii_lowercase()).collect();
        PrepaidWallet { asset, seller_hex: hex::encode(seller), hosts, codes: Mutex::default() }
    }

    /// Whether `url` is on one of the seller's hosts.
    fn is_sellers(&self, url: &reqwest::Url) -> bool {
        let Some(name) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        let with_port = url.port_or_known_default().map(|p| format!("{name}:{p}"));
        self.hosts.iter().any(|h| *h == name || Some(h) == with_port.as_ref())
    }

    /// Adds a code the buyer bought. Its signature is the seller's to check; text that is not
    /// even a code is refused here.
    pub fn with_code(self, text: &str) -> Result<Self, CodeError> {
        let code = CreditCode::read(text)?;
        let left = code.value;
        self.codes.lock().unwrap_or_else(|e| e.into_inner()).push(Held {
            text: text.to_string(),
            code,
            left,
        });
        Ok(self)
    }

    /// What the codes have left, by the wallet's own count.
    pub fn left(&self) -> u128 {
        self.codes.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|h| h.left).sum()
    }

    /// Puts `amount` back on the code with `reference` (its id).
    fn give_back(&self, reference: &str, amount: u128) {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = codes.iter_mut().find(|h| h.code.id_hex() == reference) {
            held.left = (held.left + amount).min(held.code.value);
        }
    }
}

#[async_trait]
impl Wallet for PrepaidWallet {
    fn rail(&self) -> &'static str {
        "prepaid"
    }

    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        let mut offers = Vec::new();
        if !self.is_sellers(&response.url) {
            return Ok(offers);
        }
        for challenge in &response.challenges {
            if !challenge.scheme.eq_ignore_ascii_case(SCHEME) {
                continue;
            }
            let param = |name: &str| {
                challenge.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
            };
            // Another seller's codes, or another currency: not ours to pay.
            if param("seller").is_none_or(|s| !s.eq_ignore_ascii_case(&self.seller_hex))
                || param("currency").is_none_or(|c| c != self.asset.symbol())
            {
                continue;
            }
            let amount = param("amount")
                .and_then(|a| a.parse::<u128>().ok())
                .filter(|a| *a > 0)
                .ok_or_else(|| {
                    ClientError::InvalidChallenge(
                        "a Prepaid challenge without a valid amount".into(),
                    )
                })?;
            let price = Money::new(self.asset.clone(), amount);
            offers.push(Offer {
                rail: "prepaid",
                summary: format!("{price} from a prepaid credit code"),
                price,
                max_fee: Money::new(self.asset.clone(), 0),
                funding: Funding::PerRequest,
                payee: Some(self.seller_hex.clone()),
                buys: Some(response.url.to_string()),
                details: Box::new(PrepaidOffer { amount, paid_with: Mutex::default() }),
            });
        }
        Ok(offers)
    }

    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        let details = offer.details.downcast_ref::<PrepaidOffer>().ok_or_else(|| {
            ClientError::PaymentFailed("offer was not made by this wallet".into())
        })?;
        let amount = details.amount;
        let now = farebox_core::time::unix_now()?;
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let held = codes
            .iter_mut()
            .find(|h| h.left >= amount && h.code.expires > now)
            .ok_or_else(|| ClientError::PaymentFailed("no credit code has enough left".into()))?;
        let mut value = HeaderValue::from_str(&format!("{SCHEME} {}", held.text))
            .map_err(|_| ClientError::PaymentFailed("the code is not header-safe".into()))?;
        // A bearer secret: out of Debug output and header compression tables.
        value.set_sensitive(true);
        held.left -= amount;
        *details.paid_with.lock().unwrap_or_else(|e| e.into_inner()) = Some(held.code.id_hex());
        Ok(Proof {
            headers: vec![(http::header::AUTHORIZATION, value)],
            fee: Money::new(self.asset.clone(), 0),
            reference: held.code.id_hex(),
            reusable: false,
        })
    }

    /// A refused proof took nothing from the code: the price goes back on it.
    async fn answered(
        &self,
        offer: &Offer,
        status: StatusCode,
        _headers: &HeaderMap,
        _problem: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        if status == StatusCode::PAYMENT_REQUIRED
            && let Some(details) = offer.details.downcast_ref::<PrepaidOffer>()
            && let Some(id) = details.paid_with.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            self.give_back(&id, details.amount);
        }
        Ok(())
    }
}
