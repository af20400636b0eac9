//! `farebox token`: hand a narrower L402 token to another agent, and read what a token allows.
//!
//! - `farebox token attenuate [FILE] --path /weather/oslo --method GET --expires 1h
//!   --max-requests 10` appends caveats to a token (re-chaining its signature: no key needed) and
//!   prints the new token on stdout (or writes it with `--out FILE`, mode 0600).
//! - `farebox token inspect [FILE] [--json]` prints the token's identifier (version, payment hash,
//!   token id), every caveat and what they allow together, in words. It needs no key, so it
//!   cannot tell whether the signature is genuine; the server can.
//!
//! A token is a bearer secret, so it is read from `FILE` or from standard input (`-`, or no
//! argument), never from the command line, where other users of the machine can see it: a token
//! passed as an argument is refused. Nothing prints or logs it but `attenuate`'s output. A token
//! is the `Authorization` value `L402 <macaroon>:<preimage>`, the credential
//! `<macaroon>:<preimage>`, or a bare macaroon (standard or URL-safe base64); `attenuate` writes
//! the same form it read. The preimage is passed through unchanged: the delegate needs it, and it
//! grants nothing without a macaroon.
//!
//! Only farebox tokens (those with a `farebox_amount_msat` caveat) are attenuated: a server that
//! skips caveats it does not know, as Aperture does, would ignore the narrowing ones, and the
//! delegate would get more than the caveats say.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use farebox_l402::caveat::{self, Allowed, Condition, MAX_REQUEST_LIMITS};
use farebox_l402::credential::parse_credential;
use farebox_l402::identifier::{IDENTIFIER_VERSION, Identifier};
use farebox_l402::macaroon::{Macaroon, decode_base64};
use serde_json::json;

/// Longest token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Longest `--expires`: ten years.
const MAX_EXPIRES_SECS: u64 = 10 * 365 * 86400;

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Append caveats to an L402 token and print the narrower token.
    Attenuate(AttenuateArgs),
    /// Print a token's identifier, its caveats and what they allow.
    Inspect(InspectArgs),
}

#[derive(clap::Args)]
struct AttenuateArgs {
    /// File holding the token; `-` or nothing: standard input. Never the token itself.
    source: Option<String>,
    /// Only request paths this pattern matches: an exact path or `/prefix/*`, inside the route
    /// the token bought.
    #[arg(long)]
    path: Option<String>,
    /// Only this request method.
    #[arg(long)]
    method: Option<String>,
    /// Expire this long from now: `90s`, `15m`, `1h`, `7d` (or seconds).
    #[arg(long, value_name = "DURATION")]
    expires: Option<String>,
    /// At most this many requests, counted by the server across every token derived from this
    /// one.
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// Write the token to this new file (mode 0600) instead of standard output.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// File holding the token; `-` or nothing: standard input. Never the token itself.
    source: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Attenuate(a) => attenuate(a),
        TokenCommand::Inspect(a) => inspect(a),
    }
}

/// A token as read: `[scheme ]macaroon[:preimage]`.
struct TokenText {
    scheme: Option<String>,
    macaroon: String,
    preimage: Option<String>,
}

impl TokenText {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once([' ', '\t']) {
            Some((s, rest)) if ["L402", "LSAT"].iter().any(|k| k.eq_ignore_ascii_case(s)) => {
                (Some(s.to_string()), rest.trim())
            }
            _ => (None, text),
        };
        let (macaroon, preimage) = if rest.contains(':') {
            // The server's own credential parser, so that what is accepted here is accepted there.
            let value = format!("L402 {rest}");
            let cred =
                parse_credential(&value).map_err(|e| anyhow::anyhow!("not an L402 token: {e}"))?;
            let (_, preimage) = rest.rsplit_once(':').unwrap_or_default();
            (cred.macaroons.to_string(), Some(preimage.trim().to_string()))
        } else {
            (rest.to_string(), None)
        };
        if macaroon.contains(',') {
            bail!("this holds several macaroons; attenuate and inspect take one");
        }
        Ok(TokenText { scheme, macaroon, preimage })
    }

    /// The same form, with another macaroon.
    fn with_macaroon(&self, macaroon: &str) -> String {
        let mut out = String::new();
        if let Some(s) = &self.scheme {
            out.push_str(s);
            out.push(' ');
        }
        out.push_str(macaroon);
        if let Some(p) = &self.preimage {
            out.push(':');
            out.push_str(p);
        }
        out
    }
}

