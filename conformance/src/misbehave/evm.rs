//! The x402 and MPP scenarios of the misbehaving reference server, on a real chain: anvil with
//! FareboxUSD (an EIP-3009 token) deployed, the client's key funded, x402 settled by an
//! in-process facilitator and MPP `evm` charges by the MPP rail itself.
//!
//! Every charge scenario pays to addresses of its own ([`payee`]), nobody holds their keys, so
//! what a scenario was paid is their token balance on chain: the server measures it, whatever
//! the client says. A session scenario has a payee account (which closes channels) and an
//! escrow of its own: it was paid what its payee captured plus what its escrow still holds. The lies are told by `Misbehaving`, a rail around the real one: a price or a
//! recipient changed after a payment, a 402 body that contradicts the header, a settlement that
//! claims more than was signed. A client that pays what it should not is let through (its
//! payment is settled), so that the chain shows it.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use farebox_core::{
    Challenge, ErrorKind, Money, PaymentError, PresentedCredential, Price, Rail, Receipt, Refusal,
    Resource, Settlement, Verdict, Verified,
};
use farebox_evm::anvil::{Anvil, DEV_KEYS};
use farebox_evm::{Address, EvmRpc, PrivateKeySigner, U256};
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::{EvmChargeConfig, EvmSessionConfig, MppConfig, MppRail, PaymentReceipt};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::{X402Config, X402Rail};
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// Base Sepolia's chain id, so that x402 v1 clients (which know named networks only) can pay
/// as `base-sepolia`.
pub const CHAIN_ID: u64 = 84_532;
/// What an honest scenario asks: 0.01 USDC (6 decimals).
pub const PRICE: u128 = 10_000;
/// The price over any sane budget: 5,000 USDC.
pub const PRICEY: u128 = 5_000_000_000;
/// What the client's key holds when the run starts: 100,000 USDC, so that even a client that
/// pays every pricey scenario can, and the chain shows it.
pub const FUNDING: u128 = 100_000_000_000;
/// What the settlement and receipt lies claim was paid, as a multiple of what was.
const INFLATION: u128 = 100;

/// A scenario on the chain.
#[derive(Debug, Clone, Copy)]
pub struct EvmScenario {
    pub path: &'static str,
    /// `x402` or `mpp`.
    pub rail: &'static str,
    pub misbehaviour: &'static str,
    pub correct_client: &'static str,
    /// What a correct client pays in total, in token base units: any of these (the first is
    /// the usual one).
    pub correct: &'static [u128],
}

impl EvmScenario {
    /// Whether a client that paid `paid` to this scenario behaved correctly.
    pub fn is_correct(&self, paid: u128) -> bool {
        self.correct.contains(&paid)
    }
}

