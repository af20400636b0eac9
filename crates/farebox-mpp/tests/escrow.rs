//! SessionEscrow on a real anvil: open, vouchers, cooperative close, caps, top-up, forced close
//! with a grace period, each test on its own anvil.

use farebox_evm::anvil::{Anvil, DevAccount};
use farebox_evm::{Address, B256, EvmError, EvmRpc, TxHash, U256};
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::evm::escrow::{self, DEFAULT_CLOSE_GRACE_PERIOD};
use farebox_mpp::evm::voucher::{self, Voucher, VoucherDomain};

const CHAIN_ID: u64 = 84_532;
const USDC: u128 = 1_000_000;
const FUNDS: u128 = 1_000 * USDC;

struct Fixture {
    anvil: Anvil,
    token: Address,
    escrow: Address,
    domain: VoucherDomain,
    salts: std::sync::atomic::AtomicU8,
}

impl Fixture {
    async fn new() -> Self {
        let anvil =
            Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (run `cargo xtask setup`)");
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
        let rpc = anvil.rpc().await.unwrap();
        let escrow = rpc
            .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
            .await
            .unwrap();
        let domain = rpc.voucher_domain(escrow);
        Self { anvil, token, escrow, domain, salts: Default::default() }
    }

    async fn rpc(&self) -> &EvmRpc {
        self.anvil.rpc().await.unwrap()
    }

    fn payer(&self) -> &DevAccount {
        &self.anvil.accounts()[1]
    }

    fn payee(&self) -> &DevAccount {
        &self.anvil.accounts()[2]
    }

    fn stranger(&self) -> &DevAccount {
        &self.anvil.accounts()[3]
    }

    async fn balance(&self, who: Address) -> u128 {
        self.rpc().await.balance_of(self.token, who).await.unwrap().to::<u128>()
    }

    /// Approves and opens a channel from the payer to the payee with `deposit` and a fresh salt.
    async fn open(&self, deposit: u128, authorized_signer: Option<Address>) -> B256 {
        let salt = B256::repeat_byte(self.salts.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        self.open_with_salt(deposit, salt, authorized_signer).await.unwrap().1
    }

    async fn open_with_salt(
        &self,
        deposit: u128,
        salt: B256,
        authorized_signer: Option<Address>,
    ) -> Result<(TxHash, B256), EvmError> {
        let rpc = self.rpc().await;
        rpc.erc20_approve(&self.payer().signer, self.token, self.escrow, deposit).await.unwrap();
        rpc.escrow_open(
            &self.payer().signer,
            self.escrow,
            self.payee().address,
            self.token,
            deposit,
            salt,
            authorized_signer,
        )
        .await
    }

    async fn top_up(&self, channel: B256, amount: u128) {
        let rpc = self.rpc().await;
        rpc.erc20_approve(&self.payer().signer, self.token, self.escrow, amount).await.unwrap();
        rpc.escrow_top_up(&self.payer().signer, self.escrow, channel, amount).await.unwrap();
    }

    fn voucher(&self, signer: &DevAccount, channel: B256, cumulative: u128) -> [u8; 65] {
        let v = Voucher { channelId: channel, cumulativeAmount: cumulative };
        voucher::sign(&signer.signer, &self.domain, &v)
    }

    async fn close(&self, channel: B256, cumulative: u128, sig: &[u8]) -> Result<TxHash, EvmError> {
        let rpc = self.rpc().await;
        rpc.escrow_close(&self.payee().signer, self.escrow, channel, cumulative, sig).await
    }
}

fn reverted<T: std::fmt::Debug>(result: Result<T, EvmError>) -> String {
    match result {
        Err(EvmError::Reverted { reason }) => reason,
        other => panic!("expected a revert, got {other:?}"),
    }
}

#[tokio::test]
async fn voucher_digest_and_channel_id_agree_with_the_contract() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;
    for amount in [0, 1, 300_000, u128::MAX] {
        let v = Voucher { channelId: channel, cumulativeAmount: amount };
        assert_eq!(
            rpc.escrow_voucher_digest(f.escrow, channel, amount).await.unwrap(),
            f.domain.signing_hash(&v)
        );
    }
    // channelId = keccak256(abi.encode(payer, payee, token, salt, signer, escrow, chainId)),
    // known to the payer before it opens; the open's receipt names it too.
    let salt = B256::repeat_byte(0xaa);
    let hot = f.stranger().address;
    let expected = escrow::channel_id(
        f.payer().address,
        f.payee().address,
        f.token,
        salt,
        Some(hot),
        f.escrow,
        CHAIN_ID,
    );
    let mut enc = Vec::new();
    for word in [
        f.payer().address.into_word(),
        f.payee().address.into_word(),
        f.token.into_word(),
        salt,
        hot.into_word(),
        f.escrow.into_word(),
    ] {
        enc.extend_from_slice(word.as_slice());
    }
    enc.extend_from_slice(&U256::from(CHAIN_ID).to_be_bytes::<32>());
    assert_eq!(expected, alloy::primitives::keccak256(&enc));
    let computed = rpc
        .call(
            f.escrow,
            &farebox_evm::contracts::SessionEscrow::computeChannelIdCall {
                payer: f.payer().address,
                payee: f.payee().address,
                token: f.token,
                salt,
                authorizedSigner: hot,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(computed, expected);
    let (tx, opened) = f.open_with_salt(USDC, salt, Some(hot)).await.unwrap();
    assert_eq!(opened, expected);
    let event = rpc.escrow_opened_by(f.escrow, tx).await.unwrap().expect("mined");
    assert_eq!((event.channelId, event.salt, event.deposit), (expected, salt, USDC));
    // An id is used once: the same salt again reverts, a new salt gives a new id.
    let reason = reverted(f.open_with_salt(USDC, salt, Some(hot)).await);
    assert!(reason.contains("SessionEscrow: channel already exists"), "{reason}");
    assert_ne!(f.open(USDC, None).await, channel);
}

#[tokio::test]
async fn cooperative_close_pays_the_voucher_and_refunds_the_rest() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;
    assert_eq!(f.balance(f.payer().address).await, FUNDS - USDC);
    assert_eq!(f.balance(f.escrow).await, USDC);
    let state = rpc.escrow_channel(f.escrow, channel).await.unwrap();
    assert_eq!(state.payer, f.payer().address);
    assert_eq!(state.payee, f.payee().address);
    assert_eq!(state.token, f.token);
    assert_eq!(state.authorizedSigner, Address::ZERO);
    assert_eq!((state.deposit, state.settled, state.closeRequestedAt), (USDC, 0, 0));
    assert!(!state.finalized);

    let payee_before = f.balance(f.payee().address).await;
    let sig = f.voucher(f.payer(), channel, 300_000);
    f.close(channel, 300_000, &sig).await.unwrap();
    assert_eq!(f.balance(f.payee().address).await, payee_before + 300_000);
    assert_eq!(f.balance(f.payer().address).await, FUNDS - 300_000);
    assert_eq!(f.balance(f.escrow).await, 0);
    let state = rpc.escrow_channel(f.escrow, channel).await.unwrap();
    assert!(state.finalized);
    assert_eq!(state.settled, 300_000);

    // Closing twice reverts.
    let reason = reverted(f.close(channel, 300_000, &sig).await);
    assert!(reason.contains("SessionEscrow: channel is finalized"), "{reason}");
}

#[tokio::test]
async fn bad_vouchers_and_callers_revert() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;

