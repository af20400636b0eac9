//! `farebox facilitator`: the x402 facilitator HTTP API (`POST /verify`, `POST /settle`,
//! `GET /supported`) over one or more EVM nodes, settling with a gas key of its own.
//!
//! Settlements are recorded in a replay store (SQLite by default, PostgreSQL to share it
//! between instances), so one authorization is never settled twice, also across restarts; a
//! background task reconciles settlements whose receipt did not arrive in time.
//!
//! It pays gas for whoever it settles for, so it takes allowlists of the networks, tokens and
//! payees it serves (`--network`, `--asset`, `--pay-to`; others are refused with the spec's
//! reason codes) and a bearer token for its API (`--token-file` or `FAREBOX_FACILITATOR_TOKEN`,
//! never a command-line value: argv is visible to every user of the machine). RPC URLs, which
//! carry API keys on hosted nodes, can come from `FAREBOX_FACILITATOR_RPC` for the same reason,
//! and are only ever shown redacted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use farebox_evm::rpc::redact_url;
use farebox_evm::{Address, EvmRpc, PrivateKeySigner};
use farebox_x402::facilitator::http_server::{self, ApiToken};
use farebox_x402::facilitator::local::{self, ChainAccess, FacilitatorPolicy, LocalFacilitator};

/// The environment variable the API's bearer token may come from.
const TOKEN_ENV: &str = "FAREBOX_FACILITATOR_TOKEN";

