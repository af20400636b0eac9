//! What the built-in probes (L402, x402, MPP) share: the attempts they make, the wallets
//! they pay with, and [`probes`], the three of them ready to run.

use std::sync::Arc;

use farebox_evm::PrivateKeySigner;
use farebox_lightning::LightningBackend;
use serde::Deserialize;

use super::{MaxPrice, Probe, Quote, Unable};
use crate::check::{self, AttemptKind};

/// The built-in probes, one line per rail, paying with `wallets`.
pub fn probes(wallets: &Wallets) -> Vec<Box<dyn Probe>> {
    vec![
        Box::new(super::l402::L402Probe::new(wallets.clone())),
        Box::new(super::x402::X402Probe::new(wallets.clone())),
        Box::new(super::mpp::MppProbe::new(wallets.clone())),
    ]
}

/// What the built-in probes may pay with: their wallet configuration.
#[derive(Clone, Default)]
pub struct Wallets {
    /// Pays Lightning invoices (L402, MPP `lightning` charge).
    pub lightning: Option<Arc<dyn LightningBackend>>,
    /// Signs EIP-3009 authorizations (x402 `exact`, MPP `evm` charge); must be funded on the
    /// server's chain.
    pub evm: Option<PrivateKeySigner>,
    /// EIP-712 domains (`name`, `version`) of EIP-3009 tokens, by chain id and address, for MPP
    /// `evm` challenges that do not name theirs (mppx's); known USDC deployments need none.
    pub evm_domains: Vec<(u64, farebox_evm::Address, String, String)>,
    /// The most one payment may cost; a paid check that would pay more does not run.
    pub max_price: MaxPrice,
    /// A node of the server's chain, through which the `evm` key opens, tops up and watches
    /// its own payment channel (MPP `session` checks).
    pub evm_rpc: Option<farebox_evm::EvmRpc>,
}

/// The attempts the built-in probes make, as their check files name them. Each probe lists
/// those it makes (its `MAKES`); a check file naming another does not load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attempt {
    /// A credential of the rail's scheme that is not its encoding (bad base64, bad JSON).
    Malformed,
    /// Valid base64 of JSON that is not a credential object (an array, a number).
    NotAnObject,
    /// A well-formed credential cut in half.
    Truncated,
    /// A credential of 32 KiB.
    Oversized,
    /// A credential whose proof is signed by someone else (or a preimage that is not).
    Forged,
    /// A credential bound to the challenge but with an altered binding (tampered id or MAC).
    Tampered,
    /// A challenge echoed with its request altered (another amount).
    TamperedRequest,
    /// A proof for less than the price.
    WrongAmount,
    /// A proof for more than the price (x402 `exact` is exact).
    Overpay,
    /// A proof paying another recipient.
    WrongRecipient,
    /// A proof on another network.
    WrongNetwork,
    /// A proof whose validity ended.
    Expired,
    /// A proof not valid yet.
    NotYetValid,
    /// A protocol version the server does not speak.
    UnknownVersion,
    /// A credential for a method / intent the server does not offer.
    UnknownMethod,
    /// Two credentials of the rail in one request.
    TwoCredentials,
    /// A real payment (needs a wallet); its proof is kept for `replay` and `reuse`.
    Paid,
    /// The proof of the last `paid` check, sent again.
    Replay,
    /// A real payment made for this check alone, answering a fresh 402 (not kept for
    /// `replay`): what a flow check sends to another route or several times at once.
    Fresh,
    /// A real payment like `fresh`, its addresses written in lowercase hex rather than
    /// EIP-55 (as some clients send them).
    LowercaseHex,
    /// A challenge echoed with another realm (the proof otherwise as `forged`'s).
    OtherRealm,
    /// No credential, with an `Accept-Payment` preference for one of the offers (MPP).
    AcceptPayment,
    /// Opens a payment channel of the tester's own on chain (a deposit of two requests) and
    /// pays the first request with its first voucher (an MPP `session`).
    SessionOpen,
    /// The session's next voucher: what was signed plus the price.
    SessionVoucher,
    /// A voucher for what was already signed: it adds nothing.
    SessionVoucherEqual,
    /// A voucher for less than was already signed.
    SessionVoucherLower,
    /// A voucher for more than the channel holds.
    SessionVoucherAboveDeposit,
    /// A voucher, validly signed by the payer, for a channel that was never opened.
    SessionOtherChannel,
    /// Adds two requests' worth to the channel on chain and tells the server.
    SessionTopUp,
    /// Closes the session with a voucher for what was signed; the remainder must come back
    /// on chain.
    SessionClose,
    /// A voucher on the channel after it was closed.
    SessionClosedChannel,
}