/// The scenarios, in the order a runner takes them (the dearest last).
pub const EVM_SCENARIOS: &[EvmScenario] = &[
    EvmScenario {
        path: "/x402/ok",
        rail: "x402",
        misbehaviour: "none (0.01 USDC)",
        correct_client: "pays once and is served",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/x402/price-raised-on-retry",
        rail: "x402",
        misbehaviour: "settles the payment, then answers 402 again at twice the price",
        correct_client: "pays once, then reports the refusal without paying again",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/x402/pay-to-changed-on-retry",
        rail: "x402",
        misbehaviour: "settles the payment, then answers 402 again with another payTo",
        correct_client: "pays once, then reports the refusal without paying again",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/x402/body-contradicts-header",
        rail: "x402",
        misbehaviour: "the 402 body's requirements name another payTo and twice the amount of PAYMENT-REQUIRED's",
        correct_client: "pays what PAYMENT-REQUIRED asks, or refuses the contradiction",
        correct: &[PRICE, 0],
    },
    EvmScenario {
        path: "/x402/loop",
        rail: "x402",
        misbehaviour: "settles every payment and answers 402 again",
        correct_client: "pays once, then stops",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/x402/redirect",
        rail: "x402",
        misbehaviour: "redirects (307) to another origin that asks for payment",
        correct_client: "pays nothing to the origin it was not sent to",
        correct: &[0],
    },
    EvmScenario {
        path: "/x402/inflated-settlement",
        rail: "x402",
        misbehaviour: "settles 0.01 USDC, and the settlement response claims 100 times that",
        correct_client: "pays once and is served (and counts what it signed, not what the server claims)",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/ok",
        rail: "mpp",
        misbehaviour: "none (0.01 USDC, evm charge)",
        correct_client: "pays once and is served",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/price-raised-on-retry",
        rail: "mpp",
        misbehaviour: "settles the charge, then answers 402 again at twice the price",
        correct_client: "pays once, then reports the refusal without paying again",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/recipient-changed-on-retry",
        rail: "mpp",
        misbehaviour: "settles the charge, then answers 402 again with another recipient",
        correct_client: "pays once, then reports the refusal without paying again",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/loop",
        rail: "mpp",
        misbehaviour: "settles every charge and answers 402 again",
        correct_client: "pays once, then stops",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/redirect",
        rail: "mpp",
        misbehaviour: "redirects (307) to another origin that asks for payment",
        correct_client: "pays nothing to the origin it was not sent to",
        correct: &[0],
    },
    EvmScenario {
        path: "/mpp/inflated-receipt",
        rail: "mpp",
        misbehaviour: "settles 0.01 USDC, and the Payment-Receipt claims 100 times that",
        correct_client: "pays once and is served (and counts what it signed, not what the server claims)",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/session/ok",
        rail: "mpp-session",
        misbehaviour: "none (0.01 USDC a request, evm session)",
        correct_client: "opens a channel in an escrow it allows, pays one voucher, closes the channel (the rest comes back)",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/session/overclaimed-receipt",
        rail: "mpp-session",
        misbehaviour: "the Payment-Receipt claims 100 times more spent than the client signed",
        correct_client: "signs no more than it owes, closes at what it signed",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/session/inflated-refund",
        rail: "mpp-session",
        misbehaviour: "the close answer claims a refund 100 times what the chain shows",
        correct_client: "pays one voucher and closes (and counts the refund the chain shows)",
        correct: &[PRICE],
    },
    EvmScenario {
        path: "/mpp/session/foreign-escrow",
        rail: "mpp-session",
        misbehaviour: "the channel is to be opened in an escrow the client's policy does not allow",
        correct_client: "refuses before depositing",
        correct: &[0],
    },
    EvmScenario {
        path: "/x402/pricey",
        rail: "x402",
        misbehaviour: "5,000 USDC",
        correct_client: "refuses over budget",
        correct: &[0],
    },
    EvmScenario {
        path: "/mpp/pricey",
        rail: "mpp",
        misbehaviour: "5,000 USDC (evm charge)",
        correct_client: "refuses over budget",
        correct: &[0],
    },
];

/// The honest scenario of `rail`: a client that does not pay it correctly cannot pay that
/// rail at all, so its refusals elsewhere on the rail prove nothing.
pub fn baseline(rail: &str) -> Option<&'static str> {
    match rail {
        "x402" => Some("/x402/ok"),
        "mpp" => Some("/mpp/ok"),
        "mpp-session" => Some("/mpp/session/ok"),
        _ => None,
    }
}

/// The scenarios on `rails` (`x402`, `mpp`, `mpp-session`; none named: all), in order.
pub fn scenarios_on(rails: &[String]) -> impl Iterator<Item = &'static EvmScenario> + '_ {
    EVM_SCENARIOS.iter().filter(move |s| rails.is_empty() || rails.iter().any(|r| r == s.rail))
}

/// The `n`th address scenario `path` is paid to. Derived from the path, so that nobody holds
/// its key and only the scenario pays it.
pub fn payee(path: &str, n: u8) -> Address {
    let digest = Sha256::new()
        .chain_update(b"farebox misbehaving server payee\0")
        .chain_update(path.as_bytes())
        .chain_update([n])
        .finalize();
    Address::from_slice(&digest[..20])
}

/// The chain of the scenarios: anvil, the token, and the funded key of the client under test.
pub struct Chain {
    /// Kept alive for the run; killed on drop.
    anvil: Anvil,
    rpc: EvmRpc,
    token: Address,
    payer: PrivateKeySigner,
    sessions: Vec<SessionSetup>,
}

/// A session scenario's payee (who closes channels, so a funded account) and its own escrow,
/// so that what its channels still hold is that escrow's balance.
struct SessionSetup {
    path: &'static str,
    payee: PrivateKeySigner,
    escrow: Address,
}

