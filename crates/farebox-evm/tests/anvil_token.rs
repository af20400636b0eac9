//! FareboxUSD on a real anvil: the EIP-3009 flow a facilitator runs (sign → simulate → send →
//! receipt) and FiatToken's failure modes, each test on its own anvil.

use std::time::Duration;

use farebox_evm::anvil::Anvil;
use farebox_evm::contracts::{FareboxUSD, TransferWithAuthorizationBytesCall};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, EvmError, EvmRpc, ReceiptOutcome, U256};

const CHAIN_ID: u64 = 84_532;
const FUNDS: u64 = 1_000_000_000; // 1,000 USDC
const PRICE: u64 = 10_000; // 0.01 USDC

struct Fixture {
    anvil: Anvil,
    token: Address,
    domain: TokenDomain,
}

impl Fixture {
    async fn new() -> Self {
        let anvil =
            Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (run `cargo xtask setup`)");
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
        let domain = TokenDomain::new("USDC", "2", CHAIN_ID, token);
        Self { anvil, token, domain }
    }

    async fn rpc(&self) -> &EvmRpc {
        self.anvil.rpc().await.unwrap()
    }

    fn payer(&self) -> &farebox_evm::anvil::DevAccount {
        &self.anvil.accounts()[1]
    }

    fn payee(&self) -> Address {
        self.anvil.accounts()[2].address
    }

    fn facilitator(&self) -> &farebox_evm::anvil::DevAccount {
        &self.anvil.accounts()[5]
    }

    /// An authorization of PRICE from the payer to the payee, valid from 10 minutes ago for an hour.
    async fn auth(&self, nonce: u8) -> TransferWithAuthorization {
        let now = self.rpc().await.block_timestamp().await.unwrap();
        TransferWithAuthorization {
            from: self.payer().address,
            to: self.payee(),
            value: U256::from(PRICE),
            validAfter: U256::from(now - 600),
            validBefore: U256::from(now + 3600),
            nonce: B256::repeat_byte(nonce),
        }
    }

    fn sign(&self, auth: &TransferWithAuthorization) -> [u8; 65] {
        eip3009::sign(&self.payer().signer, &self.domain, auth)
    }

    async fn simulate(&self, auth: &TransferWithAuthorization, sig: &[u8]) -> Result<(), EvmError> {
        self.rpc()
            .await
            .simulate_transfer_with_authorization(self.token, auth, sig, self.facilitator().address)
            .await
    }
}

fn reverted(result: Result<(), EvmError>) -> String {
    match result {
        Err(EvmError::Reverted { reason }) => reason,
        other => panic!("expected a revert, got {other:?}"),
    }
}

#[tokio::test]
async fn token_reports_its_domain() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    assert_eq!(rpc.chain_id(), CHAIN_ID);
    assert_eq!(rpc.token_name(f.token).await.unwrap(), "USDC");
    assert_eq!(rpc.token_version(f.token).await.unwrap(), "2");
    let on_chain = rpc.call(f.token, &FareboxUSD::DOMAIN_SEPARATORCall {}, None).await.unwrap();
    assert_eq!(on_chain, f.domain.separator());
    let accounts: Vec<Address> = rpc.request("eth_accounts", ()).await.unwrap();
    let ours: Vec<Address> = f.anvil.accounts().iter().map(|a| a.address).collect();
    assert_eq!(accounts, ours);
}

