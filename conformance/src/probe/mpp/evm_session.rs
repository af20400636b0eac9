//! The MPP probe's own payment session (`method="evm"`, `intent="session"`): the runner opens a
//! channel of its own from the funded key, then walks it through what a server must refuse and
//! what it must honour, and closes it, checking on chain that the part not served came back.
//!
//! The steps, in the order the check file runs them, with `p` the route's price:
//!
//! | step | voucher (cumulative) | a conforming server |
//! |---|---|---|
//! | open, deposit `2p` | `p` | serves |
//! | voucher | `2p` | serves |
//! | equal voucher | `2p` | refuses: nothing new is authorized, nothing is left unspent |
//! | lower voucher | `p` | refuses |
//! | above the deposit | `3p` | refuses |
//! | another channel | `p`, for a channel never opened | refuses |
//! | top-up of `2p` | | accepts |
//! | voucher | `3p`, beyond the first deposit | serves |
//! | close | `3p` | closes; the payer gets back deposit minus what was served |
//! | voucher on the closed channel | `4p` | refuses |
//!
//! Each voucher is written from what the server served so far, not from what the runner
//! meant to happen, so that one step's failure does not make the next one's verdict wrong;
//! the refund is checked against what the runner saw served (every 2xx answer to a session
//! step), never against the server's receipt.

use std::time::Duration;

use farebox_evm::{Address, B256, EvmRpc, PrivateKeySigner, U256};
use farebox_mpp::evm::session::{
    self as evm_session, EvmSessionRequest, OpenPayload, SessionPayload, SignedVoucher,
    TopUpPayload,
};
use farebox_mpp::evm::voucher::{self, Voucher, VoucherDomain};
use farebox_mpp::{Challenge, Credential as MppCredential, evm::charge as evm_charge};

use super::{authorization, challenges};
use crate::Exchange;
use crate::probe::builtin::{Attempt, Wallets};
use crate::probe::{Credential, Quote, Unable};
use farebox_mpp::evm::escrow::EscrowRpc;

/// How many requests' worth the channel is opened with, and topped up by.
const DEPOSIT_REQUESTS: u128 = 2;
/// How long the runner waits for the close to show on its node.
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// The session the runner opened.
#[derive(Debug, Clone)]
pub(super) struct Session {
    escrow: Address,
    token: Address,
    chain_id: u64,
    channel: B256,
    price: u128,
    /// Deposited so far (the open and the top-up).
    deposit: u128,
    /// The highest voucher the server served a request for.
    accepted: u128,
    /// The voucher the last step meant to be served (open, voucher) was sent with.
    pending: u128,
    /// Session steps the server served (2xx), each at the price.
    served: u128,
    /// The payer's token balance just before the close was sent.
    balance_before_close: Option<U256>,
    /// The voucher the close was sent with.
    closed_with: u128,
}

/// The `evm` session challenge of `exchange`, if the server offers one.
pub(super) fn challenge(exchange: &Exchange) -> Option<Challenge> {
    challenges(exchange)
        .into_iter()
        .find(|c| c.method == evm_session::METHOD && c.intent == evm_session::INTENT)
}

fn request_of(c: &Challenge) -> Result<EvmSessionRequest, Unable> {
    EvmSessionRequest::from_json(&c.request)
        .map_err(|e| Unable::Fail(format!("the evm session request: {e}")))
}

fn price_of(request: &EvmSessionRequest) -> Result<u128, Unable> {
    u128::try_from(request.amount)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Unable::Fail(format!("the session price {} is not payable", request.amount)))
}

/// What `send` deposits: two requests' worth for the open and for the top-up.
pub(super) fn quote(send: Attempt, discovery: &Exchange, wallets: &Wallets) -> Option<Quote> {
    let c = challenge(discovery)?;
    wallets.evm.as_ref()?;
    let request = EvmSessionRequest::from_json(&c.request).ok()?;
    let price = u128::try_from(request.amount).ok()?;
    matches!(send, Attempt::SessionOpen | Attempt::SessionTopUp).then(|| {
        Quote::token(
            "",
            U256::from(price.saturating_mul(DEPOSIT_REQUESTS)),
            request.chain_id,
            request.currency,
        )
    })
}

