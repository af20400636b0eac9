//! `farebox conformance <url>`: runs the conformance suite against a server and reports check by
//! check; `farebox conformance --serve`: the misbehaving reference server, for testing clients;
//! `farebox conformance --client '<command>'`: runs a client (any command that takes a URL and
//! prints one JSON line) against the server's x402 and MPP scenarios on a fresh anvil and
//! reports per scenario what it paid, on chain, against what a correct client pays.
//!
//! The table goes to stdout; `--json` and `--junit` write the report for CI as well. The exit
//! status is the verdict's ([`farebox_conformance::Verdict`]): 0 pass, 1 fail, 2 error (the
//! suite could not run, or a usage error), 3 incomplete (a MUST did not run or was
//! inconclusive).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use farebox_conformance::clients::{self, CommandClient};
use farebox_conformance::misbehave::evm::{CHAIN_ID, Chain, EvmServer, scenarios_on};
use farebox_conformance::probe::builtin::{self, Wallets};
use farebox_conformance::{Probe, Target};
use farebox_evm::PrivateKeySigner;

use farebox_lightning::dev_wallet::RemoteDevWallet;

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// A priced URL of the server under test (it must answer 402 without a credential).
    #[arg(required_unless_present_any = ["serve", "client"])]
    url: Option<reqwest::Url>,
    /// Another priced URL of the same server, for the cross-route checks (default: one the
    /// server's /openapi.json lists, if it publishes one).
    #[arg(long)]
    other_url: Option<reqwest::Url>,
    /// Only these rails: l402, x402, mpp (repeatable; default: every rail the server offers).
    #[arg(long = "rail")]
    rails: Vec<String>,
    /// A wallet for the paid checks (repeatable): `lightning=<dev wallet URL>` (the one
    /// `farebox demo --serve` prints) and/or `evm=env` to sign with the key in
    /// FAREBOX_CONFORMANCE_EVM_KEY, or `evm=file:<path>` with the key in that file (funded on
    /// the server's chain). A key itself on the command line is refused: every user of the
    /// machine can read it there. `evm-rpc=env` (FAREBOX_CONFORMANCE_EVM_RPC),
    /// `evm-rpc=file:<path>` or `evm-rpc=<URL with no path or query>` names a node of the
    /// server's chain, through which the MPP session checks open and close their own channel.
    #[arg(long = "wallet")]
    wallets: Vec<String>,
    /// The most one payment of a paid check may cost (repeatable): `<n>sat` and/or
    /// `<decimal>usdc` (token amounts in base units at 6 decimals). Default 100sat and
    /// 0.05usdc. A paid check that would pay more does not run.
    #[arg(long = "max-price")]
    max_price: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the report as JUnit XML to this file.
    #[arg(long)]
    junit: Option<std::path::PathBuf>,
    /// Show every request and answer of each check under it (secrets redacted); the JSON
    /// report carries them always.
    #[arg(long, short)]
    verbose: bool,
    /// Fail on SHOULD failures too.
    #[arg(long)]
    strict: bool,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Serve the misbehaving reference server (and its dev wallet) instead, for clients. With
    /// anvil installed (`cargo xtask setup`, or FAREBOX_ANVIL), its x402 and MPP scenarios too.
    #[arg(long, conflicts_with = "url")]
    serve: bool,
    /// Test a client instead: run this command (under `sh -c`, the scenario's URL appended
    /// or put where `{url}` is) against each x402 and MPP scenario of the misbehaving server,
    /// on a fresh anvil (`cargo xtask setup` installs it). The command finds the chain, its
    /// funded key and the token in FAREBOX_CLIENT_RPC, _KEY, _TOKEN, _CHAIN_ID (or `{rpc}`,
    /// `{key}`, `{token}`, `{chain_id}`) and prints one JSON line, e.g. `{"status":200,...}`.
    /// Each run may take six times --timeout. Exit status 0 when every scenario was paid what
    /// a correct client pays, 1 when one was not, 3 when one could not be judged (the client
    /// paid nothing where that is right, but could not pay the rail's honest scenario either).
    /// --rail x402, mpp or mpp-session picks scenarios.
    #[arg(long, conflicts_with_all = ["url", "serve"], value_name = "COMMAND")]
    client: Option<String>,
    /// Port of the misbehaving server with --serve.
    #[arg(long, default_value_t = 8412)]
    port: u16,
    /// Port of its dev wallet API with --serve.
    #[arg(long, default_value_t = 8413)]
    wallet_port: u16,
    /// Port of the x402 and MPP (chain) scenarios with --serve. 0 for any free port, as for
    /// the other two.
    #[arg(long, default_value_t = 8414)]
    chain_port: u16,
}

