//! `farebox demo`: the whole exchange, narrated.
//!
//! One process runs a free upstream API, the paid server in front of it (the paywall with the
//! L402, x402 and MPP rails, the embedded Lightning dev node and, when anvil is installed, a local
//! chain with an EIP-3009 token, an x402 facilitator and an MPP session escrow), and a client that
//! pays: in sats through the dev node's wallet over Nostr Wallet Connect (a relay in process), in
//! USDC with x402, and on one MPP session channel (deposit, vouchers, close with its refund).
//! Every step of the protocol is printed as it happens: the 402 and its challenges, the invoice,
//! the payment, the retry with the proof, the response and the ledger.

use std::time::Duration;

use anyhow::Context;
use farebox_client::{Budget, ClientError, Event, PaymentMiddleware};
use farebox_core::{Asset, Money};
use farebox_l402::client::L402Wallet;
use farebox_x402::client::X402Wallet;

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
    /// Also write what the demo measured (each request's status, payments, amounts, and the
    /// balances read from the Lightning nodes and the chain) as JSON to this file.
    #[arg(long, value_name = "FILE", conflicts_with = "serve")]
    facts: Option<std::path::PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.serve {
        return serve(args).await;
    }
    let evm = match stack::start_evm().await {
        Ok(evm) => Some(evm),
        Err(e) => {
            println!("(x402 part skipped: {e:#})\n");
            None
        }
    };
    let stack = stack::start(0, evm.as_ref()).await?;
    let base = format!("http://{}", stack.server);
    heading(&stack, evm.as_ref());

    let mut budget = Budget::new().allow(Money::sats(100), Money::sats(500))?;
    // The L402 half pays as an agent pays Alby Hub: over Nostr Wallet Connect, through a relay.
    let nwc = stack::NwcWallet::start(stack.wallet_node.clone(), 0).await?;
    println!(
        "  L402 payments go over Nostr Wallet Connect: an in-process relay at {} and the dev node's NIP-47 wallet service\n",
        nwc.relay_url()
    );
    let mut payer =
        PaymentMiddleware::new(budget.clone()).wallet(L402Wallet::new(nwc.client(), 1_000));
    if let Some(evm) = &evm {
        let usdc = Asset::Token(evm.usdc());
        budget = budget.allow(Money::new(usdc.clone(), 100_000), Money::new(usdc, 1_000_000))?;
        payer = payer.wallet(X402Wallet::new(evm.payer.clone()));
    }
    let payer = payer.observe(narrate);
    let ledger = payer.ledger();
    let client = farebox_client::paying_client(
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        payer,
    );

    // What a script or a test reads back (`--facts`): statuses, amounts, balances.
    let mut requests = Vec::new();
    let mut facts = serde_json::Map::new();

    step(1, "A free route passes straight through");
    requests.push(request(&client, &format!("{base}/health")).await?);

    step(
        2,
        "A priced route: the server answers 402 with every rail's challenge; the client pays the first it can (Lightning) and retries",
    );
    requests.push(request(&client, &format!("{base}/joke")).await?);

    step(3, "The L402 token is reusable: the same route again costs nothing more");
    requests.push(request(&client, &format!("{base}/joke")).await?);

    step(4, "Another route has its own price (tokens are scoped to the route they bought)");
    requests.push(request(&client, &format!("{base}/weather/lisbon")).await?);
    requests.push(request(&client, &format!("{base}/weather/oslo")).await?);

    if let Some(evm) = &evm {
        step(
            5,
            "A route priced in USDC only: x402 — the client signs an EIP-3009 authorization, the facilitator verifies it and settles it on the local chain",
        );
        let before = evm.balance(evm.pay_to).await?;
        requests.push(request(&client, &format!("{base}/report")).await?);
        let after = evm.balance(evm.pay_to).await?;
        println!("    · on chain: the API's account went from {before} to {after}");

        step(
            6,
            "The same signed authorization sent twice: the second is refused before the handler runs",
        );
        let replayed = replay(&base, evm).await?;
        facts.insert(
            "x402".into(),
            serde_json::json!({
                "api_before": before.amount,
                "api_after": after.amount,
                "same_authorization_twice": replayed,
            }),
        );
    }

    let mut session_captured = 0;
    if let Some(evm) = &evm {
        step(
            7,
            "An MPP session on the same chain: one deposit into an escrow channel, then each request paid with a signed voucher (no transaction), then a close that refunds the unspent deposit",
        );
        let (captured, session_facts) = session(&base, evm).await?;
        session_captured = captured;
        facts.insert("session".into(), session_facts);
    }

    step(8, "A forged proof (right macaroon, wrong preimage) is refused with a fresh 402");
    facts.insert("forged_proof".into(), forged(&base).await?.into());

    step(9, "A price above the budget is refused before any payment is made");
    match client.get(format!("{base}/premium")).send().await {
        Err(e) => match ClientError::from_middleware(&e) {
            Some(err @ ClientError::OverBudget { .. }) => {
                println!("    refused by the client: {err}");
                facts.insert("over_budget_refused".into(), true.into());
            }
            _ => anyhow::bail!("expected an over-budget refusal, got {e}"),
        },
        Ok(r) => anyhow::bail!("expected an over-budget refusal, got HTTP {}", r.status()),
    }

    println!("\nLedger of the demo client (steps 6 and 7 paid with clients of their own)");
    let entries = ledger.entries();
    for e in &entries {
        println!(
            "    {:<5} {:>10}  fee {:<8} {}  ref {}",
            e.rail,
            e.amount.to_string(),
            e.fee.to_string(),
            e.url,
            short(&e.reference)
        );
    }
    let spent = budget.spent(&Asset::Bitcoin);
    println!("    {} payments; {} spent of a {} budget", entries.len(), spent, Money::sats(500));
    println!(
        "    Lightning: wallet {} → {}; server node received {}",
        Money::sats(stack::WALLET_OPENING_SATS),
        Money::msats(stack.wallet_node.balance_msat()),
        Money::msats(stack.server_node.balance_msat()),
    );
    facts.insert(
        "lightning".into(),
        serde_json::json!({
            "payments": entries.iter().filter(|e| e.rail == "l402").count(),
            "spent_msat": spent.amount,
            "wallet_before_msat": stack::WALLET_OPENING_SATS * 1000,
            "wallet_after_msat": stack.wallet_node.balance_msat(),
            "server_received_msat": stack.server_node.balance_msat(),
        }),
    );
    facts.insert(
        "requests".into(),
        requests
            .iter()
            .map(|(url, status)| serde_json::json!({"url": url, "status": status}))
            .collect(),
    );
    anyhow::ensure!(
        spent == Money::sats(10 + 25),
        "the demo should have spent 35 sat, spent {spent}"
    );
    if let Some(evm) = &evm {
        let usdc = Asset::Token(evm.usdc());
        let (client_after, api) =
            (evm.balance(evm.payer.address()).await?, evm.balance(evm.pay_to).await?);
        println!(
            "    USDC on chain: client {} → {client_after}; API {api}",
            Money::new(usdc.clone(), stack::WALLET_OPENING_USDC),
        );
        facts.insert(
            "usdc".into(),
            serde_json::json!({
                "client_before": stack::WALLET_OPENING_USDC,
                "client_after": client_after.amount,
                "api": api.amount,
            }),
        );
        anyhow::ensure!(
            evm.balance(evm.pay_to).await? == Money::new(usdc, 2 * 50_000 + session_captured),
            "the API should have received 0.1 USDC for two /report and what the session spent"
        );
    }
    if let Some(path) = &args.facts {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(facts))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "\nDone: every proof above was checked by math (a preimage's sha256 and a macaroon's HMAC chain; an EIP-712 signature and the token's own rules on chain), not by an API key."
    );
    Ok(())
}