/// The key and the node a session needs, on the challenge's chain.
fn chain_access<'w>(
    wallets: &'w Wallets,
    request: &EvmSessionRequest,
) -> Result<(&'w PrivateKeySigner, &'w EvmRpc), Unable> {
    let (Some(key), Some(rpc)) = (&wallets.evm, &wallets.evm_rpc) else {
        return Err(Unable::NotRun(
            "a session opens its own channel: give --wallet evm=env (a funded key) and --wallet evm-rpc=env (a node of the server's chain)".into(),
        ));
    };
    if rpc.chain_id() != request.chain_id {
        return Err(Unable::NotRun(format!(
            "the node given is on chain {}, the server's session on chain {}",
            rpc.chain_id(),
            request.chain_id
        )));
    }
    Ok((key, rpc))
}

fn signed(key: &PrivateKeySigner, s: &Session, channel: B256, amount: u128) -> SignedVoucher {
    let domain = VoucherDomain::new(s.chain_id, s.escrow);
    let v = Voucher { channelId: channel, cumulativeAmount: amount };
    SignedVoucher {
        channel_id: channel,
        cumulative_amount: amount,
        signature: voucher::sign(key, &domain, &v).to_vec(),
    }
}

fn credential(
    c: &Challenge,
    chain_id: u64,
    key: &PrivateKeySigner,
    payload: &SessionPayload,
) -> Result<Credential, Unable> {
    let mut credential = MppCredential::new(c, payload.to_json());
    credential.source = Some(evm_charge::source(chain_id, key.address()));
    authorization(&credential)
}

/// A transaction of the tester's that failed: the tester's key or node, not the server, is
/// the cause (too little of the token, a node that is down).
fn chain_failure(what: &str, e: impl std::fmt::Display) -> Unable {
    Unable::WalletCause(format!("{what} failed on the tester's node: {e}"))
}

/// Opens a channel of `2p` on chain and pays the first request with a voucher for `p`.
pub(super) async fn open(
    c: &Challenge,
    wallets: &Wallets,
) -> Result<(Session, Credential), Unable> {
    let request = request_of(c)?;
    let price = price_of(&request)?;
    let (key, rpc) = chain_access(wallets, &request)?;
    let deposit = price.saturating_mul(DEPOSIT_REQUESTS);
    Quote::token("", U256::from(deposit), request.chain_id, request.currency)
        .allowed(&wallets.max_price)?;
    if !request.credential_types.is_empty()
        && !request.credential_types.iter().any(|t| t == evm_session::CREDENTIAL_HASH)
    {
        return Err(Unable::Skip(format!(
            "the session takes credential types {:?}; the suite sends its own transactions (hash)",
            request.credential_types
        )));
    }
    rpc.erc20_approve(key, request.currency, request.escrow, deposit)
        .await
        .map_err(|e| chain_failure("approving the deposit", e))?;
    let salt = B256::from(rand::random::<[u8; 32]>());
    let (tx, channel) = rpc
        .escrow_open(key, request.escrow, request.recipient, request.currency, deposit, salt, None)
        .await
        .map_err(|e| chain_failure("opening the channel", e))?;
    let session = Session {
        escrow: request.escrow,
        token: request.currency,
        chain_id: request.chain_id,
        channel,
        price,
        deposit,
        accepted: 0,
        pending: price,
        served: 0,
        balance_before_close: None,
        closed_with: 0,
    };
    let payload = SessionPayload::Open(OpenPayload {
        hash: tx,
        salt,
        authorized_signer: None,
        voucher: signed(key, &session, channel, price),
    });
    let credential = credential(c, request.chain_id, key, &payload)?;
    Ok((session, credential))
}