/// Reads the token from `source` (a file, or stdin), refusing a token given as the argument.
fn read_token(source: Option<&str>) -> anyhow::Result<TokenText> {
    let text = match source {
        None | Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_TOKEN_FILE)
                .read_to_string(&mut text)
                .context("reading the token from standard input")?;
            text
        }
        Some(arg) if !Path::new(arg).exists() && looks_like_token(arg) => bail!(
            "refusing a token on the command line, where other users can read it: put it in a \
             file (`farebox token inspect token.txt`) or pipe it (`… | farebox token inspect -`)"
        ),
        Some(file) => {
            let mut text = String::new();
            std::fs::File::open(file)
                .and_then(|f| f.take(MAX_TOKEN_FILE).read_to_string(&mut text))
                .with_context(|| format!("reading the token file {}", shown_path(file)))?;
            text
        }
    };
    if text.trim().is_empty() {
        bail!("no token: the input is empty");
    }
    TokenText::parse(&text)
}

/// Whether a command-line argument is a token rather than a file name.
fn looks_like_token(arg: &str) -> bool {
    TokenText::parse(arg)
        .is_ok_and(|t| t.scheme.is_some() || t.preimage.is_some() || decode(&t).is_ok())
}

/// A file name as shown in errors: not at all when it is long enough to be a mistyped token.
fn shown_path(file: &str) -> String {
    if file.len() <= 128 { format!("{file:?}") } else { "(name not shown)".into() }
}

fn decode(token: &TokenText) -> anyhow::Result<Vec<u8>> {
    let bytes = decode_base64(&token.macaroon).map_err(|e| anyhow::anyhow!("the macaroon: {e}"))?;
    let mac = Macaroon::decode(&bytes).map_err(|e| anyhow::anyhow!("the macaroon: {e}"))?;
    Identifier::decode(mac.identifier())
        .map_err(|e| anyhow::anyhow!("not an L402 macaroon: identifier: {e}"))?;
    Ok(bytes)
}

/// Seconds in `90s`, `15m`, `1h`, `7d` or `3600`.
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("--expires {text:?}: use a number and s, m, h or d (e.g. 1h)"),
    };
    let n: u64 = digits.parse().with_context(|| format!("--expires {text:?}"))?;
    match n.checked_mul(scale) {
        Some(secs) if secs > 0 && secs <= MAX_EXPIRES_SECS => Ok(secs),
        _ => bail!("--expires {text:?}: between 1 second and 10 years"),
    }
}

