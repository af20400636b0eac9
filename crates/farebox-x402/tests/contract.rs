//! The rail contract kit (`farebox_server::testing`) against the x402 rail: a real anvil with an
//! EIP-3009 token, the local facilitator reaching it through a proxy the kit can cut off, and
//! payments signed as a client signs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use farebox_core::{Asset, Money, Price, Rail};
use farebox_evm::anvil::{Anvil, NodeSwitch, switchable_proxy};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, Bytes, EvmRpc, U256};
use farebox_server::testing::{Exchange, RailHarness, assert_rail_contract, proof};
use farebox_store::MemoryStore;
use farebox_x402::exact_evm::{Authorization, ExactEvmPayload};
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::{Payload, X402Config, X402Rail, codec, v2};
use http::{HeaderName, HeaderValue};

const CHAIN_ID: u64 = 84_532;
const PRICE: u64 = 10_000; // 0.01 USDC

struct X402Harness {
    anvil: Anvil,
    rail: Arc<X402Rail>,
    domain: TokenDomain,
    pay_to: Address,
    token: Address,
    node: NodeSwitch,
    /// Payments so far: each is paid by the next of [`PAYERS`].
    paid: AtomicUsize,
}

/// The anvil accounts that pay, one payment each in turn. A settlement cut off mid-send stays
/// pending (the transfer may have left) and holds its payer's funds until it is reconciled, so
/// one payer would be refused in the next clause.
const PAYERS: [usize; 7] = [1, 4, 5, 6, 7, 8, 9];

#[async_trait]
impl RailHarness for X402Harness {
    fn rail(&self) -> Arc<dyn Rail> {
        self.rail.clone()
    }

    fn price(&self) -> Price {
        Price::one(Money::new(Asset::Token(config(self.token, self.pay_to).token()), PRICE.into()))
    }

    /// Signs an EIP-3009 authorization of the price to `payTo` and echoes the requirement.
    async fn pay(
        &self,
        _url: &str,
        required: &Exchange,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let header = required.headers.get("payment-required").ok_or("no PAYMENT-REQUIRED")?;
        let required: v2::PaymentRequired =
            codec::decode_header(header.to_str().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let accepted = required.accepts.first().ok_or("no requirement")?.clone();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let turn = self.paid.fetch_add(1, Ordering::SeqCst) % PAYERS.len();
        let payer = &self.anvil.accounts()[PAYERS[turn]];
        let auth = TransferWithAuthorization {
            from: payer.address,
            to: self.pay_to,
            value: U256::from(PRICE),
            validAfter: U256::from(now - 600),
            validBefore: U256::from(now + 60),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        };
        let signature = eip3009::sign(&payer.signer, &self.domain, &auth);
        let signed = ExactEvmPayload {
            signature: Bytes::copy_from_slice(&signature),
            authorization: Authorization {
                from: auth.from,
                to: auth.to,
                value: auth.value,
                valid_after: now - 600,
                valid_before: now + 60,
                nonce: auth.nonce,
            },
        };
        let payment = v2::PaymentPayload {
            x402_version: farebox_x402::Version,
            resource: Some(required.resource.clone()),
            accepted,
            payload: Payload::from_serialize(&signed).map_err(|e| e.to_string())?,
            extensions: None,
        };
        proof(HeaderName::from_static("payment-signature"), &codec::encode_header(&payment))
    }

    /// The facilitator sends the transfer: settling needs the chain.
    fn settles_on_backend(&self) -> bool {
        true
    }

    async fn set_backend(&self, up: bool) {
        self.node.set_up(up);
    }
}

fn config(token: Address, pay_to: Address) -> X402Config {
    X402Config::builder()
        .network(format!("eip155:{CHAIN_ID}"))
        .asset(token.to_checksum(None))
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(pay_to.to_checksum(None))
        .max_timeout_seconds(60)
        .public_url("https://api.example.com")
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_x402_rail_keeps_the_rail_contract() {
    let anvil =
        Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (run `cargo xtask setup`)");
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    for payer in PAYERS {
        let payer = anvil.accounts()[payer].address;
        anvil.mint(token, payer, U256::from(1_000_000_000u64)).await.unwrap();
    }
    let (url, node) = switchable_proxy(anvil.url()).await.unwrap();
    let rpc = EvmRpc::connect(&url).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let gas = anvil.accounts()[3].signer.clone();
    let facilitator =
        Arc::new(LocalFacilitator::new(vec![ChainAccess { rpc, signer: gas }], store.clone()));
    let pay_to = anvil.accounts()[2].address;
    let rail = Arc::new(X402Rail::new(config(token, pay_to), facilitator, store));
    let domain = TokenDomain::new("USDC", "2", CHAIN_ID, token);
    let payee = anvil.rpc().await.unwrap().clone();
    let paid = AtomicUsize::new(0);
    let harness = Arc::new(X402Harness { anvil, rail, domain, pay_to, token, node, paid });
    assert_rail_contract(harness.clone()).await;
    // Paid and served: the first proof of `accepts_a_proof_once`, the winner of its race, the
    // retry after a failed handler and the proof honoured after the outage. The settlement cut
    // off never reached the chain; nothing else moved.
    let received = payee.balance_of(token, pay_to).await.unwrap();
    assert_eq!(received, U256::from(4 * PRICE), "what payTo holds on chain");
}
