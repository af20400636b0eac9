//! `farebox token attenuate` and `farebox token inspect` as an agent runs them: the token comes
//! in on stdin or from a file (never argv), the narrowed token goes out on stdout in the form it
//! came in, and a server enforces what was added.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use farebox_core::time::unix_now;
use farebox_core::{Money, PresentedCredential, Price, Rail, Resource};
use farebox_l402::identifier::Identifier;
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail, L402Verifier, format_credential};
use farebox_lightning::{DevNetwork, DevNode};
use serde_json::Value;

const MASTER: [u8; 32] = [0x42; 32];
const PREIMAGE: [u8; 32] = [0x20; 32];
const TOKEN_ID: [u8; 32] = [0x40; 32];

fn farebox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farebox"))
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = farebox()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn config() -> L402Config {
    L402Config::new("weather", Arc::new(DerivedRootKeys::new(&MASTER).unwrap()))
}

fn resource(method: &str, path: &str) -> Resource {
    Resource {
        method: method.parse().unwrap(),
        path: path.into(),
        route: Arc::from("/weather/*"),
        price: Price::one(Money::sats(10)),
        description: None,
        accept_payment: None,
    }
}

/// A token the server would mint for `GET /weather/*`, as `L402 <macaroon>:<preimage>`.
fn bought() -> String {
    let verifier = L402Verifier::new(config()).unwrap();
    let hash = farebox_lightning::sha256(&PREIMAGE);
    let mac = verifier
        .mint_token_with_id(
            Identifier::new(hash, TOKEN_ID),
            10_000,
            &resource("GET", "/weather/oslo"),
            unix_now().unwrap(),
        )
        .unwrap();
    format_credential(&mac.to_base64(), &PREIMAGE)
}

/// A rail instance with its own in-memory store, as the server that sold the token.
fn server() -> Arc<L402Rail> {
    let store = Arc::new(farebox_store::MemoryStore::new());
    let node = DevNode::random(&DevNetwork::new(), 0);
    Arc::new(L402Rail::new(config().with_store(store), Arc::new(node)).unwrap())
}

async fn verify(
    rail: &Arc<L402Rail>,
    method: &str,
    path: &str,
    credential: &str,
) -> Result<(), String> {
    let presented = PresentedCredential {
        header: http::header::AUTHORIZATION,
        auth: None,
        value: credential.trim().to_string(),
    };
    rail.clone()
        .verify(&resource(method, path), &presented)
        .await
        .map(|_| ())
        .map_err(|e| e.code.into())
}

#[tokio::test]
async fn an_attenuated_token_from_stdin_is_enforced_by_the_server() {
    let token = bought();
    let out = run(
        &[
            "token",
            "attenuate",
            "--path",
            "/weather/oslo",
            "--method",
            "get",
            "--expires",
            "1h",
            "--max-requests",
            "2",
        ],
        &format!("{token}\n"),
    );
    let narrowed = stdout(&out);
    // The same form: scheme, new macaroon, the same preimage; the input token is not echoed.
    assert!(narrowed.starts_with("L402 "), "{narrowed}");
    assert!(narrowed.trim_end().ends_with(&format!(":{}", hex::encode(PREIMAGE))));
    assert_ne!(narrowed.trim(), token);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token.split(':').next().unwrap()));

    let rail = server();
    assert_eq!(verify(&rail, "GET", "/weather/rome", &narrowed).await, Err("wrong_path".into()));
    assert_eq!(verify(&rail, "GET", "/weather/oslo", &narrowed).await, Ok(()));
    assert_eq!(verify(&rail, "GET", "/weather/oslo", &narrowed).await, Ok(()));
    assert_eq!(
        verify(&rail, "GET", "/weather/oslo", &narrowed).await,
        Err("request_limit_reached".into())
    );
    // The original still pays for the whole route.
    assert_eq!(verify(&rail, "GET", "/weather/rome", &token).await, Ok(()));

    // inspect reads what was added.
    let shown: Value =
        serde_json::from_str(&stdout(&run(&["token", "inspect", "--json"], &narrowed))).unwrap();
    assert_eq!(shown["tokenId"], hex::encode(TOKEN_ID));
    assert_eq!(shown["paymentHash"], hex::encode(farebox_lightning::sha256(&PREIMAGE)));
    assert_eq!(shown["version"], 0);
    assert_eq!(shown["preimage"], true);
    let allows = &shown["allows"];
    assert_eq!(allows["nothing"], false);
    assert_eq!(allows["route"], "/weather/*");
    assert_eq!(allows["path"], "/weather/oslo");
    assert_eq!(allows["method"], "GET");
    assert_eq!(allows["amountMsat"], 10_000);
    assert_eq!(allows["maxRequests"], serde_json::json!([2]));
    let until = allows["validUntil"].as_u64().unwrap();
    let now = unix_now().unwrap();
    assert!(until > now && until <= now + 3600, "{until}");
    let caveats: Vec<&str> = shown["caveats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["caveat"].as_str().unwrap())
        .collect();
    assert_eq!(
        &caveats[caveats.len() - 4..],
        [
            "farebox_path=/weather/oslo",
            "farebox_method=GET",
            &format!("weather_valid_until={until}"),
            "farebox_max_requests=2"
        ]
    );
}

