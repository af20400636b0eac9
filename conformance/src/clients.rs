//! The client suite: a client under test is pointed at every chain scenario of the misbehaving
//! reference server ([`crate::misbehave::evm`]) in turn, and each scenario passes when what the
//! client paid to it, measured on chain, is what a correct client pays.
//!
//! A client is anything that implements [`ClientUnderTest`]; [`CommandClient`] makes one of any
//! command, in any language, that takes the URL as its last argument (or where the command says
//! `{url}`) and prints one JSON line — the shape the interop peers' client scripts print, e.g.
//! `{"status": 200, "body": "…", "paymentResponse": {…}}`. The line is recorded in the report,
//! never trusted: it says what the client saw, the chain says what it paid. The command learns
//! the chain from its environment (and from placeholders in the command):
//!
//! | variable | placeholder | value |
//! |---|---|---|
//! | `FAREBOX_CLIENT_URL` | `{url}` | the scenario's URL |
//! | `FAREBOX_CLIENT_RPC` | `{rpc}` | the chain's node (anvil, chain id 84532) |
//! | `FAREBOX_CLIENT_KEY` | `{key}` | the client's funded key (a public anvil development key) |
//! | `FAREBOX_CLIENT_TOKEN` | `{token}` | the token: EIP-3009, EIP-712 domain "USDC" version "2", 6 decimals |
//! | `FAREBOX_CLIENT_CHAIN_ID` | `{chain_id}` | 84532 |
//! | `FAREBOX_CLIENT_ESCROWS` | `{escrows}` | the session escrows a client's policy should allow, comma-separated |
//!
//! The command runs under `sh -c`; a placeholder becomes a quoted reference to its variable, so
//! no value is ever spliced into the shell's text.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::Verdict;
use crate::misbehave::evm::{Chain, EvmScenario, EvmServer, baseline, scenarios_on};

/// How long one run of a client may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of a client's output kept.
const MAX_OUTPUT: usize = 64 * 1024;

/// What the client under test is told besides the URL.
#[derive(Debug, Clone)]
pub struct ClientEnv {
    pub rpc: String,
    pub key: String,
    pub token: String,
    pub chain_id: u64,
    /// The session escrows the client should allow (not the foreign-escrow scenario's).
    pub escrows: Vec<String>,
}

impl ClientEnv {
    /// The environment for clients paying on `chain`.
    pub fn of(chain: &Chain) -> Self {
        ClientEnv {
            rpc: chain.rpc_url().to_string(),
            key: chain.payer_key().to_string(),
            token: format!("{:#x}", chain.token()),
            chain_id: crate::misbehave::evm::CHAIN_ID,
            escrows: chain.allowed_escrows().iter().map(|e| format!("{e:#x}")).collect(),
        }
    }
}

/// What the client said about one request: its exit, its JSON line, the tail of its stderr.
#[derive(Debug, Clone, Default)]
pub struct ClientRun {
    /// The exit status, when it exited (`None`: it could not start or was killed).
    pub exit: Option<i32>,
    /// The last JSON line it printed (stdout; else stderr, as `farebox pay --json` writes).
    pub line: Option<Value>,
    /// Why the run itself failed (could not start, timed out).
    pub error: Option<String>,
    /// The last lines of its stderr.
    pub stderr: String,
}

impl ClientRun {
    /// The HTTP status the client reports, if it does.
    pub fn status(&self) -> Option<u64> {
        self.line.as_ref()?.get("status")?.as_u64()
    }
}

/// A client under test.
#[async_trait]
pub trait ClientUnderTest: Send + Sync {
    /// Fetches `url` once, paying as the client sees fit.
    async fn fetch(&self, url: &str, env: &ClientEnv) -> ClientRun;
}

/// A client that is a command (see the module docs).
#[derive(Debug, Clone)]
pub struct CommandClient {
    command: String,
    timeout: Duration,
}

