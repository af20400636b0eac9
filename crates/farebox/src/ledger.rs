//! `farebox ledger`: every payment, deposit, session payment and refund the wallet made, from
//! its store; filtered by host and time, printed as a table or exported as CSV or JSON.
//! `farebox wallet init` and `farebox wallet budget` live here too (they read the same file).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use farebox_client::{Budget, BudgetStore, LedgerEntry, LedgerFilter, SqliteStore};
use farebox_core::{Asset, Money};
use serde_json::json;

use crate::pay::{Exit, Failure};
use crate::wallet_file::{self, WalletConfig};

#[derive(clap::Args)]
pub struct LedgerArgs {
    /// The wallet file (default: $FAREBOX_WALLET, $XDG_CONFIG_HOME/farebox/wallet.toml,
    /// ~/.config/farebox/wallet.toml).
    #[arg(long = "wallet-file", value_name = "PATH")]
    wallet_file: Option<PathBuf>,
    /// Only entries for this host (`host` or `host:port`).
    #[arg(long)]
    host: Option<String>,
    /// Only entries at or after this time: RFC 3339, or a duration ago (`24h`, `30m`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Only entries before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Export as CSV.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Export as JSON.
    #[arg(long)]
    json: bool,
    /// Include the proofs sent (bearer secrets: an L402 token is reusable until it expires).
    #[arg(long)]
    proofs: bool,
}

/// `RFC 3339` or `<n>{s,m,h,d}` ago.
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let t = text.trim();
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
        let number = &t[..t.len() - 1];
        if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            let n: u64 = number.parse().map_err(|_| format!("{text:?}: too large"))?;
            let unit_secs = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => 86_400,
            };
            let ago = n.checked_mul(unit_secs).ok_or_else(|| format!("{text:?}: too large"))?;
            return Ok(now.checked_sub(Duration::from_secs(ago)).unwrap_or(UNIX_EPOCH));
        }
    }
    farebox_core::time::parse(t)
        .map(|unix| UNIX_EPOCH + Duration::from_secs(unix))
        .map_err(|e| format!("{text:?}: {e} (or a duration ago such as 24h)"))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn open(path: Option<PathBuf>) -> Result<(WalletConfig, Arc<SqliteStore>), Failure> {
    let path = path
        .or_else(wallet_file::default_path)
        .ok_or_else(|| Failure::bad_input("no wallet file: set FAREBOX_WALLET or HOME"))?;
    let config = WalletConfig::load(&path)?;
    if config.store.exists() {
        wallet_file::check_private(&config.store)?;
    }
    let store = Arc::new(SqliteStore::open(&config.store)?);
    Ok((config, store))
}

pub fn run(args: LedgerArgs) -> Result<(), Failure> {
    let (_, store) = open(args.wallet_file.clone())?;
    let now = SystemTime::now();
    let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose();
    let filter = LedgerFilter {
        host: args.host.clone(),
        since: time(&args.since).map_err(Failure::bad_input)?,
        until: time(&args.until).map_err(Failure::bad_input)?,
    };
    let entries = store.entries(&filter)?;
    let unsettled = store.unsettled()?;
    if args.csv {
        print!("{}", csv(&entries, args.proofs));
    } else if args.json {
        let rows: Vec<_> = entries.iter().map(|e| entry_json(e, args.proofs)).collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print_table(&entries);
        for u in &unsettled {
            println!(
                "unsettled: reservation {} of {} for {} at {} (process {} stopped mid-payment): still counted",
                u.id,
                Money::new(u.asset.clone(), u.amount),
                u.host,
                farebox_core::time::format(unix(u.at)),
                u.owner
            );
        }
    }
    Ok(())
}

fn asset_text(a: &Asset) -> String {
    match a {
        Asset::Bitcoin => "bitcoin".into(),
        Asset::Token(t) => format!("{}/{}", t.network, t.address),
        _ => "other".into(),
    }
}