#[tokio::test]
async fn transfer_with_authorization_settles_once() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let auth = f.auth(1).await;
    let sig = f.sign(&auth);
    assert!(!rpc.authorization_state(f.token, auth.from, auth.nonce).await.unwrap());

    f.simulate(&auth, &sig).await.unwrap();
    let tx = rpc
        .send_transfer_with_authorization(&f.facilitator().signer, f.token, &auth, &sig)
        .await
        .unwrap();
    let outcome = rpc.wait_for_receipt(tx, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(outcome, ReceiptOutcome::Success { block } if block > 0), "{outcome:?}");

    assert_eq!(rpc.balance_of(f.token, f.payee()).await.unwrap(), U256::from(PRICE));
    assert_eq!(rpc.balance_of(f.token, auth.from).await.unwrap(), U256::from(FUNDS - PRICE));
    assert_eq!(rpc.balance_of(f.token, f.facilitator().address).await.unwrap(), U256::ZERO);
    assert!(rpc.authorization_state(f.token, auth.from, auth.nonce).await.unwrap());

    // Replays fail, in simulation and when sent (refused at gas estimation, nothing broadcast).
    assert_eq!(
        reverted(f.simulate(&auth, &sig).await),
        "FiatTokenV2: authorization is used or canceled"
    );
    let resend =
        rpc.send_transfer_with_authorization(&f.facilitator().signer, f.token, &auth, &sig).await;
    assert!(
        matches!(&resend, Err(EvmError::Reverted { reason }) if reason == "FiatTokenV2: authorization is used or canceled"),
        "{resend:?}"
    );
}

#[tokio::test]
async fn v_zero_one_signatures_settle() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let auth = f.auth(2).await;
    let mut sig = f.sign(&auth);
    sig[64] -= 27;
    f.simulate(&auth, &sig).await.unwrap();
    let tx = rpc
        .send_transfer_with_authorization(&f.facilitator().signer, f.token, &auth, &sig)
        .await
        .unwrap();
    assert!(matches!(
        rpc.wait_for_receipt(tx, Duration::from_secs(10)).await,
        Ok(ReceiptOutcome::Success { .. })
    ));
}

#[tokio::test]
async fn valid_after_equal_to_block_timestamp_is_not_yet_valid() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let next = rpc.block_timestamp().await.unwrap() + 100;
    let auth = TransferWithAuthorization { validAfter: U256::from(next), ..f.auth(3).await };
    let sig = f.sign(&auth);
    f.anvil.set_next_block_timestamp(next).await.unwrap();
    f.anvil.mine().await.unwrap();
    assert_eq!(rpc.block_timestamp().await.unwrap(), next);
    // eth_call runs on top of the latest block (timestamp == validAfter): strict `>` fails.
    assert_eq!(
        reverted(f.simulate(&auth, &sig).await),
        "FiatTokenV2: authorization is not yet valid"
    );
    // One second later it is valid.
    f.anvil.increase_time(1).await.unwrap();
    f.anvil.mine().await.unwrap();
    f.simulate(&auth, &sig).await.unwrap();
}

#[tokio::test]
async fn expired_authorization_reverts() {
    let f = Fixture::new().await;
    let now = f.rpc().await.block_timestamp().await.unwrap();
    let auth = TransferWithAuthorization { validBefore: U256::from(now), ..f.auth(4).await };
    let sig = f.sign(&auth);
    assert_eq!(reverted(f.simulate(&auth, &sig).await), "FiatTokenV2: authorization is expired");
}

#[tokio::test]
async fn wrong_signer_or_domain_is_an_invalid_signature() {
    let f = Fixture::new().await;
    let auth = f.auth(5).await;
    let by_someone_else = eip3009::sign(&f.anvil.accounts()[3].signer, &f.domain, &auth);
    assert_eq!(
        reverted(f.simulate(&auth, &by_someone_else).await),
        "FiatTokenV2: invalid signature"
    );
    let wrong_domain = TokenDomain::new("USD Coin", "2", CHAIN_ID, f.token);
    let sig = eip3009::sign(&f.payer().signer, &wrong_domain, &auth);
    assert_eq!(reverted(f.simulate(&auth, &sig).await), "FiatTokenV2: invalid signature");
    // A tampered amount no longer matches the signature.
    let sig = f.sign(&auth);
    let tampered = TransferWithAuthorization { value: U256::from(PRICE + 1), ..auth };
    assert_eq!(reverted(f.simulate(&tampered, &sig).await), "FiatTokenV2: invalid signature");
}