/// The session scenarios and the development accounts that are their payees.
const SESSION_PAYEES: [(&str, usize); 4] = [
    ("/mpp/session/ok", 5),
    ("/mpp/session/overclaimed-receipt", 6),
    ("/mpp/session/inflated-refund", 7),
    ("/mpp/session/foreign-escrow", 8),
];
/// The one whose escrow clients must not allow.
const FOREIGN_ESCROW: &str = "/mpp/session/foreign-escrow";

impl Chain {
    /// Starts anvil (chain id [`CHAIN_ID`]), deploys FareboxUSD("USDC", "2") and funds the
    /// client's key (anvil's dev account #1) with [`FUNDING`].
    pub async fn start() -> anyhow::Result<Chain> {
        Self::on(Anvil::builder().chain_id(CHAIN_ID).start()?).await
    }

    /// As [`Chain::start`], on an anvil already started with chain id [`CHAIN_ID`].
    pub async fn on(anvil: Anvil) -> anyhow::Result<Chain> {
        anyhow::ensure!(anvil.chain_id() == CHAIN_ID, "the chain id must be {CHAIN_ID}");
        let token = anvil.deploy_token("USDC", "2").await?;
        let payer: PrivateKeySigner = DEV_KEYS[1].parse()?;
        anvil.mint(token, payer.address(), U256::from(FUNDING)).await?;
        let rpc = EvmRpc::connect(anvil.url()).await?;
        let deployer: PrivateKeySigner = DEV_KEYS[0].parse()?;
        let mut sessions = Vec::new();
        for (path, account) in SESSION_PAYEES {
            let escrow = rpc.deploy_session_escrow(&deployer, DEFAULT_CLOSE_GRACE_PERIOD).await?;
            sessions.push(SessionSetup { path, payee: DEV_KEYS[account].parse()?, escrow });
        }
        Ok(Chain { anvil, rpc, token, payer, sessions })
    }

    /// The escrows a client's session policy should allow (every session scenario's but the
    /// foreign one's).
    pub fn allowed_escrows(&self) -> Vec<Address> {
        self.sessions.iter().filter(|s| s.path != FOREIGN_ESCROW).map(|s| s.escrow).collect()
    }

    /// The node's URL.
    pub fn rpc_url(&self) -> &str {
        self.anvil.url()
    }

    /// A client of the node.
    pub fn rpc(&self) -> &EvmRpc {
        &self.rpc
    }

    /// The token (EIP-712 domain "USDC", version "2", 6 decimals).
    pub fn token(&self) -> Address {
        self.token
    }

    /// The client's funded key, `0x`-prefixed hex (a public anvil development key).
    pub fn payer_key(&self) -> &'static str {
        DEV_KEYS[1]
    }

    /// The client's address.
    pub fn payer(&self) -> Address {
        self.payer.address()
    }

    /// The token balance of `owner`, in base units.
    pub async fn balance(&self, owner: Address) -> anyhow::Result<u128> {
        let balance = self.rpc.balance_of(self.token, owner).await?;
        u128::try_from(balance).map_err(|_| anyhow::anyhow!("a balance past u128"))
    }

    /// What `scenario` has been paid so far, on chain: the balances of its payees; for a
    /// session, also what its escrow still holds (deposits not yet refunded).
    pub async fn paid(&self, scenario: &EvmScenario) -> anyhow::Result<u128> {
        if let Some(session) = self.sessions.iter().find(|s| s.path == scenario.path) {
            let payee = self.balance(session.payee.address()).await?;
            return Ok(payee.saturating_add(self.balance(session.escrow).await?));
        }
        let mut total = 0u128;
        for n in 0..2 {
            total = total.saturating_add(self.balance(payee(scenario.path, n)).await?);
        }
        Ok(total)
    }

    fn gas_key(&self, n: usize) -> anyhow::Result<PrivateKeySigner> {
        Ok(DEV_KEYS[n].parse()?)
    }
}