pub fn entry_json(e: &LedgerEntry, proofs: bool) -> serde_json::Value {
    let mut v = json!({
        "id": e.id,
        "time": farebox_core::time::format(unix(e.at)),
        "host": e.host,
        "url": e.url,
        "rail": e.rail,
        "kind": e.kind.as_str(),
        "asset": asset_text(&e.amount.asset),
        "symbol": e.amount.asset.symbol(),
        "amount": e.amount.amount.to_string(),
        "amount_display": e.amount.to_string(),
        "fee": e.fee.amount.to_string(),
        "fee_display": e.fee.to_string(),
        "reference": e.reference,
        "receipt": e.receipt,
    });
    if proofs {
        v["proof"] = json!(e.proof);
    }
    v
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn csv(entries: &[LedgerEntry], proofs: bool) -> String {
    let mut out = String::from(
        "id,time,host,url,rail,kind,asset,symbol,amount,amount_display,fee,fee_display,reference,receipt",
    );
    if proofs {
        out.push_str(",proof");
    }
    out.push('\n');
    for e in entries {
        let mut fields = vec![
            e.id.to_string(),
            farebox_core::time::format(unix(e.at)),
            e.host.clone(),
            e.url.clone(),
            e.rail.clone(),
            e.kind.as_str().into(),
            asset_text(&e.amount.asset),
            e.amount.asset.symbol().into(),
            e.amount.amount.to_string(),
            e.amount.to_string(),
            e.fee.amount.to_string(),
            e.fee.to_string(),
            e.reference.clone(),
            e.receipt.clone().unwrap_or_default(),
        ];
        if proofs {
            fields.push(e.proof.clone().unwrap_or_default());
        }
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn print_table(entries: &[LedgerEntry]) {
    if entries.is_empty() {
        println!("no entries");
        return;
    }
    println!(
        "{:>4}  {:<20}  {:<22}  {:<5}  {:<8}  {:>14}  {:>10}  reference",
        "id", "time (UTC)", "host", "rail", "kind", "amount", "fee"
    );
    for e in entries {
        println!(
            "{:>4}  {:<20}  {:<22}  {:<5}  {:<8}  {:>14}  {:>10}  {}",
            e.id,
            farebox_core::time::format(unix(e.at)),
            e.host,
            e.rail,
            e.kind.as_str(),
            e.amount.to_string(),
            e.fee.to_string(),
            e.reference
        );
    }
}

#[derive(clap::Subcommand)]
pub enum WalletCommand {
    /// Write an annotated wallet file (never over an existing one), readable by you only.
    Init {
        /// Where (default: $FAREBOX_WALLET, $XDG_CONFIG_HOME/farebox/wallet.toml,
        /// ~/.config/farebox/wallet.toml).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// What each cap has left, per asset (for a host, with --host).
    Budget {
        #[arg(long = "wallet-file", value_name = "PATH")]
        wallet_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        host: String,
    },
}

pub fn wallet(command: WalletCommand) -> Result<(), Failure> {
    match command {
        WalletCommand::Init { path } => {
            let path = path.or_else(wallet_file::default_path).ok_or_else(|| {
                Failure::bad_input("no place for a wallet file: set FAREBOX_WALLET or HOME")
            })?;
            wallet_file::init(&path).map_err(|e| match e {
                wallet_file::WalletFileError::Exists(_) => Failure::bad_input(e.to_string()),
                other => Failure::new(Exit::Failed, other.to_string()),
            })?;
            println!("wrote {} (mode 600); edit it, then `farebox quote URL`", path.display());
            Ok(())
        }
        WalletCommand::Budget { wallet_file, host } => {
            let (config, store) = open(wallet_file)?;
            let budget = config.caps.iter().cloned().fold(Budget::with_store(store), Budget::limit);
            for caps in &config.caps {
                let asset = caps.asset();
                println!(
                    "{}: at most {} per request; counted {}",
                    asset.symbol(),
                    caps.per_request(),
                    budget.spent(asset)
                );
                for (cap, left) in budget.left(asset, &host)? {
                    let window = cap.window.map_or("in all".to_string(), |w| {
                        format!("per {}", farebox_client::window_name(w))
                    });
                    let scope = match cap.scope {
                        farebox_client::Scope::AllHosts => "",
                        farebox_client::Scope::PerHost => " per host",
                    };
                    println!(
                        "  {} {window}{scope}: {left} left",
                        Money::new(asset.clone(), cap.amount)
                    );
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("24h", now).unwrap(), now - Duration::from_secs(86_400));
        assert_eq!(parse_time("30m", now).unwrap(), now - Duration::from_secs(1800));
        assert_eq!(parse_time("7d", now).unwrap(), now - Duration::from_secs(7 * 86_400));
        assert_eq!(
            parse_time("1970-01-12T13:46:40Z", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_000_000)
        );
        for bad in ["yesterday", "24x", "h", "-1h", "2024-13-01T00:00:00Z"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
