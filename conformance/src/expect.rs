//! Evaluating a check's [`Expect`] on the server's answer: everything generic here, the rest
//! asked of the rail's probe (its challenges, receipts, artifacts and named assertions).

use crate::Exchange;
use crate::check::Expect;
use crate::probe::Probe;
use crate::schema;

/// `Ok` when the answer shows everything `expect` asks for; otherwise what it does not.
pub fn evaluate(expect: &Expect, probe: &dyn Probe, exchange: &Exchange) -> Result<(), String> {
    let mut failures = Vec::new();
    let status = exchange.status.as_u16();
    if !expect.status.is_empty() && !expect.status.contains(&status) {
        failures.push(format!("status {status}, expected {}", list(&expect.status)));
    }
    if let Some(wanted) = expect.challenge {
        let has = probe.has_challenge(exchange);
        if has != wanted {
            failures.push(if wanted {
                format!("no fresh {} challenge on the answer", probe.rail())
            } else {
                format!("a {} challenge on the answer", probe.rail())
            });
        }
    }
    if expect.problem_json || !expect.problem_type.is_empty() {
        match problem(exchange) {
            Err(why) => failures.push(why),
            Ok(type_uri) => {
                if !expect.problem_type.is_empty()
                    && !expect.problem_type.iter().any(|t| type_uri.ends_with(t.as_str()))
                {
                    failures.push(format!(
                        "problem type {type_uri:?}, expected one ending in {}",
                        expect.problem_type.join(" or ")
                    ));
                }
            }
        }
    }
    if let Some((name, token)) = &expect.header_contains {
        let values: Vec<String> = exchange
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
            .collect();
        let token = token.to_ascii_lowercase();
        let has = values.iter().any(|v| {
            v.split(',').any(|part| part.trim().split('=').next() == Some(token.as_str()))
        });
        if !has {
            failures
                .push(format!("{name}: {:?}, expected it to contain {token}", values.join(", ")));
        }
    }
    if let Some(stated) = probe.stated_reason(exchange).filter(|s| is_code(s))
        && !expect.reason.is_empty()
        && !expect.reason.contains(&stated)
    {
        failures.push(format!(
            "refused for {stated}, not for the rule under test ({})",
            expect.reason.join(" or ")
        ));
    }
    if expect.no_receipt && probe.receipt(exchange).is_some() {
        failures.push(format!("a {} receipt on an answer that paid for nothing", probe.rail()));
    }
    if expect.receipt {
        match probe.receipt(exchange) {
            None => failures.push(format!("no {} receipt", probe.rail())),
            Some(Err(why)) => failures.push(format!("the receipt: {why}")),
            Some(Ok((path, value))) => {
                if let Err(why) = schema::validate(probe.schemas(), &path, &value) {
                    failures.push(format!("the receipt: {why}"));
                }
            }
        }
    }
    if let Some(kind) = &expect.schema {
        match probe.artifacts(exchange, kind) {
            Err(why) => failures.push(why),
            Ok(artifacts) if artifacts.is_empty() => failures.push(format!("no {kind} to check")),
            Ok(artifacts) => {
                for (path, value) in artifacts {
                    if let Err(why) = schema::validate(probe.schemas(), &path, &value) {
                        failures.push(why);
                    }
                }
            }
        }
    }
    if let Some(name) = &expect.assert
        && let Err(why) = probe.assert(name, exchange)
    {
        failures.push(why);
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

/// The problem `type` of an RFC 9457 body, or why the body is not one.
pub fn problem(exchange: &Exchange) -> Result<String, String> {
    let content_type = exchange
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/problem+json") {
        return Err(format!("content type {content_type:?}, expected application/problem+json"));
    }
    let body = exchange.json().ok_or("the problem+json body is not JSON")?;
    if let Err(why) = schema::validate(&[], "problem-details", &body) {
        return Err(format!("the problem body: {why}"));
    }
    Ok(body.get("type").and_then(|t| t.as_str()).unwrap_or("about:blank").to_string())
}

fn list(statuses: &[u16]) -> String {
    statuses.iter().map(u16::to_string).collect::<Vec<_>>().join(" or ")
}

/// Whether a stated reason is a machine code (`invalid_x402_version`), not prose.
pub fn is_code(reason: &str) -> bool {
    reason.contains('_')
        && reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether a stated reason says the payer could not pay: then a refusal proves nothing about
/// the rule under test.
pub fn for_want_of_funds(reason: &str) -> bool {
    reason == "insufficient_funds"
}