#[derive(clap::Args)]
pub struct FacilitatorArgs {
    /// JSON-RPC URL of an EVM node; repeat for several chains (the chain id is read from each).
    /// Hosted URLs carry API keys: prefer FAREBOX_FACILITATOR_RPC (comma-separated) to argv.
    #[arg(
        long = "rpc",
        required = true,
        env = "FAREBOX_FACILITATOR_RPC",
        hide_env_values = true,
        value_delimiter = ','
    )]
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
    /// Serve only this CAIP-2 network (e.g. eip155:8453); repeat for several. Default: every
    /// network of the --rpc nodes.
    #[arg(long = "network")]
    networks: Vec<String>,
    /// Settle only this token: `<CAIP-2 network>:<address>`, or an address on every network;
    /// repeat for several. Default: any token.
    #[arg(long = "asset")]
    assets: Vec<String>,
    /// Settle only payments to this address; repeat for several. Default: any payee.
    #[arg(long = "pay-to")]
    payees: Vec<String>,
    /// A file holding the bearer token callers of the API must send (or set
    /// FAREBOX_FACILITATOR_TOKEN). Default: no token asked for.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub async fn run(args: FacilitatorArgs) -> anyhow::Result<()> {
    let signer = PrivateKeySigner::from_str(args.key.trim())
        .map_err(|_| anyhow::anyhow!("--key is not a hex secp256k1 private key"))?;
    let token = api_token(args.token_file.as_deref(), std::env::var(TOKEN_ENV).ok())?;
    let mut chains = Vec::new();
    for url in &args.rpcs {
        // The URL may carry an API key: only its redacted form is shown.
        let shown = redact_url(url);
        let rpc = EvmRpc::connect(url).await.with_context(|| format!("connecting to {shown}"))?;
        tracing::info!(chain_id = rpc.chain_id(), url = %shown, "chain connected");
        chains.push(ChainAccess { rpc, signer: signer.clone() });
    }
    let networks: Vec<String> =
        chains.iter().map(|c| farebox_evm::network::caip2(c.rpc.chain_id())).collect();
    let policy = policy(&args, &networks)?;
    if policy.assets.is_none() || policy.payees.is_none() {
        tracing::warn!(
            "settling for any token and any payee on its networks: pass --asset and --pay-to to \
             keep others from spending this facilitator's gas"
        );
    }
    if token.is_none() {
        tracing::warn!("the API asks for no bearer token: anyone who can reach it can use it");
    }
    let store = farebox_store::open(&args.store)
        .await
        .with_context(|| format!("opening the store {}", redact_url(&args.store)))?;
    let facilitator = Arc::new(
        LocalFacilitator::new(chains, store)
            .with_receipt_timeout(Duration::from_secs(args.receipt_timeout))
            .with_policy(policy),
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
    let app = match token {
        Some(token) => http_server::router_with_token(facilitator, token),
        None => http_server::router(facilitator),
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The API's bearer token, from `--token-file` or the environment (not both).
fn api_token(
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> anyhow::Result<Option<ApiToken>> {
    let text = match (file, env) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give the bearer token in --token-file or {TOKEN_ENV}, not both")
        }
        (Some(path), None) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?,
        (None, Some(text)) => text,
        (None, None) => return Ok(None),
    };
    ApiToken::new(&text).map(Some).context("the bearer token is empty")
}

/// The allowlists of the command line; `networks` are those of the --rpc nodes.
fn policy(args: &FacilitatorArgs, networks: &[String]) -> anyhow::Result<FacilitatorPolicy> {
    let address = |text: &str| {
        Address::from_str(text.trim()).with_context(|| format!("{text:?} is not an address"))
    };
    let mut assets = HashSet::new();
    for spec in &args.assets {
        match spec.rsplit_once(':') {
            Some((network, token)) => {
                assets.insert((network.to_string(), address(token)?));
            }
            None => {
                let token = address(spec)?;
                assets.extend(networks.iter().map(|n| (n.clone(), token)));
            }
        }
    }
    let payees = args.payees.iter().map(|p| address(p)).collect::<anyhow::Result<HashSet<_>>>()?;
    let given = |list: &[String]| !list.is_empty();
    Ok(FacilitatorPolicy {
        networks: given(&args.networks).then(|| args.networks.iter().cloned().collect()),
        assets: given(&args.assets).then_some(assets),
        payees: given(&args.payees).then_some(payees),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FacilitatorArgs,
    }

    fn parse(extra: &[&str]) -> FacilitatorArgs {
        let base = ["facilitator", "--rpc", "http://127.0.0.1:8545", "--key", "0x01"];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().args
    }

    #[test]
    fn allowlists_read_networks_tokens_and_payees() {
        let token = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
        let payee = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
        let args = parse(&[
            "--network",
            "eip155:84532",
            "--asset",
            &format!("eip155:84532:{token}"),
            "--asset",
            payee,
            "--pay-to",
            payee,
        ]);
        let networks = ["eip155:84532".to_string(), "eip155:8453".to_string()];
        let allowed = policy(&args, &networks).unwrap();
        assert_eq!(allowed.networks, Some(["eip155:84532".to_string()].into()));
        let assets = allowed.assets.unwrap();
        assert_eq!(assets.len(), 3, "one token on one network, one on every network");
        assert!(assets.contains(&("eip155:84532".into(), token.parse().unwrap())));
        assert!(assets.contains(&("eip155:8453".into(), payee.parse().unwrap())));
        assert_eq!(allowed.payees, Some([payee.parse().unwrap()].into()));

        let open = policy(&parse(&[]), &networks).unwrap();
        assert_eq!(open, FacilitatorPolicy::default(), "no flags: no allowlist");
        assert!(policy(&parse(&["--pay-to", "nope"]), &networks).is_err());
    }

    #[test]
    fn the_token_comes_from_a_file_or_the_environment_never_argv() {
        assert!(
            Cli::try_parse_from(["facilitator", "--rpc", "x", "--key", "k", "--token", "t"])
                .is_err()
        );
        let dir = std::env::temp_dir().join(format!("farebox-token-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let from_file = api_token(Some(&dir), None).unwrap().unwrap();
        assert_eq!(format!("{from_file:?}"), "ApiToken(…)");
        assert!(api_token(None, Some("s3cret".into())).unwrap().is_some());
        assert!(api_token(Some(&dir), Some("s3cret".into())).is_err(), "not both");
        assert!(api_token(None, Some(" \n".into())).is_err(), "not empty");
        assert!(api_token(None, None).unwrap().is_none());
        std::fs::remove_file(&dir).unwrap();
    }
}