/// The misbehaving server's chain scenarios, running: the main origin and the other one the
/// redirects go to. Its tasks end when it is dropped.
pub struct EvmServer {
    /// `http://127.0.0.1:<port>`: where the scenarios' paths are.
    pub url: String,
    /// The other origin the redirect scenarios send clients to.
    pub elsewhere: String,
    chain: Arc<Chain>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for EvmServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl EvmServer {
    /// Binds both origins on 127.0.0.1 (free ports) and serves the scenarios.
    pub async fn start(chain: Arc<Chain>) -> anyhow::Result<EvmServer> {
        Self::bind(chain, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// As [`EvmServer::start`], the main origin on `addr` (the other on a free port).
    pub async fn bind(chain: Arc<Chain>, addr: SocketAddr) -> anyhow::Result<EvmServer> {
        let main = tokio::net::TcpListener::bind(addr).await?;
        let other = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", main.local_addr()?);
        let elsewhere = format!("http://{}", other.local_addr()?);
        let rails = Rails::new(&chain)?;
        let (main_app, other_app) = routers(&rails, &chain, &url, &elsewhere)?;
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(main, main_app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(other, other_app).await;
            }),
        ];
        Ok(EvmServer { url, elsewhere, chain, tasks })
    }

    /// The chain it settles on.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }
}

/// What the rails of every scenario share: the facilitator (x402), the stores, the gas keys.
struct Rails {
    facilitator: Arc<LocalFacilitator>,
    store: Arc<MemoryStore>,
    mpp_gas: PrivateKeySigner,
    rpc: EvmRpc,
    token: Address,
}

impl Rails {
    fn new(chain: &Chain) -> anyhow::Result<Rails> {
        let store = Arc::new(MemoryStore::new());
        let facilitator = Arc::new(LocalFacilitator::new(
            vec![ChainAccess { rpc: chain.rpc.clone(), signer: chain.gas_key(3)? }],
            store.clone(),
        ));
        Ok(Rails {
            facilitator,
            store,
            mpp_gas: chain.gas_key(4)?,
            rpc: chain.rpc.clone(),
            token: chain.token,
        })
    }

    /// An honest x402 rail paying `pay_to`, whose resource URLs are on `origin`.
    fn x402(
        &self,
        pay_to: Address,
        origin: &str,
        offer_v1: bool,
    ) -> anyhow::Result<(Arc<dyn Rail>, Money)> {
        let config = X402Config::builder()
            .network(format!("eip155:{CHAIN_ID}"))
            .asset(format!("{:#x}", self.token))
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .pay_to(format!("{pay_to:#x}"))
            .max_timeout_seconds(60)
            .public_url(origin.to_string())
            .offer_v1(offer_v1)
            .build()?;
        let unit = Money::new(farebox_core::Asset::Token(config.token()), 1);
        Ok((Arc::new(X402Rail::new(config, self.facilitator.clone(), self.store.clone())), unit))
    }

    /// An honest MPP rail with `evm` sessions in the escrow of the session scenario `path`.
    fn session(&self, chain: &Chain, path: &str) -> anyhow::Result<(Arc<dyn Rail>, Money)> {
        let setup = chain
            .sessions
            .iter()
            .find(|s| s.path == path)
            .ok_or_else(|| anyhow::anyhow!("no session scenario {path}"))?;
        let config = EvmSessionConfig::builder(self.rpc.clone(), setup.payee.clone())
            .escrow(setup.escrow)
            .token(self.token)
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .build()?;
        let unit = Money::new(config.asset(), 1);
        let store = Arc::new(MemoryStore::new());
        let rail = MppRail::builder(
            MppConfig::new("farebox.misbehave", secret_of(setup.payee.address()).to_vec()),
            store.clone(),
        )
        .evm_session(config, store)
        .build()?;
        Ok((Arc::new(rail), unit))
    }

    /// An honest MPP rail with the `evm` charge, paying `recipient`. Each has a secret of its
    /// own, so that it verifies only its own challenges.
    fn mpp(&self, recipient: Address) -> anyhow::Result<(Arc<dyn Rail>, Money)> {
        let evm = EvmChargeConfig::builder(self.rpc.clone(), self.mpp_gas.clone())
            .token(self.token)
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .recipient(recipient)
            .build()?;
        let unit = Money::new(evm.asset(), 1);
        let rail = MppRail::builder(
            MppConfig::new("farebox.misbehave", secret_of(recipient).to_vec()),
            Arc::new(MemoryStore::new()),
        )
        .evm_charge(evm)
        .build()?;
        Ok((Arc::new(rail), unit))
    }
}

/// The MPP secret of the rail paying `recipient`: each its own, so that a rail verifies only
/// its own challenges.
fn secret_of(recipient: Address) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"farebox misbehaving server mpp secret\0")
        .chain_update(recipient.as_slice())
        .finalize()
        .into()
}

