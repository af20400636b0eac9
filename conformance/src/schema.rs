//! JSON Schemas (draft 2020-12) and validation against them: the runner's own (problem
//! details, the discovery document) and those each probe brings ([`Probe::schemas`]), compiled
//! in so the suite runs anywhere. Schemas are self-contained (`$defs`, no remote `$ref`), and
//! `jsonschema` is built without resolvers: nothing is fetched.
//!
//! [`Probe::schemas`]: crate::probe::Probe::schemas

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::probe::Schema;

/// The runner's own schemas, by their path under `specs/schemas` without `.json`.
pub const GENERIC: &[Schema] = &[
    ("discovery/openapi", include_str!("../../specs/schemas/discovery/openapi.json")),
    ("problem-details", include_str!("../../specs/schemas/problem-details.json")),
];

/// The schema at `path`: the runner's own, or one of `schemas`.
fn find(schemas: &[Schema], path: &str) -> Option<&'static str> {
    GENERIC.iter().chain(schemas).find(|(p, _)| *p == path).map(|(_, text)| *text)
}

/// The validator of a schema's text, compiled once per process.
fn compiled(path: &str, text: &'static str) -> Result<Arc<jsonschema::Validator>, String> {
    static COMPILED: OnceLock<Mutex<HashMap<&'static str, Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let mut cache = COMPILED.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = cache.get(text) {
        return Ok(v.clone());
    }
    let schema: Value =
        serde_json::from_str(text).map_err(|e| format!("the schema {path} is not JSON: {e}"))?;
    let validator = jsonschema::draft202012::new(&schema)
        .map_err(|e| format!("the schema {path} does not compile: {e}"))?;
    let validator = Arc::new(validator);
    cache.insert(text, validator.clone());
    Ok(validator)
}

/// `Ok` when every schema of `schemas` compiles and has a path of its own (not one of the
/// runner's, not twice: another would be validated against in its place); otherwise why not.
pub fn compile(schemas: &[Schema]) -> Result<(), String> {
    for (i, (path, _)) in schemas.iter().enumerate() {
        if GENERIC.iter().chain(&schemas[..i]).any(|(p, _)| p == path) {
            return Err(format!("the schema path {path} is given twice"));
        }
    }
    schemas.iter().try_for_each(|(path, text)| compiled(path, text).map(|_| ()))
}

/// `Ok` when `instance` is valid against the schema at `path` (the runner's, or one of
/// `schemas`); otherwise the first few errors, each with where in the instance it is.
pub fn validate(schemas: &[Schema], path: &str, instance: &Value) -> Result<(), String> {
    let Some(text) = find(schemas, path) else {
        return Err(format!("no schema {path}"));
    };
    let validator = compiled(path, text)?;
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
        for (path, text) in GENERIC {
            assert!(compiled(path, text).is_ok(), "{path}");
        }
        assert!(compile(GENERIC).unwrap_err().contains("twice"), "the runner's are not a probe's");
        let mine: &[Schema] = &[("mine", "true"), ("mine", "false")];
        assert!(compile(mine).unwrap_err().contains("twice"));
        assert_eq!(compile(&mine[..1]), Ok(()));
        for probe in crate::probe::builtin::probes(&Default::default()) {
            assert_eq!(compile(probe.schemas()), Ok(()), "{}", probe.rail());
        }
        let problem = serde_json::json!({"type": "about:blank", "title": "x", "status": 402});
        assert_eq!(validate(&[], "problem-details", &problem), Ok(()));
        assert!(validate(&[], "problem-details", &serde_json::json!({"status": "402"})).is_err());
        assert!(validate(&[], "nope", &problem).is_err());
        assert!(compile(&[("broken", "{\"type\": 7}")]).is_err());
    }
}
