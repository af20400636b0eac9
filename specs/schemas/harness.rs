//! Loading and checking `specs/schemas` offline, for the crates' `tests/schemas.rs`, which
//! include this file with `#[path = "../../../specs/schemas/harness.rs"] mod harness;`.
//!
//! - [`assert_valid`] / [`assert_invalid`]: an instance against the schema at a path such as
//!   `"x402/v2/payment-required"` (draft 2020-12; `jsonschema` is built without remote or file
//!   resolution, so a `$ref` that leaves the file fails to compile).
//! - [`check_files`]: every schema under a directory is well formed (meta-schema, `$schema`,
//!   `$id`, `title`, `description`), and its golden examples (`examples/<path>.valid.json`)
//!   validate while its broken ones (`examples/<path>.invalid.json`) do not.
//! - [`check_shared_defs`]: a `$defs` entry copied into several files is the same everywhere.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";
const ID_BASE: &str = "https://farebox.dev/schemas/";

/// `specs/schemas/`.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs/schemas")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The schema at `path` (relative to `specs/schemas`, without `.json`).
pub fn load(path: &str) -> Value {
    read_json(&root().join(format!("{path}.json")))
}

/// A draft 2020-12 validator for the schema at `path`.
pub fn validator(path: &str) -> jsonschema::Validator {
    let schema = load(path);
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Why `instance` does not validate against `path` (empty when it does).
pub fn errors(path: &str, instance: &Value) -> Vec<String> {
    let v = validator(path);
    v.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// Panics, naming the schema, the errors and the instance, unless `instance` validates.
#[track_caller]
pub fn assert_valid(path: &str, instance: &Value) {
    let errs = errors(path, instance);
    assert!(errs.is_empty(), "{path} refuses {instance:#}:\n{}", errs.join("\n"));
}

/// Panics unless `instance` fails to validate against `path`.
#[track_caller]
pub fn assert_invalid(path: &str, instance: &Value) {
    assert!(!errors(path, instance).is_empty(), "{path} accepts {instance:#}");
}

/// Every schema path (no `.json`) under `dir` (`""` for all), sorted; examples and non-JSON
/// files are not schemas.
pub fn schema_files(dir: &str) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
            if path.is_dir() {
                if rel != "examples" {
                    walk(base, &path, out);
                }
            } else if let Some(stem) = rel.strip_suffix(".json") {
                out.push(stem.to_string());
            }
        }
    }
    let base = root();
    let mut out = Vec::new();
    walk(&base, &base.join(dir), &mut out);
    out.sort();
    out
}

/// Checks every schema under `dir` and its examples (see the module docs).
pub fn check_files(dir: &str) {
    let files = schema_files(dir);
    assert!(!files.is_empty(), "no schemas under {dir}");
    files.iter().for_each(|path| check_file(path));
}

/// Checks the schema at `path` and its examples (see the module docs).
pub fn check_file(path: &str) {
    let schema = load(path);
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("{path} is not a valid schema: {e}");
    }
    assert_eq!(schema["$schema"], DRAFT, "{path}: $schema");
    assert_eq!(schema["$id"], format!("{ID_BASE}{path}"), "{path}: $id");
    for member in ["title", "description"] {
        let text = schema[member].as_str().unwrap_or("");
        assert!(!text.is_empty(), "{path}: no {member}");
    }
    for (kind, valid) in [("valid", true), ("invalid", false)] {
        let file = root().join(format!("examples/{path}.{kind}.json"));
        let examples = read_json(&file);
        let examples = examples.as_array().unwrap_or_else(|| panic!("{}", file.display()));
        assert!(!examples.is_empty(), "{}: no examples", file.display());
        for e in examples {
            let label = if valid { &e["source"] } else { &e["why"] };
            assert!(label.is_string(), "{}: an example without source/why", file.display());
            let errs = errors(path, &e["instance"]);
            assert_eq!(errs.is_empty(), valid, "{path} {kind} example {label}: {errs:?}");
        }
    }
}

/// A `$defs` entry of the same name is identical in every schema file that has it.
pub fn check_shared_defs() {
    let mut seen: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for path in schema_files("") {
        let schema = load(&path);
        let Some(defs) = schema["$defs"].as_object() else { continue };
        for (name, def) in defs {
            match seen.get(name) {
                Some((first, v)) => {
                    assert_eq!(v, def, "$defs/{name} differs in {first} and {path}")
                }
                None => {
                    seen.insert(name.clone(), (path.clone(), def.clone()));
                }
            }
        }
    }
}