/// How a scenario's rail lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    None,
    /// Settles a payment, then refuses it with the later rail's challenge (dearer, or to
    /// another recipient, or the same: a loop).
    SettleThenRefuse,
    /// The 402 body carries the later rail's x402 v2 requirements, the header the shown
    /// rail's.
    ContradictingBody,
    /// The settlement header (x402 `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`, MPP
    /// `Payment-Receipt`) claims [`INFLATION`] times what was paid (a session receipt: times
    /// what was spent).
    InflatedReceipt,
    /// A session close's answer claims [`INFLATION`] times the refund.
    InflatedRefund,
}

/// A rail around honest ones that lies as told. Challenges are the `shown` rail's at the
/// route's price (after a refused credential, with [`Lie::SettleThenRefuse`], the `later`
/// rail's at `factor` times it); a credential is verified by whichever of the two it pays, and
/// settled by it.
struct Misbehaving {
    shown: Arc<dyn Rail>,
    later: Arc<dyn Rail>,
    factor: u128,
    lie: Lie,
}

/// A payment the honest rail verified (at the price it verified it for), settled honestly
/// and then lied about.
struct Held {
    lie: Lie,
    resource: Resource,
    inner: Verified,
}

/// `resource` at `factor` times its price.
fn scaled(resource: &Resource, factor: u128) -> Resource {
    let mut scaled = resource.clone();
    let offers = resource
        .price
        .offers()
        .iter()
        .map(|m| Money::new(m.asset.clone(), m.amount.saturating_mul(factor)));
    if let Ok(price) = Price::any_of(offers) {
        scaled.price = price;
    }
    scaled
}

fn lie_failed(e: impl std::fmt::Display) -> PaymentError {
    PaymentError::internal("lie_failed", e.to_string())
}

impl Misbehaving {
    fn honest(rail: Arc<dyn Rail>) -> Self {
        Misbehaving { shown: rail.clone(), later: rail, factor: 1, lie: Lie::None }
    }

    /// The later rail's x402 v2 `PAYMENT-REQUIRED`, decoded, as members of the 402 body.
    async fn contradicting_body(
        &self,
        resource: &Resource,
    ) -> Result<Vec<(String, Value)>, PaymentError> {
        let later = self.later.challenge(&scaled(resource, self.factor), None).await?;
        let header = later
            .and_then(|c| c.headers.into_iter().find(|(n, _)| n == "payment-required"))
            .ok_or_else(|| lie_failed("the later rail offers no PAYMENT-REQUIRED"))?;
        let text = header.1.to_str().map_err(lie_failed)?;
        let required: Value = farebox_x402::codec::decode_header(text).map_err(lie_failed)?;
        match required {
            Value::Object(members) => Ok(members.into_iter().collect()),
            _ => Err(lie_failed("PAYMENT-REQUIRED is not an object")),
        }
    }
}

/// `headers` with every settlement claim multiplied by [`INFLATION`].
fn inflate(
    headers: Vec<(HeaderName, HeaderValue)>,
    paid: u128,
) -> Result<Vec<(HeaderName, HeaderValue)>, PaymentError> {
    let claimed = paid.saturating_mul(INFLATION).to_string();
    headers
        .into_iter()
        .map(|(name, value)| {
            let text = value.to_str().map_err(lie_failed)?;
            let told = match name.as_str() {
                "payment-response" | "x-payment-response" => {
                    let mut answer: Value =
                        farebox_x402::codec::decode_header(text).map_err(lie_failed)?;
                    answer["amount"] = Value::String(claimed.clone());
                    farebox_x402::codec::try_encode_header(&answer).map_err(lie_failed)?
                }
                "payment-receipt" => {
                    let receipt = PaymentReceipt::decode(text).map_err(lie_failed)?;
                    // A session receipt says what was spent so far: claim 100 times that.
                    let spent = receipt.extensions.get("spent").and_then(Value::as_str);
                    match spent.and_then(|s| s.parse::<u128>().ok()) {
                        Some(spent) => {
                            receipt.with("spent", spent.saturating_mul(INFLATION).to_string())
                        }
                        None => receipt.with("amount", claimed.clone()),
                    }
                    .encode()
                }
                _ => return Ok((name, value)),
            };
            Ok((name, HeaderValue::from_str(&told).map_err(lie_failed)?))
        })
        .collect()
}