fn attenuate(args: AttenuateArgs) -> anyhow::Result<()> {
    let token = read_token(args.source.as_deref())?;
    let bytes = decode(&token)?;
    let mac = Macaroon::decode(&bytes)?;
    let allowed = Allowed::of(mac.caveats().map(|c| c.id));
    if allowed.amount_msat.is_none() {
        bail!(
            "not a farebox token (no farebox_amount_msat caveat): its server may skip caveats it \
             does not know, so the narrowing ones would be ignored"
        );
    }
    if allowed.allows_nothing() {
        bail!("this token allows nothing already: {}", nothing_reasons(&allowed).join("; "));
    }
    let mut added = Vec::new();
    if let Some(pattern) = &args.path {
        caveat::check_path_pattern(pattern)
            .map_err(|e| anyhow::anyhow!("--path {pattern:?}: {e}"))?;
        let Some(route) = allowed.route else {
            bail!("the token names no route, so a path cannot be checked to lie inside it");
        };
        if !caveat::pattern_within(pattern, route) {
            bail!("--path {pattern}: not inside the route the token bought, {route}");
        }
        if let Some(before) = allowed.path
            && !caveat::pattern_within(pattern, before)
        {
            bail!("--path {pattern}: not inside the paths the token already allows, {before}");
        }
        added.push(caveat::path(pattern));
    }
    if let Some(method) = &args.method {
        let method = method.to_ascii_uppercase();
        if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
            bail!("--method {method:?} is not an HTTP method");
        }
        if let Some(before) = allowed.method
            && before != method
        {
            bail!("--method {method}: the token only allows {before}");
        }
        added.push(caveat::method(&method));
    }
    if let Some(expires) = &args.expires {
        let secs = parse_duration(expires)?;
        let service = match allowed.services.as_deref() {
            Some([one]) => *one,
            _ => bail!("--expires needs a token for exactly one service"),
        };
        let until = farebox_core::time::unix_now()?.saturating_add(secs);
        if let Some(&(_, earlier)) = allowed.valid_until.iter().find(|(s, _)| *s == service)
            && earlier <= until
        {
            eprintln!(
                "note: the token already expires at {}, before this; the earlier time applies",
                farebox_core::time::format(earlier)
            );
        }
        added.push(caveat::valid_until(service, until));
    }
    if let Some(n) = args.max_requests {
        if n == 0 {
            bail!("--max-requests 0 would allow nothing");
        }
        if allowed.max_requests.len() >= MAX_REQUEST_LIMITS {
            bail!(
                "the token already has {MAX_REQUEST_LIMITS} request limits, the most a server counts"
            );
        }
        added.push(caveat::max_requests(n));
    }
    if added.is_empty() {
        bail!("nothing to add: pass --path, --method, --expires or --max-requests");
    }
    let narrowed = farebox_l402::attenuate(&token.macaroon, &added)?;
    let out = token.with_macaroon(&narrowed);
    match &args.out {
        Some(path) => write_secret(path, &out)?,
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{out}")?;
            stdout.flush()?;
        }
    }
    for c in &added {
        eprintln!("added caveat {c}");
    }
    Ok(())
}

/// Writes a new file readable by its owner only.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// What one caveat means, in words.
fn meaning(c: &[u8], now: u64) -> String {
    match caveat::parse(c) {
        Err(e) => format!("NOT understood by farebox ({e}): the token is refused"),
        Ok(Condition::Services(list)) => {
            let names: Vec<String> = list
                .split(',')
                .map(|entry| match entry.split_once(':').unwrap_or((entry, "0")) {
                    (name, "0") => name.to_string(),
                    (name, tier) => format!("{name} (tier {tier})"),
                })
                .collect();
            format!("for service {}", names.join(" or "))
        }
        Ok(Condition::Capabilities { service, list }) => {
            format!("capabilities [{list}] of service {service}")
        }
        Ok(Condition::ValidUntil { service, unix }) => {
            format!(
                "until {} ({}) for service {service}",
                farebox_core::time::format(unix),
                relative(unix, now)
            )
        }
        Ok(Condition::Route(route)) => format!("bought for route {route}"),
        Ok(Condition::Path(pattern)) => format!("only paths matching {pattern}"),
        Ok(Condition::Method(method)) => format!("only method {method}"),
        Ok(Condition::AmountMsat(msat)) => format!("paid {}", amount(msat)),
        Ok(Condition::MaxRequests(n)) => {
            format!("at most {n} requests with this token and those derived from it")
        }
    }
}

fn amount(msat: u64) -> String {
    farebox_core::Money::msats(msat).to_string()
}

fn relative(unix: u64, now: u64) -> String {
    if unix <= now {
        return "expired".into();
    }
    let left = unix - now;
    match left {
        0..120 => format!("in {left} s"),
        120..7200 => format!("in {} min", left / 60),
        7200..172_800 => format!("in {} h", left / 3600),
        _ => format!("in {} days", left / 86400),
    }
}

fn nothing_reasons(a: &Allowed<'_>) -> Vec<String> {
    let mut reasons = a.not_understood.clone();
    reasons.extend(a.contradictions.iter().cloned());
    if a.services.is_none() {
        reasons.push("no services caveat".into());
    }
    if a.amount_msat.is_none() {
        reasons.push("no farebox_amount_msat caveat (not a farebox token)".into());
    }
    reasons
}

