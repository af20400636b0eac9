//! The JSON Schemas of `specs/schemas/` (draft 2020-12), compiled in so the suite runs
//! anywhere, and validation against them. Schemas are self-contained (`$defs`, no remote
//! `$ref`), and `jsonschema` is built without resolvers: nothing is fetched.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// Every schema, by its path under `specs/schemas` without `.json`.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("discovery/openapi", include_str!("../../specs/schemas/discovery/openapi.json")),
    ("l402/caveats", include_str!("../../specs/schemas/l402/caveats.json")),
    ("l402/challenge", include_str!("../../specs/schemas/l402/challenge.json")),
    ("l402/receipt", include_str!("../../specs/schemas/l402/receipt.json")),
    ("mpp/challenge", include_str!("../../specs/schemas/mpp/challenge.json")),
    ("mpp/credential", include_str!("../../specs/schemas/mpp/credential.json")),
    ("mpp/payload/evm-charge", include_str!("../../specs/schemas/mpp/payload/evm-charge.json")),
    ("mpp/payload/evm-session", include_str!("../../specs/schemas/mpp/payload/evm-session.json")),
    (
        "mpp/payload/lightning-charge",
        include_str!("../../specs/schemas/mpp/payload/lightning-charge.json"),
    ),
    (
        "mpp/payload/lightning-session",
        include_str!("../../specs/schemas/mpp/payload/lightning-session.json"),
    ),
    ("mpp/receipt", include_str!("../../specs/schemas/mpp/receipt.json")),
    ("mpp/request/evm-charge", include_str!("../../specs/schemas/mpp/request/evm-charge.json")),
    ("mpp/request/evm-session", include_str!("../../specs/schemas/mpp/request/evm-session.json")),
    (
        "mpp/request/lightning-charge",
        include_str!("../../specs/schemas/mpp/request/lightning-charge.json"),
    ),
    (
        "mpp/request/lightning-session",
        include_str!("../../specs/schemas/mpp/request/lightning-session.json"),
    ),
    ("problem-details", include_str!("../../specs/schemas/problem-details.json")),
    ("x402/exact-evm-payload", include_str!("../../specs/schemas/x402/exact-evm-payload.json")),
    (
        "x402/facilitator/settle-request",
        include_str!("../../specs/schemas/x402/facilitator/settle-request.json"),
    ),
    (
        "x402/facilitator/settle-response",
        include_str!("../../specs/schemas/x402/facilitator/settle-response.json"),
    ),
    (
        "x402/facilitator/supported-response",
        include_str!("../../specs/schemas/x402/facilitator/supported-response.json"),
    ),
    (
        "x402/facilitator/verify-request",
        include_str!("../../specs/schemas/x402/facilitator/verify-request.json"),
    ),
    (
        "x402/facilitator/verify-response",
        include_str!("../../specs/schemas/x402/facilitator/verify-response.json"),
    ),
    ("x402/v1/payment-payload", include_str!("../../specs/schemas/x402/v1/payment-payload.json")),
    ("x402/v1/payment-required", include_str!("../../specs/schemas/x402/v1/payment-required.json")),
    (
        "x402/v1/payment-requirements",
        include_str!("../../specs/schemas/x402/v1/payment-requirements.json"),
    ),
    ("x402/v1/settle-response", include_str!("../../specs/schemas/x402/v1/settle-response.json")),
    ("x402/v2/payment-payload", include_str!("../../specs/schemas/x402/v2/payment-payload.json")),
    ("x402/v2/payment-required", include_str!("../../specs/schemas/x402/v2/payment-required.json")),
    (
        "x402/v2/payment-requirements",
        include_str!("../../specs/schemas/x402/v2/payment-requirements.json"),
    ),
    ("x402/v2/settle-response", include_str!("../../specs/schemas/x402/v2/settle-response.json")),
];

fn validators() -> &'static HashMap<&'static str, jsonschema::Validator> {
    static VALIDATORS: OnceLock<HashMap<&'static str, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|(path, text)| {
                let schema: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("specs/schemas/{path}.json: {e}"));
                let validator = jsonschema::draft202012::new(&schema)
                    .unwrap_or_else(|e| panic!("specs/schemas/{path}.json: {e}"));
                (*path, validator)
            })
            .collect()
    })
}

/// Whether a schema exists at `path`.
pub fn exists(path: &str) -> bool {
    SCHEMAS.iter().any(|(p, _)| *p == path)
}

/// `Ok` when `instance` is valid against the schema at `path`; otherwise the first few errors,
/// each with where in the instance it is.
pub fn validate(path: &str, instance: &Value) -> Result<(), String> {
    let Some(validator) = validators().get(path) else {
        return Err(format!("no schema {path}"));
    };
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("not a valid {path}: {}", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_validation_can_fail() {
        for (path, _) in SCHEMAS {
            assert!(validators().contains_key(path));
        }
        let problem = serde_json::json!({"type": "about:blank", "title": "x", "status": 402});
        assert_eq!(validate("problem-details", &problem), Ok(()));
        assert!(validate("problem-details", &serde_json::json!({"status": "402"})).is_err());
        assert!(validate("nope", &problem).is_err());
    }
}