#[tokio::test]
async fn bytes_signature_overload_settles() {
    let f = Fixture::new().await;
    let rpc = f.rpc().await;
    let auth = f.auth(6).await;
    let sig = f.sign(&auth);
    let call = TransferWithAuthorizationBytesCall {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        validAfter: auth.validAfter,
        validBefore: auth.validBefore,
        nonce: auth.nonce,
        signature: sig.to_vec().into(),
    };
    rpc.call(f.token, &call, Some(f.facilitator().address)).await.unwrap();
    let tx = rpc.send_call(&f.facilitator().signer, f.token, &call).await.unwrap();
    assert!(matches!(
        rpc.wait_for_receipt(tx, Duration::from_secs(10)).await,
        Ok(ReceiptOutcome::Success { .. })
    ));
    assert_eq!(rpc.balance_of(f.token, f.payee()).await.unwrap(), U256::from(PRICE));

    // FiatToken's ECRecover rules apply to the bytes form: v must be 27 / 28 on chain.
    let auth = f.auth(7).await;
    let mut sig = f.sign(&auth).to_vec();
    sig[64] -= 27;
    let call =
        TransferWithAuthorizationBytesCall { nonce: auth.nonce, signature: sig.into(), ..call };
    let result = rpc.call(f.token, &call, None).await.map(|_| ());
    assert_eq!(reverted(result), "ECRecover: invalid signature 'v' value");
}

#[tokio::test]
async fn insufficient_balance_reverts() {
    let f = Fixture::new().await;
    let auth = TransferWithAuthorization { value: U256::from(FUNDS + 1), ..f.auth(8).await };
    let sig = f.sign(&auth);
    assert_eq!(reverted(f.simulate(&auth, &sig).await), "ERC20: transfer amount exceeds balance");
}

#[tokio::test]
async fn receive_with_authorization_requires_the_payee() {
    let f = Fixture::new().await;
    let auth = f.auth(9).await;
    let sig = eip3009::sign(&f.payer().signer, &f.domain, &auth);
    let (v, r, s) = eip3009::to_vrs(&sig).unwrap();
    let call = FareboxUSD::receiveWithAuthorization_1Call {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        validAfter: auth.validAfter,
        validBefore: auth.validBefore,
        nonce: auth.nonce,
        v,
        r,
        s,
    };
    let as_facilitator =
        f.rpc().await.call(f.token, &call, Some(f.facilitator().address)).await.map(|_| ());
    assert_eq!(reverted(as_facilitator), "FiatTokenV2: caller must be the payee");
}

#[tokio::test]
async fn only_the_deployer_mints() {
    let f = Fixture::new().await;
    let call = FareboxUSD::mintCall { to: f.payee(), amount: U256::from(1u8) };
    let result = f.rpc().await.call(f.token, &call, Some(f.payer().address)).await.map(|_| ());
    assert_eq!(reverted(result), "FareboxUSD: caller is not the minter");
}

#[tokio::test]
async fn stopped_node_is_unavailable() {
    let mut anvil = Anvil::start().unwrap();
    let rpc = EvmRpc::connect_with_timeout(anvil.url(), Duration::from_secs(2)).await.unwrap();
    assert_eq!(rpc.chain_id(), 31_337);
    anvil.stop();
    let err = rpc.block_timestamp().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = rpc.balance_of(Address::ZERO, Address::ZERO).await.unwrap_err();
    assert!(matches!(err, EvmError::Unavailable(_)), "{err:?}");
    // Waiting for a receipt from a node that is gone is "unknown", not an error.
    let outcome =
        rpc.wait_for_receipt(B256::repeat_byte(1), Duration::from_millis(300)).await.unwrap();
    assert_eq!(outcome, ReceiptOutcome::Unknown);
}

#[tokio::test]
async fn unreachable_url_is_unavailable() {
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err =
        EvmRpc::connect_with_timeout(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(matches!(EvmRpc::connect("not a url").await, Err(EvmError::InvalidUrl { .. })));
    assert!(matches!(EvmRpc::connect("ftp://127.0.0.1/").await, Err(EvmError::InvalidUrl { .. })));
}

#[tokio::test]
async fn receipt_timeout_is_unknown() {
    let f = Fixture::new().await;
    let outcome = f
        .rpc()
        .await
        .wait_for_receipt(B256::repeat_byte(0xee), Duration::from_millis(250))
        .await
        .unwrap();
    assert_eq!(outcome, ReceiptOutcome::Unknown);
}