/// What the caveats allow together, in one sentence.
fn summary(a: &Allowed<'_>, now: u64) -> String {
    if a.allows_nothing() {
        return format!("nothing: {}", nothing_reasons(a).join("; "));
    }
    let mut s = format!("{} requests", a.method.unwrap_or("any"));
    match (a.path, a.route) {
        (Some(path), _) => s.push_str(&format!(" to {path}")),
        (None, Some(route)) => s.push_str(&format!(" to {route}")),
        (None, None) => s.push_str(" to any priced route"),
    }
    if let Some(services) = &a.services {
        s.push_str(&format!(" of service {}", services.join(" or ")));
    }
    match a.valid_until.iter().map(|&(_, t)| t).min() {
        Some(t) if t <= now => {
            return format!("nothing: expired at {}", farebox_core::time::format(t));
        }
        Some(t) => {
            s.push_str(&format!(", until {} ({})", farebox_core::time::format(t), relative(t, now)))
        }
        None => s.push_str(", with no expiry"),
    }
    if let Some(n) = a.max_requests.iter().min() {
        s.push_str(&format!(", at most {n} requests"));
    }
    if let Some(msat) = a.amount_msat {
        s.push_str(&format!("; paid {}", amount(msat)));
    }
    s
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let token = read_token(args.source.as_deref())?;
    let bytes = decode(&token)?;
    let mac = Macaroon::decode(&bytes)?;
    let id = Identifier::decode(mac.identifier())?;
    let now = farebox_core::time::unix_now()?;
    let allowed = Allowed::of(mac.caveats().map(|c| c.id));
    let caveats: Vec<(String, String)> = mac
        .caveats()
        .map(|c| (String::from_utf8_lossy(c.id).into_owned(), meaning(c.id, now)))
        .collect();
    let location = mac.location().map(|l| String::from_utf8_lossy(l).into_owned());
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "version": IDENTIFIER_VERSION,
            "paymentHash": hex::encode(id.payment_hash),
            "tokenId": hex::encode(id.token_id),
            "location": location,
            "preimage": token.preimage.is_some(),
            "caveats": caveats.iter().map(|(c, m)| json!({"caveat": c, "meaning": m})).collect::<Vec<_>>(),
            "allows": {
                "nothing": allowed.allows_nothing(),
                "services": allowed.services,
                "route": allowed.route,
                "path": allowed.path,
                "method": allowed.method,
                "amountMsat": allowed.amount_msat,
                "validUntil": allowed.valid_until.iter().map(|&(_, t)| t).min(),
                "maxRequests": allowed.max_requests,
                "notUnderstood": allowed.not_understood,
                "contradictions": allowed.contradictions,
                "summary": summary(&allowed, now),
            },
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(stdout, "version       {IDENTIFIER_VERSION}")?;
    writeln!(stdout, "payment hash  {}", hex::encode(id.payment_hash))?;
    writeln!(stdout, "token id      {}", hex::encode(id.token_id))?;
    if let Some(l) = &location {
        writeln!(stdout, "location      {l}")?;
    }
    let preimage = if token.preimage.is_some() { "present (not shown)" } else { "absent" };
    writeln!(stdout, "preimage      {preimage}")?;
    writeln!(stdout, "caveats")?;
    let width = caveats.iter().map(|(c, _)| c.chars().count()).max().unwrap_or(0).min(60);
    for (i, (c, m)) in caveats.iter().enumerate() {
        writeln!(stdout, "  {:>2}. {c:<width$}  {m}", i + 1)?;
    }
    writeln!(stdout, "allows        {}", summary(&allowed, now))?;
    writeln!(stdout, "(the signature needs the server's key to check; inspect does not have it)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("3600").unwrap(), 3600);
        for bad in ["", "0", "1w", "-1h", "h", "99999999999999999999d", "11000d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_forms_round_trip() {
        let pre = "20".repeat(32);
        for text in [format!("L402 AgEE:{pre}"), format!("AgEE:{pre}"), "AgEE".to_string()] {
            let t = TokenText::parse(&format!("  {text}\n")).unwrap();
            assert_eq!(t.macaroon, "AgEE");
            assert_eq!(t.with_macaroon("AgEE"), text);
        }
        assert!(TokenText::parse(&format!("L402 a,b:{pre}")).is_err());
        assert!(TokenText::parse("L402 AgEE:12").is_err());
    }
}
