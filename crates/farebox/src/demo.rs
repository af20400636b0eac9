//! `farebox demo`: the whole exchange, narrated.
//!
//! One process runs a free upstream API, the paid server in front of it (the paywall with the
//! L402 rail and the embedded Lightning dev node), and a client whose dev wallet pays. Every step
//! of the protocol is printed as it happens: the 402 and its challenges, the invoice, the
//! payment, the retry with the proof, the response and the ledger.

use std::time::Duration;

use anyhow::Context;
use farebox_client::{Budget, ClientError, Event, L402Wallet, PaymentMiddleware};
use farebox_core::{Asset, Money};

use crate::stack::{self, Stack};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the paid server and the dev wallet running (for `farebox pay`) instead of running
    /// the scripted client.
    #[arg(long)]
    serve: bool,
    /// Port of the paid server with --serve.
    #[arg(long, default_value_t = 8402)]
    port: u16,
    /// Port of the dev wallet API with --serve.
    #[arg(long, default_value_t = 8403)]
    wallet_port: u16,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.serve {
        return serve(args).await;
    }
    let stack = stack::start(0).await?;
    let base = format!("http://{}", stack.server);
    heading(&stack);

    let budget = Budget::new().allow(Money::sats(100), Money::sats(500))?;
    let payer = PaymentMiddleware::new(budget.clone())
        .wallet(L402Wallet::new(stack.wallet_node.clone(), 1_000))
        .observe(narrate);
    let ledger = payer.ledger();
    let client = farebox_client::paying_client(
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        payer,
    );

    step(1, "A free route passes straight through");
    request(&client, &format!("{base}/health")).await?;

    step(2, "A priced route: the server answers 402, the client pays the invoice and retries");
    request(&client, &format!("{base}/joke")).await?;

    step(3, "The L402 token is reusable: the same route again costs nothing more");
    request(&client, &format!("{base}/joke")).await?;

    step(4, "Another route has its own price (tokens are scoped to the route they bought)");
    request(&client, &format!("{base}/weather/lisbon")).await?;
    request(&client, &format!("{base}/weather/oslo")).await?;

    step(5, "A forged proof (right macaroon, wrong preimage) is refused with a fresh 402");
    forged(&base).await?;

    step(6, "A price above the budget is refused before any payment is made");
    match client.get(format!("{base}/premium")).send().await {
        Err(e) => match ClientError::from_middleware(&e) {
            Some(err @ ClientError::OverBudget { .. }) => {
                println!("    refused by the client: {err}")
            }
            _ => anyhow::bail!("expected an over-budget refusal, got {e}"),
        },
        Ok(r) => anyhow::bail!("expected an over-budget refusal, got HTTP {}", r.status()),
    }

    println!("\nLedger");
    let entries = ledger.entries();
    for e in &entries {
        println!(
            "    {:<5} {:>8}  fee {:<8} {}  hash {}",
            e.rail,
            e.amount.to_string(),
            e.fee.to_string(),
            e.url,
            short(&e.reference)
        );
    }
    let spent = budget.spent(&Asset::Bitcoin);
    println!("    {} payments, {} spent of a {} budget", entries.len(), spent, Money::sats(500));
    println!(
        "    wallet balance {} → {}; server node received {}",
        Money::sats(stack::WALLET_OPENING_SATS),
        Money::msats(stack.wallet_node.balance_msat()),
        Money::msats(stack.server_node.balance_msat()),
    );
    let expected = Money::sats(10 + 25);
    anyhow::ensure!(spent == expected, "the demo should have spent {expected}, spent {spent}");
    println!(
        "\nDone: every proof above was checked by math (sha256 of the preimage, the macaroon's HMAC chain), not by an API key."
    );
    Ok(())
}

async fn serve(args: DemoArgs) -> anyhow::Result<()> {
    let stack = stack::start(args.port).await?;
    let wallet = stack::serve_wallet(stack.wallet_node.clone(), args.wallet_port).await?;
    heading(&stack);
    println!("  dev wallet API  http://{wallet}  (pays invoices of this dev network)\n");
    println!("Try it from another terminal:");
    println!("    farebox pay http://{}/joke --wallet http://{wallet}", stack.server);
    println!("    curl -i http://{}/joke      # the raw 402\n", stack.server);
    println!("Ctrl-C stops.");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}