#[tokio::test]
async fn a_token_file_and_the_bare_credential_form_work_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token.txt");
    let credential = bought().strip_prefix("L402 ").unwrap().to_string();
    std::fs::write(&file, &credential).unwrap();
    let out_file = dir.path().join("delegate.txt");
    let out = run(
        &[
            "token",
            "attenuate",
            file.to_str().unwrap(),
            "--path",
            "/weather/eu/*",
            "-o",
            out_file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(stdout(&out), "", "the token goes to the file only");
    let narrowed = std::fs::read_to_string(&out_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!narrowed.starts_with("L402"), "bare credential in, bare credential out");
    let rail = server();
    let with_scheme = format!("L402 {}", narrowed.trim());
    assert_eq!(verify(&rail, "GET", "/weather/eu/oslo", &with_scheme).await, Ok(()));
    assert_eq!(
        verify(&rail, "GET", "/weather/us/nyc", &with_scheme).await,
        Err("wrong_path".into())
    );
    // Text output names the token id and each caveat.
    let text = stdout(&run(&["token", "inspect", out_file.to_str().unwrap()], ""));
    assert!(text.contains(&hex::encode(TOKEN_ID)), "{text}");
    assert!(text.contains("farebox_path=/weather/eu/*"), "{text}");
    assert!(!text.contains(&hex::encode(PREIMAGE)), "the preimage is never printed");
}

#[test]
fn a_token_on_the_command_line_is_refused_without_echoing_it() {
    let token = bought();
    let macaroon = token.strip_prefix("L402 ").unwrap().split(':').next().unwrap();
    for arg in [token.as_str(), macaroon, token.strip_prefix("L402 ").unwrap()] {
        for sub in [&["token", "inspect"][..], &["token", "attenuate", "--method", "GET"][..]] {
            let mut args = sub.to_vec();
            args.insert(2, arg);
            let out = run(&args, "");
            assert!(!out.status.success());
            assert!(out.stdout.is_empty());
            assert!(!String::from_utf8_lossy(&out.stderr).contains(macaroon));
        }
    }
}

#[test]
fn attenuation_that_would_widen_or_mislead_is_refused() {
    let token = bought();
    for args in [
        // Outside the route the token bought.
        &["token", "attenuate", "--path", "/maps/*"][..],
        &["token", "attenuate", "--path", "/*"],
        // Not a pattern.
        &["token", "attenuate", "--path", "/weather/../admin"],
        // Another method than the one the token allows.
        &["token", "attenuate", "--method", "POST"],
        &["token", "attenuate", "--max-requests", "0"],
        &["token", "attenuate", "--expires", "soon"],
        // Nothing to add.
        &["token", "attenuate"],
    ] {
        let out = run(args, &token);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A token that is not farebox's (no amount caveat): its server may skip unknown caveats.
    let foreign = "L402 AgEEbHNhdAJCAABy27czbHZ4ACP4PaTDVfLu6oVzOxPTR3aXkXeQwSKQhEBBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fAAIUc2VydmljZXM9bXlzZXJ2aWNlOjAAAiFteXNlcnZpY2VfY2FwYWJpbGl0aWVzPXJlYWQsd3JpdGUAAiBteXNlcnZpY2VfdmFsaWRfdW50aWw9MTg5MzQ1NjAwMAAABiADZATegsHbEm6I9VC7S3BktVRNOic4Hy0GCeZnapoj7g==:202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
    let out = run(&["token", "attenuate", "--max-requests", "3"], foreign);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    // inspect still reads it, and says it allows nothing on farebox.
    let shown: Value =
        serde_json::from_str(&stdout(&run(&["token", "inspect", "--json"], foreign))).unwrap();
    assert_eq!(shown["allows"]["nothing"], true);
    assert_eq!(
        shown["tokenId"],
        "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    );
}