/// Five metered requests on one MPP session channel, then its close; returns what the API
/// captured, and the session's facts (statuses, what was captured and refunded, balances).
async fn session(base: &str, evm: &stack::Evm) -> anyhow::Result<(u128, serde_json::Value)> {
    use farebox_mpp::client::MppWallet;
    use farebox_mpp::client::session::EvmSessionPolicy;
    let usdc = Asset::Token(evm.usdc());
    const DEPOSIT: u128 = 10_000;
    let budget =
        Budget::new().allow(Money::new(usdc.clone(), 1_000), Money::new(usdc.clone(), 20_000))?;
    let wallet = MppWallet::new().evm(evm.payer.clone()).evm_sessions(EvmSessionPolicy::new(
        evm.rpc.clone(),
        evm.escrow,
        DEPOSIT,
    ));
    let sessions = wallet.sessions();
    let shown = std::sync::atomic::AtomicBool::new(false);
    let observer = move |event: &Event| match event {
        // The first 402 in full; later ones are the same challenges again.
        Event::PaymentRequired { .. } if shown.swap(true, std::sync::atomic::Ordering::Relaxed) => {
        }
        Event::Paying { summary, .. } if summary.contains("from a deposit") => println!(
            "    · approving and opening a channel in the escrow with that deposit (the last transactions until the close)"
        ),
        Event::Paying { .. } => {}
        Event::Paid { reference, .. } => {
            println!("    · signed an EIP-712 voucher on channel {}", short(reference))
        }
        Event::Retrying { .. } => {
            println!("    → retrying with Authorization: Payment <voucher credential>")
        }
        other => narrate(other),
    };
    let payer = PaymentMiddleware::new(budget.clone()).wallet(wallet).observe(observer);
    let client = farebox_client::paying_client(
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        payer,
    );
    let payer_before = evm.balance(evm.payer.address()).await?;
    let api_before = evm.balance(evm.pay_to).await?;
    let mut statuses = Vec::new();
    for symbol in ["btc", "eth", "sol", "xau", "oil"] {
        statuses.push(request(&client, &format!("{base}/ticks/{symbol}")).await?.1);
    }
    println!(
        "    · on chain so far: {} in the escrow, nothing paid to the API yet",
        evm.balance(evm.escrow).await?
    );
    let closed = sessions.close_all().await;
    let closed = closed.into_iter().next().context("one session was open")??;
    println!(
        "    · closed: the API captured {}, the escrow refunded {} (transaction {})",
        closed.spent,
        closed.refunded,
        short(&closed.reference)
    );
    let payer_after = evm.balance(evm.payer.address()).await?;
    let api_after = evm.balance(evm.pay_to).await?;
    println!(
        "    · on chain: client {payer_before} → {payer_after}; API {api_before} → {api_after}"
    );
    anyhow::ensure!(
        closed.spent == Money::new(usdc.clone(), 5 * 1_000)
            && closed.refunded == Money::new(usdc.clone(), DEPOSIT - 5 * 1_000),
        "five requests at 0.001 USDC should have cost 0.005 USDC of the 0.01 deposit"
    );
    anyhow::ensure!(
        budget.spent(&usdc) == Money::new(usdc.clone(), 5 * 1_000),
        "the budget should count what the session spent, the refund given back"
    );
    let facts = serde_json::json!({
        "statuses": statuses,
        "deposit": DEPOSIT,
        "captured": closed.spent.amount,
        "refunded": closed.refunded.amount,
        "payer_before": payer_before.amount,
        "payer_after": payer_after.amount,
        "api_before": api_before.amount,
        "api_after": api_after.amount,
    });
    Ok((closed.spent.amount, facts))
}