fn heading(stack: &Stack) {
    println!("farebox demo: an HTTP API paid for in sats over L402");
    println!(
        "(embedded Lightning dev node on regtest: real BOLT11 signatures and preimages, simulated routing)\n"
    );
    println!("  upstream API    http://{}  (free; the thing being sold)", stack.upstream);
    println!("  paid server     http://{}  (farebox paywall in front of it)", stack.server);
    for (method, pattern, sats) in stack::PRICES {
        println!("                    {method} {pattern:<12} {sats} sat");
    }
    println!(
        "  client wallet   dev node {}…, {} sat, budget 100 sat per request / 500 sat total",
        &stack.wallet_node.pubkey().to_string()[..16],
        stack::WALLET_OPENING_SATS
    );
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

async fn request(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> anyhow::Result<()> {
    println!("    → GET {url}");
    let response = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("    ← {status}  {}", body.trim());
    anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
    Ok(())
}

/// Sends the challenge's own macaroon with a made-up preimage and shows the server's answer.
async fn forged(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{base}/joke");
    let first = http.get(&url).send().await?;
    let line = first
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("L402"))
        .context("no L402 challenge")?
        .to_string();
    let challenge = farebox_core::auth::parse_challenges([line.as_str()])?
        .into_iter()
        .next()
        .context("empty challenge")?;
    let parsed = farebox_l402::parse_challenge(&challenge)?;
    let forged = farebox_l402::format_credential(&parsed.macaroon, &[0x42; 32]);
    println!("    → GET {url}  Authorization: L402 {}…:4242…", &parsed.macaroon[..12]);
    let response = http.get(&url).header("authorization", forged).send().await?;
    let status = response.status();
    let challenges = response.headers().get_all("www-authenticate").iter().count();
    let problem: serde_json::Value = response.json().await.unwrap_or_default();
    println!(
        "    ← {status}  {} ({}), {challenges} fresh challenges",
        problem["detail"].as_str().unwrap_or("?"),
        problem["code"].as_str().unwrap_or("?")
    );
    anyhow::ensure!(status == 402, "a forged proof must be refused");
    Ok(())
}

/// Prints each client step.
fn narrate(event: &Event) {
    match event {
        Event::ReusingProof { rail, .. } => {
            println!("    · sending the saved {rail} token up front")
        }
        Event::PaymentRequired { challenges, offers, .. } => {
            println!("    ← 402 Payment Required");
            for c in challenges {
                println!("        WWW-Authenticate: {}", abbreviate(c));
            }
            for (rail, price, summary) in offers {
                println!("    · offer: {rail} {price} — {summary}");
            }
        }
        Event::Paying { rail, price, .. } => println!("    · paying {price} over {rail}"),
        Event::Paid { fee, reference, .. } => {
            println!("    · paid: preimage received, payment hash {} (fee {fee})", short(reference))
        }
        Event::Retrying { .. } => {
            println!("    → retrying with Authorization: L402 <macaroon>:<preimage>")
        }
        Event::Served { .. } => {}
        _ => {}
    }
}

/// Shortens long quoted values (base64, invoices) in a challenge line for reading.
fn abbreviate(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (i, text) in line.split('"').enumerate() {
        let chars: Vec<char> = text.chars().collect();
        if i % 2 == 1 {
            out.push('"');
            if chars.len() > 28 {
                out.extend(&chars[..20]);
                out.push('…');
                out.extend(&chars[chars.len() - 6..]);
            } else {
                out.push_str(text);
            }
            out.push('"');
        } else {
            out.push_str(text);
        }
    }
    out
}

fn short(hex: &str) -> String {
    match hex.char_indices().nth(16) {
        Some((cut, _)) => format!("{}…", &hex[..cut]),
        None => hex.to_string(),
    }
}