/// Runs the command; the exit status as documented above.
pub async fn run(args: ConformanceArgs) -> u8 {
    match run_inner(args).await {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: {e:#}");
            farebox_conformance::Verdict::Error.exit_status()
        }
    }
}

async fn run_inner(args: ConformanceArgs) -> anyhow::Result<u8> {
    if args.serve {
        serve(&args).await?;
        return Ok(0);
    }
    if let Some(command) = &args.client {
        return test_client(command, &args).await;
    }
    let url = args.url.clone().context("a URL to test")?;
    let mut target = Target::new(url);
    target.rails = args.rails.clone();
    target.other_url = args.other_url.clone();
    target.timeout = Duration::from_secs(args.timeout);
    let mut wallets = wallets(&args.wallets).await?;
    for cap in &args.max_price {
        wallets.max_price.set(cap).map_err(anyhow::Error::msg)?;
    }
    let probes = builtin::probes(&wallets);
    say_what_it_pays(&target, &probes, &wallets).await;
    let report = farebox_conformance::run(&target, &probes).await;
    print!("{}", report.table_with(args.verbose));
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report.to_junit())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.verdict(args.strict).exit_status())
}

/// What the run will pay, before it pays anything.
async fn say_what_it_pays(target: &Target, probes: &[Box<dyn Probe>], wallets: &Wallets) {
    let max = &wallets.max_price;
    let Ok(quotes) = farebox_conformance::plan(target, probes).await else {
        return; // the run reports why it cannot run
    };
    if quotes.is_empty() {
        println!("this run pays nothing (no wallet for any rail the server offers)");
        return;
    }
    println!("this run pays at most {} per payment (--max-price):", max.describe());
    for q in &quotes {
        let verb =
            if q.within(max) { "pays" } else { "would pay, over the cap, so it will not run:" };
        println!("  {} {verb} {}", q.check, q.describe());
    }
    if wallets.evm.is_some() {
        println!(
            "  x402 refusal checks are signed by your key: a server that wrongly accepts one may take up to its price (+1 base unit) each"
        );
    }
    println!();
}

/// The wallets of `--wallet` values. Nothing of a value is ever repeated in an error: it may
/// be a key.
async fn wallets(specs: &[String]) -> anyhow::Result<Wallets> {
    let mut wallets = Wallets::default();
    for spec in specs {
        match spec.split_once('=') {
            Some(("lightning", url)) => {
                let url: reqwest::Url =
                    url.parse().map_err(|_| anyhow::anyhow!("--wallet lightning=…: not a URL"))?;
                wallets.lightning = Some(Arc::new(RemoteDevWallet::new(url)));
            }
            Some(("evm", "env")) => {
                let key = std::env::var("FAREBOX_CONFORMANCE_EVM_KEY")
                    .context("--wallet evm=env: FAREBOX_CONFORMANCE_EVM_KEY is not set")?;
                wallets.evm = Some(evm_key(&key, "FAREBOX_CONFORMANCE_EVM_KEY")?);
            }
            Some(("evm", source)) if source.starts_with("file:") => {
                let path = &source["file:".len()..];
                let key = std::fs::read_to_string(path)
                    .with_context(|| format!("--wallet evm=file:{path}: cannot read it"))?;
                wallets.evm = Some(evm_key(&key, &format!("the key file {path}"))?);
            }
            Some(("evm-rpc", source)) => {
                let url = rpc_url(source)?;
                let rpc = farebox_evm::EvmRpc::connect(&url)
                    .await
                    .map_err(|_| anyhow::anyhow!("--wallet evm-rpc=…: the node does not answer"))?;
                wallets.evm_rpc = Some(rpc);
            }
            Some(("evm", _)) => bail!(
                "--wallet evm=…: a key on the command line is refused (every user of this machine can read a process's arguments, and shells keep them); put it in FAREBOX_CONFORMANCE_EVM_KEY and give --wallet evm=env, or in a file and give --wallet evm=file:<path>"
            ),
            _ => bail!(
                "--wallet: expected lightning=<dev wallet URL>, evm=env, evm=file:<path> or evm-rpc=env|file:<path>|<URL> (the value is not repeated here: it may be a secret)"
            ),
        }
    }
    Ok(wallets)
}

