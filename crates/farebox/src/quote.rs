//! `farebox quote <url>`: consent before paying. Prints every offer of the server's 402 (rail,
//! amount in its asset, the fee bound, the payee, what the price buys), whether the wallet's
//! policy and caps allow it, and which one `farebox pay` would choose and why. Pays nothing and
//! reserves nothing.
//!
//! Exit codes are `pay`'s: 0 when a payment would go through (or none is asked), else the code
//! `pay` would end with before paying (3 over budget, 4 no payable offer, …).

use std::time::Duration;

use farebox_client::Quote;
use farebox_core::{Asset, Money};
use serde_json::json;

use crate::pay::{self, Exit, Failure, Payer, RequestArgs, WalletArgs};

#[derive(clap::Args)]
pub struct QuoteArgs {
    #[command(flatten)]
    request: RequestArgs,
    #[command(flatten)]
    wallet: WalletArgs,
    /// Quote as `pay --max AMOUNT` would choose (repeatable).
    #[arg(long = "max", value_name = "AMOUNT")]
    max: Vec<String>,
    /// Print the quote as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: QuoteArgs) -> u8 {
    match quote(&args).await {
        Ok(exit) => exit.code(),
        Err(f) => {
            if args.json {
                eprintln!(
                    "{}",
                    json!({ "ok": false, "error": f.exit.name(), "exit": f.exit.code(), "message": f.message })
                );
            } else {
                eprintln!("error: {}", f.message);
            }
            f.exit.code()
        }
    }
}

async fn quote(args: &QuoteArgs) -> Result<Exit, Failure> {
    let config = args.wallet.config(100, 10)?;
    let max = pay::max_amounts(&config, &args.max, None)?;
    let payer = pay::payer(&config, &max).await?;
    let (quote, exit) = ask(&payer, &args.request).await?;
    let skipped = payer.skipped;
    if args.json {
        println!("{}", to_json(&quote, &skipped));
    } else {
        print_quote(&quote, &skipped);
    }
    Ok(exit)
}

/// Sends `request` without paying: every offer, and what `payer` would choose, with the exit
/// code `pay` would end with before paying. What `farebox quote` and the MCP `quote` tool share.
pub async fn ask(payer: &Payer, request: &RequestArgs) -> Result<(Quote, Exit), Failure> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    let request = request.build(&http)?;
    let quote = payer.middleware.quote(&http, request).await?;
    let exit = match (&quote.choice, &quote.refusal) {
        (None, Some(refusal)) => Exit::of_client(refusal),
        _ => Exit::Ok,
    };
    Ok((quote, exit))
}

/// An amount with its asset, as JSON: base units exactly, and for people.
pub fn money(m: &Money) -> serde_json::Value {
    let asset = match &m.asset {
        Asset::Bitcoin => {
            json!({ "kind": "bitcoin", "unit": "msat", "decimals": 3, "symbol": "sat" })
        }
        Asset::Token(t) => json!({
            "kind": "token", "network": t.network, "address": t.address,
            "symbol": t.symbol, "decimals": t.decimals,
        }),
        _ => json!({ "kind": "other" }),
    };
    json!({ "amount": m.amount.to_string(), "display": m.to_string(), "asset": asset })
}

pub fn to_json(quote: &Quote, skipped: &[String]) -> serde_json::Value {
    let offers: Vec<_> = quote
        .offers
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({
                "rail": o.rail,
                "key": o.key,
                "price": money(&o.price),
                "max_fee": money(&o.max_fee),
                "deposit": o.deposit.as_ref().map(money),
                "payee": o.payee,
                "buys": o.buys,
                "summary": o.summary,
                "rank": o.rank,
                "allowed": o.refused.is_none(),
                "refused": o.refused.as_ref().map(|e| e.to_string()),
                "chosen": quote.choice.as_ref().is_some_and(|c| c.index == i),
            })
        })
        .collect();
    json!({
        "url": quote.url,
        "status": quote.status,
        "payment_required": quote.status == 402,
        "offers": offers,
        "choice": quote.choice.as_ref().map(|c| json!({ "index": c.index, "reason": c.reason })),
        "refusal": quote.refusal.as_ref().map(|e| e.to_string()),
        "notes": skipped,
    })
}

fn print_quote(quote: &Quote, skipped: &[String]) {
    for why in skipped {
        println!("note: {why}");
    }
    if quote.status != 402 {
        println!("{} answers {} without payment: nothing to pay", quote.url, quote.status);
        return;
    }
    println!("{} asks for payment (402). Offers:", quote.url);
    let mut order: Vec<usize> = (0..quote.offers.len()).collect();
    order.sort_by_key(|&i| quote.offers[i].rank);
    for i in order {
        let o = &quote.offers[i];
        let chosen = quote.choice.as_ref().is_some_and(|c| c.index == i);
        let mark = if chosen { "*" } else { " " };
        println!("{mark} {:<12} {} (fee at most {})", o.key, o.price, o.max_fee);
        if let Some(d) = &o.deposit {
            println!("      deposit  {d} now, the unspent part refunded at close");
        }
        if let Some(p) = &o.payee {
            println!("      payee    {p}");
        }
        if let Some(b) = &o.buys {
            println!("      buys     {b}");
        }
        println!("      {}", o.summary);
        if let Some(why) = &o.refused {
            println!("      refused  {why}");
        }
    }
    match (&quote.choice, &quote.refusal) {
        (Some(c), _) => {
            let o = &quote.offers[c.index];
            println!("pay would choose {} {}: {}", o.key, o.price, c.reason);
        }
        (None, Some(why)) => println!("pay would pay nothing: {why}"),
        (None, None) => println!("pay would pay nothing"),
    }
    println!("(nothing was paid)");
}