#[async_trait]
impl Rail for Misbehaving {
    fn name(&self) -> &'static str {
        self.shown.name()
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        self.shown.auth_schemes()
    }

    fn credential_headers(&self) -> &'static [HeaderName] {
        self.shown.credential_headers()
    }

    async fn challenge(
        &self,
        resource: &Resource,
        refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        match self.lie {
            Lie::SettleThenRefuse if refusal.is_some() => {
                self.later.challenge(&scaled(resource, self.factor), refusal).await
            }
            Lie::ContradictingBody => {
                let Some(mut challenge) = self.shown.challenge(resource, refusal).await? else {
                    return Ok(None);
                };
                challenge.body_members = self.contradicting_body(resource).await?;
                Ok(Some(challenge))
            }
            _ => self.shown.challenge(resource, refusal).await,
        }
    }

    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        let (resource, verdict) = match self.shown.clone().verify(resource, credential).await {
            Ok(v) => (resource.clone(), v),
            Err(refused) => {
                let later = scaled(resource, self.factor);
                match self.later.clone().verify(&later, credential).await {
                    Ok(v) => (later, v),
                    Err(_) => return Err(refused),
                }
            }
        };
        let control = matches!(verdict, Verdict::Control(_));
        let inner = verdict.into_verified();
        if self.lie == Lie::SettleThenRefuse {
            inner.settle(&resource).await?;
            return Err(PaymentError::new(
                ErrorKind::PaymentRequired,
                "payment_required",
                "payment required",
            ));
        }
        let (amount, payer, reference) =
            (inner.amount.clone(), inner.payer.clone(), inner.reference.clone());
        let verified =
            Verified::new(amount, payer, reference, Held { lie: self.lie, resource, inner });
        Ok(if control { Verdict::Control(verified) } else { Verdict::Payment(verified) })
    }
}

#[async_trait]
impl Settlement for Held {
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        _amount: Money,
        _reference: String,
    ) -> Result<Receipt, PaymentError> {
        let mut receipt = self.inner.settle(&self.resource).await?;
        match self.lie {
            Lie::InflatedReceipt => {
                receipt.headers = inflate(receipt.headers, receipt.amount.amount)?
            }
            Lie::InflatedRefund => {
                if let Some(body) = receipt.answer.as_mut().and_then(|a| a.body.as_mut())
                    && let Some(refund) =
                        body["refunded"].as_str().and_then(|r| r.parse::<u128>().ok())
                {
                    body["refunded"] = Value::String(refund.saturating_mul(INFLATION).to_string());
                }
            }
            _ => {}
        }
        Ok(receipt)
    }

    async fn release(self: Box<Self>, _resource: &Resource) {
        self.inner.release(&self.resource).await;
    }
}

const SERVED: &str = "served";

/// A route at `path` priced `price` base units of `unit`'s asset behind `rail`.
fn paid_route(
    path: &str,
    rail: Misbehaving,
    unit: &Money,
    price: u128,
) -> anyhow::Result<Router<Arc<Chain>>> {
    let price = Price::one(Money::new(unit.asset.clone(), price));
    let route =
        PricedRoute::new(Some(Method::GET), path, price)?.describe(&format!("scenario {path}"));
    let paywall = Paywall::builder().rail(rail).route(route).build()?;
    Ok(Router::new().route(path, get(|| async { SERVED }).layer(PaywallLayer::new(paywall))))
}

/// A 307 to the same path on `elsewhere`.
fn redirect(path: &'static str, elsewhere: &str) -> Router<Arc<Chain>> {
    let location = format!("{elsewhere}{path}");
    Router::new().route(
        path,
        get(move || {
            let location = location.clone();
            async move {
                (http::StatusCode::TEMPORARY_REDIRECT, [(http::header::LOCATION, location)])
            }
        }),
    )
}

/// An honest rail paying the address given, and the unit of its asset.
type MakeRail<'a> = &'a dyn Fn(Address) -> anyhow::Result<(Arc<dyn Rail>, Money)>;