impl CommandClient {
    pub fn new(command: impl Into<String>) -> Self {
        CommandClient { command: command.into(), timeout: CLIENT_TIMEOUT }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The shell text run: placeholders as quoted variable references, the URL appended when
    /// the command does not place it.
    pub fn script(&self) -> String {
        let mut script = self.command.clone();
        for (placeholder, variable) in PLACEHOLDERS {
            script = script.replace(placeholder, &format!("\"${variable}\""));
        }
        if !self.command.contains("{url}") {
            script.push_str(" \"$FAREBOX_CLIENT_URL\"");
        }
        script
    }
}

const PLACEHOLDERS: [(&str, &str); 6] = [
    ("{url}", "FAREBOX_CLIENT_URL"),
    ("{rpc}", "FAREBOX_CLIENT_RPC"),
    ("{key}", "FAREBOX_CLIENT_KEY"),
    ("{token}", "FAREBOX_CLIENT_TOKEN"),
    ("{chain_id}", "FAREBOX_CLIENT_CHAIN_ID"),
    ("{escrows}", "FAREBOX_CLIENT_ESCROWS"),
];

/// The last line of `text` that is a JSON object.
fn last_json_line(text: &str) -> Option<Value> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(Value::is_object))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn bounded(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[async_trait]
impl ClientUnderTest for CommandClient {
    async fn fetch(&self, url: &str, env: &ClientEnv) -> ClientRun {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(self.script())
            .env("FAREBOX_CLIENT_URL", url)
            .env("FAREBOX_CLIENT_RPC", &env.rpc)
            .env("FAREBOX_CLIENT_KEY", &env.key)
            .env("FAREBOX_CLIENT_TOKEN", &env.token)
            .env("FAREBOX_CLIENT_CHAIN_ID", env.chain_id.to_string())
            .env("FAREBOX_CLIENT_ESCROWS", env.escrows.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so that a timeout ends whatever the shell started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                return ClientRun {
                    error: Some(format!("cannot start sh: {e}")),
                    ..Default::default()
                };
            }
        };
        let group = child.id();
        // On a timeout the future, and with it the shell (kill_on_drop), is dropped; the rest
        // of its group is killed here.
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return ClientRun {
                    error: Some(format!("waiting for it: {e}")),
                    ..Default::default()
                };
            }
            Err(_) => {
                if let Some(group) = group {
                    let _ = tokio::process::Command::new("kill")
                        .args(["-KILL", "--", &format!("-{group}")])
                        .stderr(Stdio::null())
                        .status()
                        .await;
                }
                let error = format!("killed after {:?}", self.timeout);
                return ClientRun { error: Some(error), ..Default::default() };
            }
        };
        let (stdout, stderr) = (bounded(&output.stdout), bounded(&output.stderr));
        ClientRun {
            exit: output.status.code(),
            line: last_json_line(&stdout).or_else(|| last_json_line(&stderr)),
            error: None,
            stderr: tail(&stderr, 5),
        }
    }
}

/// How a scenario went for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The chain shows it paid what a correct client pays.
    Pass,
    /// It paid something else.
    Fail,
    /// Not judged: the chain did not answer, or the client paid nothing where nothing is right
    /// but it did not pay its rail's honest scenario either (it cannot pay that rail, so its
    /// refusal proves nothing).
    Inconclusive,
}