    let forged = f.voucher(f.stranger(), channel, 300_000);
    let reason = reverted(f.close(channel, 300_000, &forged).await);
    assert!(reason.contains("SessionEscrow: invalid voucher signer"), "{reason}");

    // A voucher for another amount than the one signed recovers another address.
    let sig = f.voucher(f.payer(), channel, 300_000);
    let reason = reverted(f.close(channel, 400_000, &sig).await);
    assert!(reason.contains("SessionEscrow: invalid voucher signer"), "{reason}");

    // The malleable twin of a valid signature (high s) is refused.
    let n = U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .unwrap();
    let mut high = sig;
    high[32..64].copy_from_slice(&(n - U256::from_be_slice(&sig[32..64])).to_be_bytes::<32>());
    high[64] = if sig[64] == 27 { 28 } else { 27 };
    let reason = reverted(f.close(channel, 300_000, &high).await);
    assert!(reason.contains("invalid signature 's' value"), "{reason}");

    // v in {0, 1} is refused on chain (callers normalize to 27 / 28).
    let mut low_v = sig;
    low_v[64] -= 27;
    let reason = reverted(f.close(channel, 300_000, &low_v).await);
    assert!(reason.contains("invalid signature 'v' value"), "{reason}");

    // Only the payee closes.
    let reason =
        reverted(rpc.escrow_close(&f.payer().signer, f.escrow, channel, 300_000, &sig).await);
    assert!(reason.contains("SessionEscrow: caller is not the payee"), "{reason}");

    // Unknown channel.
    let reason = reverted(f.close(B256::repeat_byte(9), 300_000, &sig).await);
    assert!(reason.contains("SessionEscrow: unknown channel"), "{reason}");

    // Nothing moved.
    assert_eq!(f.balance(f.escrow).await, USDC);
}

