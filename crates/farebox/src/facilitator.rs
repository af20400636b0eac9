//! `farebox facilitator`: the x402 facilitator HTTP API (`POST /verify`, `POST /settle`,
//! `GET /supported`) over one or more EVM nodes, settling with a gas key of its own.
//!
//! Settlements are recorded in a replay store (SQLite by default, PostgreSQL to share it
//! between instances), so one authorization is never settled twice, also across restarts; a
//! background task reconciles settlements whose receipt did not arrive in time.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use farebox_evm::{EvmRpc, PrivateKeySigner};
use farebox_x402::facilitator::http_server;
use farebox_x402::facilitator::local::{self, ChainAccess, LocalFacilitator};

#[derive(clap::Args)]
pub struct FacilitatorArgs {
    /// JSON-RPC URL of an EVM node; repeat for several chains (the chain id is read from each).
    #[arg(long = "rpc", required = true)]
    rpcs: Vec<String>,
    /// Hex private key that signs and pays for settlement transactions.
    #[arg(long, env = "FAREBOX_FACILITATOR_KEY", hide_env_values = true)]
    key: String,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8404")]
    listen: SocketAddr,
    /// Replay store: sqlite://PATH, postgres://…, or memory: (testing only).
    #[arg(long, default_value = "sqlite://.farebox/facilitator.sqlite")]
    store: String,
    /// Seconds to wait for a settlement receipt before answering `settlement_pending`.
    #[arg(long, default_value_t = 20)]
    receipt_timeout: u64,
}

pub async fn run(args: FacilitatorArgs) -> anyhow::Result<()> {
    let signer = PrivateKeySigner::from_str(args.key.trim())
        .map_err(|_| anyhow::anyhow!("--key is not a hex secp256k1 private key"))?;
    let mut chains = Vec::new();
    for url in &args.rpcs {
        // The URL may carry an API key: only its redacted form is shown.
        let shown = farebox_evm::rpc::redact_url(url);
        let rpc = EvmRpc::connect(url).await.with_context(|| format!("connecting to {shown}"))?;
        tracing::info!(chain_id = rpc.chain_id(), url = %shown, "chain connected");
        chains.push(ChainAccess { rpc, signer: signer.clone() });
    }
    let store = farebox_store::open(&args.store)
        .await
        .with_context(|| format!("opening the store {}", args.store))?;
    let facilitator = Arc::new(
        LocalFacilitator::new(chains, store)
            .with_receipt_timeout(Duration::from_secs(args.receipt_timeout)),
    );

    let reconciler = facilitator.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            match reconciler.reconcile(local::NAMESPACE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(resolved = n, "pending settlements reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconciliation failed; will retry"),
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("farebox facilitator on http://{addr} (signer {:#x})", signer.address());
    axum::serve(listener, http_server::router(facilitator))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
