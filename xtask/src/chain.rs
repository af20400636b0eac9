//! `cargo xtask chain`: a local EVM chain for the demo and for manual testing.
//!
//! Starts anvil on 127.0.0.1:8545 with chain id 84532 (Base Sepolia, so x402 v1's
//! `base-sepolia` and the `"USDC"` EIP-712 domain line up), deploys FareboxUSD with name `"USDC"`
//! and version `"2"`, mints 1,000 USDC to anvil accounts #1–#3, prints what it did and keeps the
//! chain running until Ctrl-C.

use anyhow::{Context, Result};
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;

use crate::tools;

const PORT: u16 = 8545;
const CHAIN_ID: u64 = 84_532;
/// 1,000 USDC in base units (6 decimals).
const FUNDING: u64 = 1_000_000_000;

pub fn run() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(chain())
}

async fn chain() -> Result<()> {
    let anvil = Anvil::builder()
        .binary(tools::anvil_path())
        .chain_id(CHAIN_ID)
        .port(PORT)
        .start()
        .with_context(|| format!("starting anvil on 127.0.0.1:{PORT} (is the port free?)"))?;
    let token = anvil.deploy_token("USDC", "2").await.context("deploying FareboxUSD")?;
    let accounts = anvil.accounts();
    for account in &accounts[1..4] {
        anvil
            .mint(token, account.address, U256::from(FUNDING))
            .await
            .with_context(|| format!("minting to {}", account.address))?;
    }
    println!(
        "anvil 1.7.1 is running: chain id {CHAIN_ID} (eip155:{CHAIN_ID}, x402 v1 `base-sepolia`)"
    );
    println!("  RPC URL:    {}", anvil.url());
    println!("  FareboxUSD: {token}  (EIP-712 name \"USDC\", version \"2\", 6 decimals)");
    println!("  deployer / minter, account #0: {}", accounts[0].address);
    println!("      key {}", accounts[0].key);
    println!(
        "  funded with 1,000 USDC (anvil's public development keys; never use them elsewhere):"
    );
    for (i, account) in accounts.iter().enumerate().take(4).skip(1) {
        println!("    #{i} {}  key {}", account.address, account.key);
    }
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!("stopping anvil");
    drop(anvil);
    Ok(())
}
