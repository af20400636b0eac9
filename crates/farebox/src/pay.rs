//! `farebox pay <url>`: pays for one request with a dev wallet and prints the body.
//!
//! The steps go to stderr, the response body to stdout, so `farebox pay … | jq` works.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use farebox_client::{Budget, ClientError, Event, L402Wallet, PaymentMiddleware};
use farebox_core::Money;

use crate::devnet::RemoteDevWallet;

#[derive(clap::Args)]
pub struct PayArgs {
    /// The URL to request.
    url: reqwest::Url,
    /// HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: reqwest::Method,
    /// Request body (sent as-is).
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The dev wallet API that pays (printed by `farebox demo --serve`).
    #[arg(long, env = "FAREBOX_DEV_WALLET", default_value = "http://127.0.0.1:8403")]
    wallet: reqwest::Url,
    /// Most to pay for this request, in sats (routing fees included).
    #[arg(long, default_value_t = 100)]
    max_sats: u64,
    /// Most Lightning routing fee, in sats.
    #[arg(long, default_value_t = 10)]
    max_fee_sats: u64,
    /// Print nothing but the body.
    #[arg(short, long)]
    quiet: bool,
}

pub async fn run(args: PayArgs) -> anyhow::Result<()> {
    let budget = Budget::new().allow(Money::sats(args.max_sats), Money::sats(args.max_sats))?;
    let wallet = L402Wallet::new(
        Arc::new(RemoteDevWallet::new(args.wallet.clone())),
        args.max_fee_sats.saturating_mul(1000),
    );
    let mut payer = PaymentMiddleware::new(budget).wallet(wallet);
    if !args.quiet {
        payer = payer.observe(|e: &Event| match e {
            Event::PaymentRequired { offers, .. } => {
                eprintln!("402 Payment Required");
                for (rail, price, summary) in offers {
                    eprintln!("  offer: {rail} {price} — {summary}");
                }
            }
            Event::Paid { rail, price, fee, reference } => {
                eprintln!("paid {price} over {rail} (fee {fee}), payment hash {reference}")
            }
            Event::Served { status, .. } => eprintln!("retried with the proof: HTTP {status}"),
            _ => {}
        });
    }
    let client = farebox_client::paying_client(
        reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        payer,
    );
    let mut request = client.request(args.method.clone(), args.url.clone());
    for h in &args.headers {
        let (name, value) =
            h.split_once(':').with_context(|| format!("header {h:?} is not `Name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    if let Some(data) = args.data {
        request = request.body(data);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            if let Some(typed) = ClientError::from_middleware(&e) {
                anyhow::bail!("{typed}");
            }
            return Err(e).with_context(|| format!("{} {}", args.method, args.url));
        }
    };
    let status = response.status();
    let body = response.bytes().await?;
    use std::io::Write;
    std::io::stdout().write_all(&body)?;
    anyhow::ensure!(status.is_success(), "{} {} answered {status}", args.method, args.url);
    Ok(())
}
