//! The `farebox` command.
//!
//! - `farebox demo`: a demo API, a paid server in front of it and a client that pays for it over
//!   L402, all in one process on embedded defaults, narrated step by step.
//! - `farebox demo --serve`: the same server and dev wallet kept running, for `farebox pay`.
//! - `farebox pay <url>`: pays for one request from the command line with the dev wallet.
#![forbid(unsafe_code)]

mod demo;
mod devnet;
mod pay;
mod proxy;
mod stack;
mod upstream;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "farebox", version, about = "Paid HTTP APIs over L402 (and, soon, x402 and MPP)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo: an API, a paid server in front of it, and a client paying it in sats.
    Demo(Box<demo::DemoArgs>),
    /// Pay for one request with the dev wallet and print the response body.
    Pay(Box<pay::PayArgs>),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(*args).await,
        Command::Pay(args) => pay::run(*args).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