impl Judgement {
    pub fn as_str(self) -> &'static str {
        match self {
            Judgement::Pass => "pass",
            Judgement::Fail => "fail",
            Judgement::Inconclusive => "inconclusive",
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct ScenarioOutcome {
    pub scenario: EvmScenario,
    /// What the client paid to the scenario, measured on chain (`None`: the chain did not
    /// answer, and the scenario is not judged).
    pub paid: Option<u128>,
    pub client: ClientRun,
    pub judgement: Judgement,
}

impl ScenarioOutcome {
    pub fn passed(&self) -> bool {
        self.judgement == Judgement::Pass
    }
}

/// Judges each outcome: a payment that is correct passes, unless it is a refusal to pay on a
/// rail whose honest scenario the client did not pay (or that did not run).
fn judge(outcomes: &mut [ScenarioOutcome]) {
    let paid_correctly = |o: &ScenarioOutcome| o.paid.is_some_and(|p| o.scenario.is_correct(p));
    let can_pay: Vec<&str> = outcomes
        .iter()
        .filter(|o| baseline(o.scenario.rail) == Some(o.scenario.path) && paid_correctly(o))
        .map(|o| o.scenario.rail)
        .collect();
    for o in outcomes.iter_mut() {
        o.judgement = match o.paid {
            None => Judgement::Inconclusive,
            Some(_) if !paid_correctly(o) => Judgement::Fail,
            Some(0) if !can_pay.contains(&o.scenario.rail) => Judgement::Inconclusive,
            Some(_) => Judgement::Pass,
        };
    }
}

/// The client suite's report.
#[derive(Debug, Clone)]
pub struct ClientReport {
    pub outcomes: Vec<ScenarioOutcome>,
    /// What left the client's key during the run, on chain.
    pub spent: Option<u128>,
}

/// Base units of the scenarios' 6-decimal token as a decimal string (`0.010000`).
pub fn usdc(amount: u128) -> String {
    format!("{}.{:06}", amount / 1_000_000, amount % 1_000_000)
}

impl ClientReport {
    fn count(&self, judgement: Judgement) -> usize {
        self.outcomes.iter().filter(|o| o.judgement == judgement).count()
    }

    pub fn failed(&self) -> usize {
        self.count(Judgement::Fail)
    }

    pub fn inconclusive(&self) -> usize {
        self.count(Judgement::Inconclusive)
    }

    /// Fail if a scenario failed; else incomplete if one was inconclusive; error if none ran.
    pub fn verdict(&self) -> Verdict {
        if self.outcomes.is_empty() {
            Verdict::Error
        } else if self.failed() > 0 {
            Verdict::Fail
        } else if self.inconclusive() > 0 {
            Verdict::Incomplete
        } else {
            Verdict::Pass
        }
    }

    /// What the scenarios were paid in all.
    pub fn paid(&self) -> u128 {
        self.outcomes.iter().filter_map(|o| o.paid).sum()
    }

    /// Every payment went to a scenario (nothing left the key for elsewhere).
    pub fn all_accounted(&self) -> bool {
        self.spent == Some(self.paid())
    }

    /// A table for people, with the verdict first.
    pub fn table(&self) -> String {
        let (failed, inconclusive) = (self.failed(), self.inconclusive());
        let verdict = match self.verdict() {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Error => "ERROR (no scenario ran)",
            Verdict::Incomplete => "INCOMPLETE",
        };
        let mut out = format!(
            "client suite: {verdict} ({} passed, {failed} failed, {inconclusive} inconclusive); USDC paid in all {}\n\n",
            self.outcomes.len() - failed - inconclusive,
            self.spent.map_or("unknown".into(), usdc),
        );
        out.push_str(&format!(
            "{:<4} {:<32} {:>10} {:>10} {:>6}  {}\n",
            "", "scenario", "paid", "correct", "status", "a correct client"
        ));
        for o in &self.outcomes {
            let correct: Vec<String> = o.scenario.correct.iter().map(|c| usdc(*c)).collect();
            let status = match (&o.client.error, o.client.status()) {
                (Some(_), _) => "error".to_string(),
                (None, Some(s)) => s.to_string(),
                (None, None)
                    if o.client.line.as_ref().is_some_and(|l| l.get("error").is_some()) =>
                {
                    "error".to_string()
                }
                (None, None) => {
                    format!("exit {}", o.client.exit.map_or("?".into(), |c| c.to_string()))
                }
            };
            out.push_str(&format!(
                "{:<4} {:<32} {:>10} {:>10} {:>6}  {}\n",
                match o.judgement {
                    Judgement::Pass => "ok",
                    Judgement::Fail => "FAIL",
                    Judgement::Inconclusive => "?",
                },
                o.scenario.path,
                o.paid.map_or("unknown".into(), usdc),
                correct.join("|"),
                status,
                o.scenario.correct_client,
            ));
            let said = o.client.line.as_ref().and_then(|l| l.get("error")).and_then(Value::as_str);
            if let Some(e) = o.client.error.as_deref().or(said) {
                let e: String = e.chars().take(160).collect();
                out.push_str(&format!("       client: {e}\n"));
            }
        }
        if inconclusive > 0 {
            out.push_str(
                "\n?: not judged: the chain did not answer, or nothing was paid where nothing is right by a client that did not pay the rail's honest scenario either\n",
            );
        }
        if !self.all_accounted() {
            out.push_str(&format!(
                "\nthe client's key spent {} but the scenarios were paid {}\n",
                self.spent.map_or("unknown".into(), usdc),
                usdc(self.paid())
            ));
        }
        out
    }

    /// The report as JSON: per scenario what was paid (base units, as strings) and what the
    /// client printed.
    pub fn to_json(&self) -> Value {
        let scenarios: Vec<Value> = self
            .outcomes
            .iter()
            .map(|o| {
                json!({
                    "path": o.scenario.path,
                    "rail": o.scenario.rail,
                    "misbehaviour": o.scenario.misbehaviour,
                    "correct_client": o.scenario.correct_client,
                    "correct_paid": o.scenario.correct.iter().map(u128::to_string).collect::<Vec<_>>(),
                    "paid": o.paid.map(|p| p.to_string()),
                    "judgement": o.judgement.as_str(),
                    "client": {
                        "exit": o.client.exit,
                        "line": o.client.line,
                        "error": o.client.error,
                        "stderr": o.client.stderr,
                    },
                })
            })
            .collect();
        json!({
            "verdict": format!("{:?}", self.verdict()).to_lowercase(),
            "spent": self.spent.map(|s| s.to_string()),
            "scenarios": scenarios,
        })
    }
}

/// Runs `client` against each scenario of `server` on `rails` (`x402`, `mpp`, `mpp-session`;
/// empty: all), in
/// order, measuring each scenario's payees on chain before and after.
pub async fn run(
    server: &EvmServer,
    client: &dyn ClientUnderTest,
    rails: &[String],
) -> ClientReport {
    let chain = server.chain();
    let env = ClientEnv::of(chain);
    let start = chain.balance(chain.payer()).await.ok();
    let mut outcomes = Vec::new();
    for scenario in scenarios_on(rails) {
        let before = chain.paid(scenario).await.ok();
        let url = format!("{}{}", server.url, scenario.path);
        let run = client.fetch(&url, &env).await;
        let after = chain.paid(scenario).await.ok();
        let paid = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        let judgement = Judgement::Inconclusive;
        outcomes.push(ScenarioOutcome { scenario: *scenario, paid, client: run, judgement });
    }
    judge(&mut outcomes);
    let end = chain.balance(chain.payer()).await.ok();
    let spent = start.zip(end).map(|(s, e)| s.saturating_sub(e));
    ClientReport { outcomes, spent }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> ClientEnv {
        ClientEnv {
            rpc: "http://127.0.0.1:8545".into(),
            key: "0xkey".into(),
            token: "0xtoken".into(),
            chain_id: 84_532,
            escrows: vec!["0xa".into(), "0xb".into()],
        }
    }

    #[tokio::test]
    async fn the_url_goes_last_unless_placed_and_values_reach_the_command_unspliced() {
        // A URL with shell syntax in it arrives as one argument, verbatim.
        let url = "http://127.0.0.1:1/x?a=1&b=$(touch /tmp/nope)";
        let printf = r#"printf '{"argv":"%s","rpc":"%s","escrows":"%s"}\n'"#;
        let appended =
            CommandClient::new(format!("{printf} {{rpc}} \"$FAREBOX_CLIENT_ESCROWS\" x"));
        let run = appended.fetch(url, &env()).await;
        // printf cycles its format: the last line is the one with the appended URL.
        let line = run.line.unwrap();
        assert_eq!(line["argv"], url, "{line}");
        assert_eq!(run.exit, Some(0));
        let placed = CommandClient::new(format!("{printf} {{url}} {{rpc}} {{escrows}}"));
        let line = placed.fetch(url, &env()).await.line.unwrap();
        assert_eq!(
            line,
            json!({"argv": url, "rpc": "http://127.0.0.1:8545", "escrows": "0xa,0xb"})
        );
    }

    #[tokio::test]
    async fn a_json_line_on_stderr_counts_when_stdout_has_none_and_a_slow_client_is_killed() {
        let pay_like =
            CommandClient::new(r#"echo body; echo '{"ok":true,"status":200}' >&2; true"#);
        let run = pay_like.fetch("http://x", &env()).await;
        assert_eq!(run.status(), Some(200));

        // A client that hangs is killed, with whatever it started.
        let pid_file =
            std::env::temp_dir().join(format!("farebox-slow-client-{}", std::process::id()));
        let slow =
            CommandClient::new(format!("sleep 30 & echo $! > '{}'; wait;", pid_file.display()))
                .timeout(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let run = slow.fetch("http://x", &env()).await;
        assert!(run.error.is_some() && run.exit.is_none(), "{run:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let sleeper = std::fs::read_to_string(&pid_file).unwrap();
        std::fs::remove_file(&pid_file).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Gone, or dead and waiting to be reaped (a container's init may be slow to).
        let state =
            std::fs::read_to_string(format!("/proc/{}/status", sleeper.trim())).unwrap_or_default();
        let running = state.lines().any(|l| l.starts_with("State:") && !l.contains("Z (zombie)"));
        assert!(!running, "the client's sleep {sleeper} outlived it: {state}");

        let silent = CommandClient::new("echo not json; exit 3;").fetch("http://x", &env()).await;
        assert_eq!((silent.exit, silent.line), (Some(3), None));
    }
}