impl Attempt {
    /// The built-in attempt `send` names, if it names one.
    pub fn of(send: &check::Attempt) -> Option<Attempt> {
        Attempt::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(
            send.as_str(),
        ))
        .ok()
    }

    /// The built-in attempt `send` names; a check file naming another does not load, so this
    /// is for the probes' methods, which skip it all the same.
    pub(crate) fn parse(send: &check::Attempt) -> Result<Attempt, Unable> {
        Attempt::of(send).ok_or_else(|| Unable::Skip(format!("no attempt {send:?}")))
    }

    /// What the runner must know of `send`, when it is one of `makes` (a probe's list of the
    /// attempts it makes); `None` for any other.
    pub fn made_by(send: &check::Attempt, makes: &[Attempt]) -> Option<AttemptKind> {
        Attempt::of(send).filter(|a| makes.contains(a)).map(Attempt::kind)
    }

    /// What the runner must know of it.
    pub fn kind(self) -> AttemptKind {
        AttemptKind { pays: self.pays(), fresh_challenge: self.answers_a_fresh_challenge() }
    }

    /// Whether the attempt spends the tester's money (at most once each).
    pub fn pays(self) -> bool {
        matches!(
            self,
            Attempt::Paid
                | Attempt::Fresh
                | Attempt::LowercaseHex
                | Attempt::SessionOpen
                | Attempt::SessionTopUp
        )
    }

    /// Whether the credential answers a 402 of its own rather than the run's first: a
    /// challenge may be good for one payment only.
    pub fn answers_a_fresh_challenge(self) -> bool {
        matches!(self, Attempt::Fresh) || self.is_session()
    }

    /// Whether the attempt is a step of the run's own payment session.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Attempt::SessionOpen
                | Attempt::SessionVoucher
                | Attempt::SessionVoucherEqual
                | Attempt::SessionVoucherLower
                | Attempt::SessionVoucherAboveDeposit
                | Attempt::SessionOtherChannel
                | Attempt::SessionTopUp
                | Attempt::SessionClose
                | Attempt::SessionClosedChannel
        )
    }
}

/// A key that holds less of the quoted token, on the quote's chain, than the quote (unfunded,
/// or funded on another chain or in another asset): read from the tester's node
/// (`--wallet evm-rpc`), when it is on that chain.
pub(crate) async fn evm_wallet_cause(quote: &Quote, wallets: &Wallets) -> Option<String> {
    let (key, rpc) = (wallets.evm.as_ref()?, wallets.evm_rpc.as_ref()?);
    let (chain, token) = quote.unit.strip_prefix("eip155:")?.split_once('/')?;
    let (chain, token): (u64, farebox_evm::Address) = (chain.parse().ok()?, token.parse().ok()?);
    if rpc.chain_id() != chain {
        return None;
    }
    let held = rpc.balance_of(token, key.address()).await.ok()?;
    (held < farebox_evm::U256::from(quote.amount)).then(|| {
        format!(
            "the tester's key {} holds {held} base units of {token} on chain {chain}, the payment needs {}: fund it there (the wallet, not the server, is the cause)",
            key.address(),
            quote.amount
        )
    })
}

/// A Lightning wallet's failure to pay the server's invoice: an invoice that is not valid is
/// the server's fault, anything else (no balance, no route, the node down) the wallet's.
pub(crate) fn lightning_payment_failed(what: &str, e: farebox_lightning::LightningError) -> Unable {
    match e {
        farebox_lightning::LightningError::InvalidInvoice(_) => {
            Unable::Fail(format!("paying {what}: {e}"))
        }
        e => Unable::WalletCause(format!(
            "the tester's Lightning wallet could not pay {what} ({e}): the wallet, not the server, may be the cause"
        )),
    }
}
