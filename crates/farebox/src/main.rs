//! The `farebox` command.
//!
//! - `farebox serve --config FILE`: the gateway: any HTTP API sold on every rail, from one TOML
//!   file (`--check`: only check the file).
//! - `farebox demo`: a demo API, a paid server in front of it and a client that pays for it over
//!   L402, all in one process on embedded defaults, narrated step by step.
//! - `farebox demo --serve`: the same server and dev wallet kept running, for `farebox pay`.
//! - `farebox pay <url>`: pays for one request from the wallet file, within its caps (or with
//!   the dev wallet alone, `--wallet URL`). Exit codes: [`pay::Exit`].
//! - `farebox quote <url>`: every offer and the one `pay` would choose, paying nothing.
//! - `farebox ledger`: the wallet's payments, refunds and session closes (`--csv`, `--json`).
//! - `farebox wallet init`: writes an annotated wallet file; `wallet budget`: what is left.
//! - `farebox facilitator`: the x402 facilitator HTTP API over EVM nodes.
//! - `farebox conformance <url>`: the conformance suite against a server; `--serve`: the
//!   misbehaving reference server for testing clients.
//! - `farebox mcp`: the wallet as a Model Context Protocol server over stdio (tools `quote`,
//!   `fetch`, `budget`), for LLM agents.
//! - `farebox token attenuate|inspect`: narrow an L402 token to hand it to another agent; read
//!   what a token allows.
#![forbid(unsafe_code)]

mod conformance;
mod demo;
mod facilitator;
mod ledger;
mod mcp;
mod pay;
mod proxy;
mod quote;
mod serve;
mod stack;
mod token;
mod upstream;
mod wallet_file;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "farebox",
    version,
    about = "Paid HTTP APIs: L402 (Lightning), x402 (USDC on EVM) and MPP (charges and sessions)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in front of an API, from a TOML configuration.
    Serve(Box<serve::ServeArgs>),
    /// Run the demo: an API, a paid server in front of it, and a client paying it in sats.
    Demo(Box<demo::DemoArgs>),
    /// Pay for one request from the wallet file and print the response body.
    Pay(Box<pay::PayArgs>),
    /// Show every offer for a request and which one `pay` would choose; pays nothing.
    Quote(Box<quote::QuoteArgs>),
    /// Print the wallet's ledger (payments, deposits, refunds), or export it.
    Ledger(Box<ledger::LedgerArgs>),
    /// The wallet file: `init` writes one, `budget` shows what each cap has left.
    #[command(subcommand)]
    Wallet(ledger::WalletCommand),
    /// Serve the x402 facilitator API (verify, settle, supported) over EVM nodes.
    Facilitator(Box<facilitator::FacilitatorArgs>),
    /// Check a server against the L402, x402 and MPP conformance suite.
    Conformance(Box<conformance::ConformanceArgs>),
    /// Serve the wallet to an LLM agent over MCP (stdio): tools quote, fetch, budget.
    Mcp(Box<mcp::McpArgs>),
    /// Narrow an L402 token for another agent, or show what a token allows.
    Token(Box<token::TokenArgs>),
}

/// The exit code of a wallet command (its failures carry `pay`'s codes).
fn exit_of(outcome: Result<(), pay::Failure>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            std::process::ExitCode::from(f.exit.code())
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Servers log what they do; the demo and `pay` keep the terminal for their own narration.
    let default_level = if matches!(cli.command, Command::Facilitator(_) | Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Serve(args) => match serve::run(*args).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Demo(args) => demo::run(*args).await,
        Command::Pay(args) => return std::process::ExitCode::from(pay::run(*args).await),
        Command::Quote(args) => return std::process::ExitCode::from(quote::run(*args).await),
        Command::Ledger(args) => return exit_of(ledger::run(*args)),
        Command::Wallet(command) => return exit_of(ledger::wallet(command)),
        Command::Mcp(args) => return exit_of(mcp::run(*args).await),
        Command::Facilitator(args) => facilitator::run(*args).await,
        Command::Conformance(args) => {
            return std::process::ExitCode::from(conformance::run(*args).await);
        }
        Command::Token(args) => token::run(*args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
