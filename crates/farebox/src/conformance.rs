//! `farebox conformance <url>`: runs the conformance suite against a server and reports check by
//! check; `farebox conformance --serve`: the misbehaving reference server, for testing clients.
//!
//! The table goes to stdout; `--json` and `--junit` write the report for CI as well. The exit
//! code is 0 when every MUST passed (with `--strict`, every SHOULD too), 1 otherwise.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use farebox_conformance::{Target, Wallets};
use farebox_evm::PrivateKeySigner;

use crate::devnet::RemoteDevWallet;

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// A priced URL of the server under test (it must answer 402 without a credential).
    #[arg(required_unless_present = "serve")]
    url: Option<reqwest::Url>,
    /// Only these rails: l402, x402, mpp (repeatable; default: every rail the server offers).
    #[arg(long = "rail")]
    rails: Vec<String>,
    /// A wallet for the paid checks (repeatable): `lightning=<dev wallet URL>` (the one
    /// `farebox demo --serve` prints) and/or `evm=env` to sign with the key in
    /// FAREBOX_CONFORMANCE_EVM_KEY (funded on the server's chain).
    #[arg(long = "wallet")]
    wallets: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the report as JUnit XML to this file.
    #[arg(long)]
    junit: Option<std::path::PathBuf>,
    /// Fail on SHOULD failures too.
    #[arg(long)]
    strict: bool,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Serve the misbehaving reference server (and its dev wallet) instead, for clients.
    #[arg(long, conflicts_with = "url")]
    serve: bool,
    /// Port of the misbehaving server with --serve.
    #[arg(long, default_value_t = 8412)]
    port: u16,
    /// Port of its dev wallet API with --serve.
    #[arg(long, default_value_t = 8413)]
    wallet_port: u16,
}

pub async fn run(args: ConformanceArgs) -> anyhow::Result<bool> {
    if args.serve {
        serve(&args).await?;
        return Ok(true);
    }
    let url = args.url.clone().context("a URL to test")?;
    let mut target = Target::new(url);
    target.rails = args.rails.clone();
    target.timeout = Duration::from_secs(args.timeout);
    target.wallets = wallets(&args.wallets)?;
    let report = farebox_conformance::run(&target).await;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report.to_junit())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.passed(args.strict))
}

fn wallets(specs: &[String]) -> anyhow::Result<Wallets> {
    let mut wallets = Wallets::default();
    for spec in specs {
        match spec.split_once('=') {
            Some(("lightning", url)) => {
                let url: reqwest::Url = url.parse().with_context(|| format!("--wallet {spec}"))?;
                wallets.lightning = Some(Arc::new(RemoteDevWallet::new(url)));
            }
            Some(("evm", "env")) => {
                let key = std::env::var("FAREBOX_CONFORMANCE_EVM_KEY")
                    .context("--wallet evm=env: FAREBOX_CONFORMANCE_EVM_KEY is not set")?;
                let key: PrivateKeySigner = key.trim().parse().map_err(|_| {
                    anyhow::anyhow!("FAREBOX_CONFORMANCE_EVM_KEY is not a hex private key")
                })?;
                wallets.evm = Some(key);
            }
            _ => bail!("--wallet {spec:?}: expected lightning=<dev wallet URL> or evm=env"),
        }
    }
    Ok(wallets)
}

async fn serve(args: &ConformanceArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let network = farebox_lightning::DevNetwork::new();
    let node = Arc::new(farebox_lightning::DevNode::random(&network, 0));
    let wallet = Arc::new(farebox_lightning::DevNode::random(&network, 10_000_000));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let server = listener.local_addr()?;
    let app = farebox_conformance::misbehave::router(node)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let wallet_addr = crate::stack::serve_wallet(wallet, args.wallet_port).await?;
    println!("misbehaving reference server  http://{server}   (report: GET /_report)");
    println!("its dev wallet API            http://{wallet_addr}  (10,000 sat)\n");
    for s in farebox_conformance::misbehave::SCENARIOS {
        println!("  {:<24} {} — a correct client {}", s.path, s.misbehaviour, s.correct_client);
    }
    println!("\nCtrl-C stops.");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