/// The scenarios every rail has, under `prefix`, on rails `make` builds: `changed` and
/// `inflated` are the names of the recipient-changed and inflated-receipt scenarios in the
/// rail's own words.
fn rail_routes(
    prefix: &str,
    make: MakeRail<'_>,
    changed: &str,
    inflated: &str,
) -> anyhow::Result<Router<Arc<Chain>>> {
    // name, lie, price factor of the later challenge, the later rail's payee, price.
    let setups = [
        ("ok", Lie::None, 1, 0, PRICE),
        ("price-raised-on-retry", Lie::SettleThenRefuse, 2, 0, PRICE),
        (changed, Lie::SettleThenRefuse, 1, 1, PRICE),
        ("loop", Lie::SettleThenRefuse, 1, 0, PRICE),
        (inflated, Lie::InflatedReceipt, 1, 0, PRICE),
        ("pricey", Lie::None, 1, 0, PRICEY),
    ];
    let mut router = Router::new();
    for (name, lie, factor, later, price) in setups {
        let path = format!("{prefix}/{name}");
        let (shown, unit) = make(payee(&path, 0))?;
        let later = if later == 0 { shown.clone() } else { make(payee(&path, later))?.0 };
        let rail = Misbehaving { shown, later, factor, lie };
        router = router.merge(paid_route(&path, rail, &unit, price)?);
    }
    Ok(router)
}

/// The main origin's routes and the other origin's.
fn routers(
    rails: &Rails,
    chain: &Arc<Chain>,
    url: &str,
    elsewhere: &str,
) -> anyhow::Result<(Router, Router)> {
    let x402 = |pay_to| rails.x402(pay_to, url, true);
    let mpp = |pay_to| rails.mpp(pay_to);
    let mut main = rail_routes("/x402", &x402, "pay-to-changed-on-retry", "inflated-settlement")?;
    main = main.merge(rail_routes("/mpp", &mpp, "recipient-changed-on-retry", "inflated-receipt")?);
    // x402 only: the 402 body (v1's place) says otherwise than the header (v2's).
    let path = "/x402/body-contradicts-header";
    let ((shown, unit), (later, _)) =
        (rails.x402(payee(path, 0), url, false)?, rails.x402(payee(path, 1), url, false)?);
    let rail = Misbehaving { shown, later, factor: 2, lie: Lie::ContradictingBody };
    main = main.merge(paid_route(path, rail, &unit, PRICE)?);
    main = main.merge(redirect("/x402/redirect", elsewhere));
    main = main.merge(redirect("/mpp/redirect", elsewhere));
    for (path, lie) in [
        ("/mpp/session/ok", Lie::None),
        ("/mpp/session/overclaimed-receipt", Lie::InflatedReceipt),
        ("/mpp/session/inflated-refund", Lie::InflatedRefund),
        (FOREIGN_ESCROW, Lie::None),
    ] {
        let (rail, unit) = rails.session(chain, path)?;
        let rail = Misbehaving { shown: rail.clone(), later: rail, factor: 1, lie };
        main = main.merge(paid_route(path, rail, &unit, PRICE)?);
    }

    // The other origin: honest, paying the redirect scenarios' second payees.
    let (rail, unit) = rails.x402(payee("/x402/redirect", 1), elsewhere, true)?;
    let mut other = paid_route("/x402/redirect", Misbehaving::honest(rail), &unit, PRICE)?;
    let (rail, unit) = rails.mpp(payee("/mpp/redirect", 1))?;
    other = other.merge(paid_route("/mpp/redirect", Misbehaving::honest(rail), &unit, PRICE)?);

    let main = main.route("/_report", get(report)).with_state(chain.clone());
    Ok((main, other.with_state(chain.clone())))
}

/// What each scenario has been paid on chain, and what a correct client pays.
async fn report(State(chain): State<Arc<Chain>>) -> impl IntoResponse {
    let mut scenarios = Vec::new();
    for s in EVM_SCENARIOS {
        let paid = match chain.paid(s).await {
            Ok(paid) => json!(paid.to_string()),
            Err(e) => {
                let why = format!("the chain does not answer: {e}");
                return (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({ "error": why })),
                );
            }
        };
        scenarios.push(json!({
            "path": s.path, "rail": s.rail, "misbehaviour": s.misbehaviour,
            "correct_client": s.correct_client,
            "correct_paid": s.correct.iter().map(u128::to_string).collect::<Vec<_>>(),
            "paid": paid,
        }));
    }
    (
        http::StatusCode::OK,
        axum::Json(json!({
            "token": format!("{:#x}", chain.token), "chain_id": CHAIN_ID, "scenarios": scenarios
        })),
    )
}