#[tokio::test]
async fn payouts_are_capped_at_the_deposit_and_top_up_raises_the_cap() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;
    let payee_before = f.balance(f.payee().address).await;

    // A voucher above the deposit settles at most the deposit.
    let sig = f.voucher(f.payer(), channel, 1_500_000);
    rpc.escrow_settle(&f.payee().signer, f.escrow, channel, 1_500_000, &sig).await.unwrap();
    assert_eq!(f.balance(f.payee().address).await, payee_before + USDC);
    let state = rpc.escrow_channel(f.escrow, channel).await.unwrap();
    assert_eq!((state.deposit, state.settled, state.finalized), (USDC, USDC, false));

    // A top-up raises the cap: the same voucher now closes for the remaining 0.5.
    f.top_up(channel, USDC).await;
    assert_eq!(rpc.escrow_channel(f.escrow, channel).await.unwrap().deposit, 2 * USDC);
    f.close(channel, 1_500_000, &sig).await.unwrap();
    assert_eq!(f.balance(f.payee().address).await, payee_before + 1_500_000);
    assert_eq!(f.balance(f.payer().address).await, FUNDS - 1_500_000);
    assert_eq!(f.balance(f.escrow).await, 0);
}

#[tokio::test]
async fn a_voucher_above_the_deposit_closes_for_the_deposit() {
    let f = Fixture::new().await;
    let channel = f.open(USDC, None).await;
    let payee_before = f.balance(f.payee().address).await;
    let sig = f.voucher(f.payer(), channel, 5 * USDC);
    f.close(channel, 5 * USDC, &sig).await.unwrap();
    assert_eq!(f.balance(f.payee().address).await, payee_before + USDC);
    assert_eq!(f.balance(f.payer().address).await, FUNDS - USDC);
    assert_eq!(f.balance(f.escrow).await, 0);
}

#[tokio::test]
async fn forced_close_refunds_the_payer_after_the_grace_period() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;
    let payer = &f.payer().signer;

    rpc.escrow_request_close(payer, f.escrow, channel).await.unwrap();
    let requested_at = rpc.escrow_channel(f.escrow, channel).await.unwrap().closeRequestedAt;
    assert_ne!(requested_at, 0);
    let reason = reverted(rpc.escrow_request_close(payer, f.escrow, channel).await);
    assert!(reason.contains("SessionEscrow: close already requested"), "{reason}");
    let reason = reverted(rpc.escrow_withdraw(payer, f.escrow, channel).await);
    assert!(reason.contains("SessionEscrow: grace period not over"), "{reason}");

    f.anvil.increase_time(DEFAULT_CLOSE_GRACE_PERIOD + 1).await.unwrap();
    f.anvil.mine().await.unwrap();
    rpc.escrow_withdraw(payer, f.escrow, channel).await.unwrap();
    assert_eq!(f.balance(f.payer().address).await, FUNDS);
    assert_eq!(f.balance(f.escrow).await, 0);
    assert!(rpc.escrow_channel(f.escrow, channel).await.unwrap().finalized);

    // Too late for the payee, and no second withdrawal.
    let sig = f.voucher(f.payer(), channel, 300_000);
    let reason = reverted(f.close(channel, 300_000, &sig).await);
    assert!(reason.contains("SessionEscrow: channel is finalized"), "{reason}");
    let reason = reverted(rpc.escrow_withdraw(payer, f.escrow, channel).await);
    assert!(reason.contains("SessionEscrow: channel is finalized"), "{reason}");
}

#[tokio::test]
async fn payee_can_close_during_the_grace_period_and_top_up_cancels_it() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let payer = &f.payer().signer;

    // A top-up cancels a pending close request.
    let channel = f.open(USDC, None).await;
    rpc.escrow_request_close(payer, f.escrow, channel).await.unwrap();
    f.top_up(channel, USDC).await;
    assert_eq!(rpc.escrow_channel(f.escrow, channel).await.unwrap().closeRequestedAt, 0);
    let reason = reverted(rpc.escrow_withdraw(payer, f.escrow, channel).await);
    assert!(reason.contains("SessionEscrow: close not requested"), "{reason}");

    // During the grace period the payee still closes with the latest voucher.
    rpc.escrow_request_close(payer, f.escrow, channel).await.unwrap();
    f.anvil.increase_time(DEFAULT_CLOSE_GRACE_PERIOD / 2).await.unwrap();
    let payee_before = f.balance(f.payee().address).await;
    let sig = f.voucher(f.payer(), channel, 300_000);
    f.close(channel, 300_000, &sig).await.unwrap();
    assert_eq!(f.balance(f.payee().address).await, payee_before + 300_000);
    assert_eq!(f.balance(f.payer().address).await, FUNDS - 300_000);
}