/// Pays /report once by hand with the x402 wallet and sends the very same header twice; the
/// two statuses.
async fn replay(base: &str, evm: &stack::Evm) -> anyhow::Result<Vec<u16>> {
    use farebox_client::Wallet;
    let http = reqwest::Client::new();
    let url = format!("{base}/report");
    let first = http.get(&url).send().await?;
    let required = farebox_client::PaymentRequired {
        url: url.parse()?,
        challenges: Vec::new(),
        headers: first.headers().clone(),
        body: first.json().await.ok(),
    };
    let wallet = X402Wallet::new(evm.payer.clone());
    let offer =
        wallet.offers(&required)?.into_iter().next().context("no x402 offer for /report")?;
    let proof = wallet.pay(&offer).await?;
    let (name, value) = proof.headers.first().cloned().context("an x402 proof has a header")?;
    let mut statuses = Vec::new();
    for attempt in ["first", "again"] {
        let response = http.get(&url).header(name.clone(), value.clone()).send().await?;
        let status = response.status();
        let problem: serde_json::Value = if status.is_success() {
            serde_json::Value::Null
        } else {
            response.json().await.unwrap_or_default()
        };
        match problem["code"].as_str() {
            None => println!("    → {attempt}: {status}"),
            Some(code) => println!("    → {attempt}: {status} ({code})"),
        }
        let expected = if attempt == "first" { 200 } else { 402 };
        anyhow::ensure!(
            status.as_u16() == expected,
            "{attempt} send of one authorization: expected {expected}, got {status}"
        );
        statuses.push(status.as_u16());
    }
    Ok(statuses)
}