/// The credential of a later step of `session`, answering `c`; updates what was signed,
/// deposited and, for the close, the balance the refund is measured from.
pub(super) async fn step(
    send: Attempt,
    session: &mut Session,
    c: &Challenge,
    wallets: &Wallets,
) -> Result<Credential, Unable> {
    let request = request_of(c)?;
    let (key, rpc) = chain_access(wallets, &request)?;
    if request.escrow != session.escrow || request.chain_id != session.chain_id {
        return Err(Unable::Fail("the session challenge now names another escrow or chain".into()));
    }
    let (s, p) = (session.clone(), session.price);
    let payload = match send {
        Attempt::SessionVoucher => {
            session.pending = s.accepted + p;
            SessionPayload::Voucher(signed(key, &s, s.channel, session.pending))
        }
        Attempt::SessionVoucherEqual => {
            SessionPayload::Voucher(signed(key, &s, s.channel, s.accepted))
        }
        Attempt::SessionVoucherLower => {
            SessionPayload::Voucher(signed(key, &s, s.channel, s.accepted.saturating_sub(p)))
        }
        Attempt::SessionVoucherAboveDeposit => {
            SessionPayload::Voucher(signed(key, &s, s.channel, s.deposit + p))
        }
        Attempt::SessionOtherChannel => {
            let never_opened = B256::from(rand::random::<[u8; 32]>());
            SessionPayload::Voucher(signed(key, &s, never_opened, p))
        }
        Attempt::SessionTopUp => {
            let more = p.saturating_mul(DEPOSIT_REQUESTS);
            Quote::token("", U256::from(more), s.chain_id, s.token).allowed(&wallets.max_price)?;
            rpc.erc20_approve(key, s.token, s.escrow, more)
                .await
                .map_err(|e| chain_failure("approving the top-up", e))?;
            let hash = rpc
                .escrow_top_up(key, s.escrow, s.channel, more)
                .await
                .map_err(|e| chain_failure("topping the channel up", e))?;
            session.deposit += more;
            SessionPayload::TopUp(TopUpPayload {
                channel_id: s.channel,
                hash,
                additional_deposit: more,
            })
        }
        Attempt::SessionClose => {
            let balance = rpc
                .balance_of(s.token, key.address())
                .await
                .map_err(|e| chain_failure("reading the payer's balance", e))?;
            session.balance_before_close = Some(balance);
            session.closed_with = s.accepted;
            SessionPayload::Close(signed(key, &s, s.channel, s.accepted))
        }
        Attempt::SessionClosedChannel => {
            SessionPayload::Voucher(signed(key, &s, s.channel, s.accepted + p))
        }
        other => return Err(Unable::Skip(format!("{other:?} is not a session step"))),
    };
    credential(c, s.chain_id, key, &payload)
}

/// Takes note of what a step got; for the close, waits for it on chain and checks the refund.
pub(super) async fn answered(
    send: Attempt,
    session: &mut Session,
    answers: &[Exchange],
    wallets: &Wallets,
) -> Result<(), String> {
    let served = answers.iter().any(|e| e.status.is_success());
    // Every served request that is not a control message may have been debited at the price.
    let debits = !matches!(send, Attempt::SessionTopUp | Attempt::SessionClose);
    if served && debits {
        session.served += 1;
    }
    if served && matches!(send, Attempt::SessionOpen | Attempt::SessionVoucher) {
        session.accepted = session.accepted.max(session.pending);
    }
    if send != Attempt::SessionClose || !served {
        return Ok(());
    }
    let (Some(key), Some(rpc), Some(before)) =
        (&wallets.evm, &wallets.evm_rpc, session.balance_before_close)
    else {
        return Err("no balance was read before the close".into());
    };
    // The server may take what it served, never more than the close voucher.
    let captured = (session.served * session.price).min(session.closed_with);
    let refund = U256::from(session.deposit - captured);
    let started = std::time::Instant::now();
    loop {
        let channel = rpc
            .escrow_channel(session.escrow, session.channel)
            .await
            .map_err(|e| format!("reading the channel back: {e}"))?;
        let balance = rpc
            .balance_of(session.token, key.address())
            .await
            .map_err(|e| format!("reading the payer's balance: {e}"))?;
        let returned = balance.saturating_sub(before);
        if channel.finalized {
            return if returned == refund {
                Ok(())
            } else {
                Err(format!(
                    "the close returned {returned} to the payer; {} deposited, {} served at {}: {refund} is owed back",
                    session.deposit, session.served, session.price
                ))
            };
        }
        if started.elapsed() > CLOSE_WAIT {
            return Err(format!(
                "the server answered the close, but {}s later the channel is still open on chain",
                CLOSE_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