/// The node URL of `--wallet evm-rpc=…`. Hosted nodes carry their API key in the path or the
/// query, so a URL on the command line may have neither; the error never repeats the URL.
fn rpc_url(source: &str) -> anyhow::Result<String> {
    let url = match source {
        "env" => std::env::var("FAREBOX_CONFORMANCE_EVM_RPC")
            .context("--wallet evm-rpc=env: FAREBOX_CONFORMANCE_EVM_RPC is not set")?,
        _ if source.starts_with("file:") => {
            let path = &source["file:".len()..];
            std::fs::read_to_string(path)
                .with_context(|| format!("--wallet evm-rpc=file:{path}: cannot read it"))?
        }
        literal => {
            let url: reqwest::Url =
                literal.parse().map_err(|_| anyhow::anyhow!("--wallet evm-rpc=…: not a URL"))?;
            if !matches!(url.path(), "" | "/")
                || url.query().is_some()
                || !url.username().is_empty()
            {
                bail!(
                    "--wallet evm-rpc=…: a URL with a path, a query or credentials may hold an API key, and is refused on the command line; put it in FAREBOX_CONFORMANCE_EVM_RPC and give --wallet evm-rpc=env"
                );
            }
            literal.to_string()
        }
    };
    Ok(url.trim().to_string())
}

/// An EVM key from `text`, read from `source`; the error names the source, never the text.
fn evm_key(text: &str, source: &str) -> anyhow::Result<PrivateKeySigner> {
    text.trim().parse().map_err(|_| anyhow::anyhow!("{source} does not hold a hex private key"))
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
    // The chain scenarios, when anvil is there to run them on.
    let _chain_server = match Chain::start().await {
        Ok(chain) => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.chain_port));
            let server = EvmServer::bind(Arc::new(chain), addr).await?;
            print_chain(&server, "\nx402 and MPP scenarios (report: GET /_report)", &[]);
            Some(server)
        }
        Err(e) => {
            println!("\nx402 and MPP scenarios: not served ({e:#})");
            None
        }
    };
    println!("\nCtrl-C stops.");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Where the chain scenarios are (those on `rails`; none named: all) and what a client pays
/// them with.
fn print_chain(server: &EvmServer, title: &str, rails: &[String]) {
    let chain = server.chain();
    println!("{title}      {}", server.url);
    println!("  chain   {} (anvil, chain id {CHAIN_ID})", chain.rpc_url());
    println!(
        "  token   {:#x} (EIP-3009, EIP-712 \"USDC\" version \"2\", 6 decimals)",
        chain.token()
    );
    println!("  payer   {:#x}, anvil's public development key #1", chain.payer());
    for s in scenarios_on(rails) {
        println!("  {:<34} {} — a correct client {}", s.path, s.misbehaviour, s.correct_client);
    }
}

/// `--client`: the client suite on a fresh anvil; the exit status is its verdict's.
async fn test_client(command: &str, args: &ConformanceArgs) -> anyhow::Result<u8> {
    if scenarios_on(&args.rails).next().is_none() {
        bail!("--rail: the client scenarios are on x402, mpp and mpp-session");
    }
    let chain = Chain::start().await.context("starting anvil (`cargo xtask setup` installs it)")?;
    let server = EvmServer::start(Arc::new(chain)).await?;
    print_chain(&server, "the misbehaving server's x402 and MPP scenarios", &args.rails);
    println!();
    let client = CommandClient::new(command).timeout(Duration::from_secs(args.timeout.max(1) * 6));
    let report = clients::run(&server, &client, &args.rails).await;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.verdict().exit_status())
}