async fn serve(args: DemoArgs) -> anyhow::Result<()> {
    // Signals are registered before anything is printed: whoever reads the printed addresses
    // and then stops us must find the handlers in place, or the default action would kill the
    // process without tearing down its chain.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let evm = stack::start_evm().await.ok();
    let stack = stack::start(args.port, evm.as_ref()).await?;
    let wallet = stack::serve_wallet(stack.wallet_node.clone(), args.wallet_port).await?;
    let nwc = stack::NwcWallet::start(stack.wallet_node.clone(), 0).await?;
    heading(&stack, evm.as_ref());
    // One write, and no panic if nobody reads it: a script that reads up to the addresses and
    // then closes the pipe must not take the server down with a failed print.
    let server = &stack.server;
    let (relay, uri) = (nwc.relay_url(), nwc.uri.expose_secret());
    let banner = format!(
        "  dev wallet API  http://{wallet}  (pays invoices of this dev network)\n\
         \x20 NWC wallet      relay {relay}, the same dev wallet over Nostr Wallet Connect;\n\
         \x20                 its connection URI (a secret; printed once, never logged):\n\
         \x20   {uri}\n\n\
         Try it from another terminal:\n\
         \x20   farebox pay http://{server}/joke --wallet http://{wallet}\n\
         \x20   FAREBOX_NWC_URI='<the URI above>' farebox pay http://{server}/joke --wallet nwc\n\
         \x20   curl -i http://{server}/joke      # the raw 402\n\n\
         Ctrl-C stops.\n"
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    // Stop on Ctrl-C or SIGTERM alike, so that the chain and the store are torn down by their
    // owners (a killed demo would leave its anvil running).
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    nwc.shutdown().await;
    drop(stack);
    drop(evm);
    Ok(())
}

fn heading(stack: &Stack, evm: Option<&stack::Evm>) {
    println!(
        "farebox demo: an HTTP API paid for per request, in sats over L402 and in USDC over x402 and an MPP session"
    );
    println!(
        "(Lightning: embedded dev node, real BOLT11 signatures and preimages, simulated routing;"
    );
    println!(
        " EVM: a local anvil chain with an EIP-3009 token, an in-process x402 facilitator and an MPP session escrow)\n"
    );
    println!("  upstream API    http://{}  (free; the thing being sold)", stack.upstream);
    println!("  paid server     http://{}  (farebox paywall in front of it)", stack.server);
    for p in stack::PRICES {
        let mut price = Vec::new();
        if let Some(sats) = p.sats {
            price.push(format!("{sats} sat"));
        }
        if let (Some(units), Some(evm)) = (p.usdc_units, evm) {
            price.push(Money::new(Asset::Token(evm.usdc()), units).to_string());
        }
        if !price.is_empty() {
            println!("                    {} {:<12} {}", p.method, p.pattern, price.join(" or "));
        }
    }
    println!(
        "  client wallet   Lightning dev node {}…, {} sat; budget 100 sat per request / 500 sat total",
        &stack.wallet_node.pubkey().to_string()[..16],
        stack::WALLET_OPENING_SATS
    );
    if let Some(evm) = evm {
        println!(
            "                  EVM account {:#x}, 100 USDC; budget 0.1 USDC per request / 1 USDC total",
            evm.payer.address()
        );
        println!(
            "  chain           {} (chain id {}), USDC at {:#x}",
            evm.anvil.url(),
            stack::CHAIN_ID,
            evm.token
        );
    }
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

/// One request through the paying client, narrated; its path and status.
async fn request(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> anyhow::Result<(String, u16)> {
    println!("    → GET {url}");
    let response = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let settlement = response
        .headers()
        .get("payment-response")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| farebox_x402::decode_header::<farebox_x402::v2::SettleResponse>(v).ok());
    let l402 = response
        .headers()
        .get(farebox_l402::L402_RECEIPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| farebox_l402::L402Receipt::decode(v).ok());
    let session = response
        .headers()
        .get("payment-receipt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| farebox_mpp::PaymentReceipt::decode(v).ok())
        .filter(|r| r.extensions.get("intent").and_then(|i| i.as_str()) == Some("session"));
    let body = response.text().await.unwrap_or_default();
    println!("    ← {status}  {}", body.trim());
    if let Some(r) = l402 {
        println!(
            "      L402-Receipt: {} paid to service {:?}, payment hash {}",
            Money::msats(r.amount_msat),
            r.service,
            short(&hex::encode(r.payment_hash))
        );
    }
    if let Some(r) = session {
        let field =
            |k: &str| r.extensions.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        println!(
            "      Payment-Receipt: channel {} accepted {} spent {} (base units)",
            short(&r.reference),
            field("acceptedCumulative"),
            field("spent")
        );
    }
    if let Some(s) = settlement {
        println!(
            "      PAYMENT-RESPONSE: settled on {} in transaction {}",
            s.network,
            short(&s.transaction)
        );
    }
    anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
    let path = url.parse::<reqwest::Url>().map_or_else(|_| url.to_string(), |u| u.path().into());
    Ok((path, status.as_u16()))
}

/// Sends the challenge's own macaroon with a made-up preimage and shows the server's answer.
/// The status the forged proof got.
async fn forged(base: &str) -> anyhow::Result<u16> {
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
    Ok(status.as_u16())
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
                println!("        {}", abbreviate(c));
            }
            for (rail, price, summary) in offers {
                println!("    · offer: {rail} {price} — {summary}");
            }
        }
        Event::Paying { rail, price, .. } => println!("    · paying {price} over {rail}"),
        Event::Paid { rail: "l402", fee, reference, .. } => {
            println!("    · paid: preimage received, payment hash {} (fee {fee})", short(reference))
        }
        Event::Paid { reference, .. } => {
            println!(
                "    · signed an EIP-3009 transferWithAuthorization, nonce {}",
                short(reference)
            )
        }
        Event::Retrying { rail: "l402", .. } => {
            println!("    → retrying with Authorization: L402 <macaroon>:<preimage>")
        }
        Event::Retrying { .. } => {
            println!("    → retrying with PAYMENT-SIGNATURE: <base64 payment payload>")
        }
        _ => {}
    }
}

/// Shortens long values (base64, invoices) in a challenge line for reading, quoted or not.
fn abbreviate(line: &str) -> String {
    fn shorten(text: &str, limit: usize) -> String {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() <= limit {
            return text.to_string();
        }
        let mut out: String = chars[..20].iter().collect();
        out.push('…');
        out.extend(&chars[chars.len() - 6..]);
        out
    }
    let mut out = String::with_capacity(line.len());
    for (i, text) in line.split('"').enumerate() {
        if i % 2 == 1 {
            out.push('"');
            out.push_str(&shorten(text, 28));
            out.push('"');
        } else {
            let words: Vec<String> = text.split(' ').map(|w| shorten(w, 40)).collect();
            out.push_str(&words.join(" "));
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