#[tokio::test]
async fn an_authorized_signer_signs_instead_of_the_payer() {
    let f = Fixture::new().await;
    let hot_key = &f.anvil.accounts()[4];
    let channel = f.open(USDC, Some(hot_key.address)).await;
    let state = f.rpc().await.escrow_channel(f.escrow, channel).await.unwrap();
    assert_eq!(state.authorizedSigner, hot_key.address);

    // The expected signer comes from chain state: with a delegate set, it is the delegate.
    let by_payer = f.voucher(f.payer(), channel, 300_000);
    let reason = reverted(f.close(channel, 300_000, &by_payer).await);
    assert!(reason.contains("SessionEscrow: invalid voucher signer"), "{reason}");

    let by_delegate = f.voucher(hot_key, channel, 300_000);
    let digest = f.domain.signing_hash(&Voucher { channelId: channel, cumulativeAmount: 300_000 });
    assert_eq!(voucher::recover(&digest, &by_delegate), Ok(hot_key.address));
    f.close(channel, 300_000, &by_delegate).await.unwrap();
    assert_eq!(f.balance(f.payer().address).await, FUNDS - 300_000);
}

#[tokio::test]
async fn close_with_capture_pays_what_was_earned_and_refunds_the_rest() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;
    let payee_before = f.balance(f.payee().address).await;
    // Authorized 0.6, earned 0.25: the payee captures 0.25, the payer gets 0.75 back.
    let sig = f.voucher(f.payer(), channel, 600_000);
    let payee = &f.payee().signer;
    let reason = reverted(
        rpc.escrow_close_with_capture(payee, f.escrow, channel, 600_000, 700_000, &sig).await,
    );
    assert!(reason.contains("SessionEscrow: capture above the voucher"), "{reason}");
    let forged = f.voucher(f.stranger(), channel, 600_000);
    let reason = reverted(
        rpc.escrow_close_with_capture(payee, f.escrow, channel, 600_000, 250_000, &forged).await,
    );
    assert!(reason.contains("SessionEscrow: invalid voucher signer"), "{reason}");
    rpc.escrow_close_with_capture(payee, f.escrow, channel, 600_000, 250_000, &sig).await.unwrap();
    assert_eq!(f.balance(f.payee().address).await, payee_before + 250_000);
    assert_eq!(f.balance(f.payer().address).await, FUNDS - 250_000);
    assert_eq!(f.balance(f.escrow).await, 0);
    let state = rpc.escrow_channel(f.escrow, channel).await.unwrap();
    assert_eq!((state.settled, state.finalized), (250_000, true));
}

#[tokio::test]
async fn a_capture_below_what_was_settled_reverts() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let channel = f.open(USDC, None).await;
    let sig = f.voucher(f.payer(), channel, 400_000);
    rpc.escrow_settle(&f.payee().signer, f.escrow, channel, 400_000, &sig).await.unwrap();
    let reason = reverted(
        rpc.escrow_close_with_capture(&f.payee().signer, f.escrow, channel, 400_000, 100_000, &sig)
            .await,
    );
    assert!(reason.contains("SessionEscrow: voucher below settled amount"), "{reason}");
    assert_eq!(rpc.escrow_close_grace_period(f.escrow).await.unwrap(), DEFAULT_CLOSE_GRACE_PERIOD);
}

#[tokio::test]
async fn a_payee_finds_close_requests_in_a_block_range() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let payer = &f.payer().signer;
    let (a, b) = (f.open(USDC, None).await, f.open(USDC, None).await);
    let before = rpc.block_number().await.unwrap();
    rpc.escrow_request_close(payer, f.escrow, b).await.unwrap();
    f.top_up(b, USDC).await; // cancels it; the event stays in its block
    rpc.escrow_request_close(payer, f.escrow, b).await.unwrap();
    rpc.escrow_request_close(payer, f.escrow, a).await.unwrap();
    let head = rpc.block_number().await.unwrap();
    let found = rpc.escrow_close_requests(f.escrow, before + 1, head).await.unwrap();
    assert_eq!(found, [b, b, a]);
    assert!(rpc.escrow_close_requests(f.escrow, 0, before).await.unwrap().is_empty());
    // Another escrow's events are not this one's.
    let other = rpc
        .deploy_session_escrow(&f.anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
        .await
        .unwrap();
    assert!(rpc.escrow_close_requests(other, 0, head).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_age_of_a_transaction_is_measured_in_chain_time() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let (tx, _) = f.open_with_salt(USDC, B256::repeat_byte(0x77), None).await.unwrap();
    assert!(rpc.escrow_tx_age(tx).await.unwrap().unwrap() < 5);
    f.anvil.increase_time(3_600).await.unwrap();
    f.anvil.mine().await.unwrap();
    let age = rpc.escrow_tx_age(tx).await.unwrap().unwrap();
    assert!((3_600..3_610).contains(&age), "{age}");
    assert_eq!(rpc.escrow_tx_age(B256::repeat_byte(1)).await.unwrap(), None);
}
