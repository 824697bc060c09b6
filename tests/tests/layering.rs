//! Layering is a test: lower crates never depend on upper ones, and crates that must not know
//! the network or storage cannot reach them (see `tests/src/layering.rs` for the rules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::layering::{OWN_TREE_BANS, check, check_own_tree};
use serde_json::{Value, json};

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The workspace as it is obeys every layering rule.
#[test]
fn workspace_respects_layering() {
    let violations = check(&metadata());
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

/// The check is not vacuous: giving `sync-log` a dependency on iroh (as `cargo metadata` would
/// report it), or `sync-log` a dependency on `txn-manager`, makes it fail.
#[test]
fn check_catches_forbidden_edges() {
    let mut meta = metadata();
    let id_of = |meta: &Value, name: &str| -> String {
        meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{name} in metadata"))
    };
    let sync_log = id_of(&meta, "sync-log");
    let iroh = id_of(&meta, "iroh");
    let txn = id_of(&meta, "txn-manager");
    for node in meta["resolve"]["nodes"].as_array_mut().unwrap() {
        if node["id"] == sync_log.as_str() {
            let deps = node["deps"].as_array_mut().unwrap();
            for pkg in [&iroh, &txn] {
                deps.push(json!({"name": "x", "pkg": pkg, "dep_kinds": [{"kind": null}]}));
            }
        }
    }
    let violations = check(&meta);
    assert!(
        violations.iter().any(|v| v.contains("sync-log must not depend on iroh")),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.contains("sync-log (layer 0) depends on txn-manager")),
        "{violations:?}"
    );
}

fn own_tree(krate: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A user who depends on one crate alone gets only what that crate asks for: `sync-proto`
/// brings no SQLite, `syncable` and `library-models` no tokio, `leadership` no database.
#[test]
fn single_crates_do_not_pull_in_what_they_must_not_know() {
    let violations: Vec<String> = OWN_TREE_BANS
        .iter()
        .flat_map(|(krate, _)| check_own_tree(krate, &own_tree(krate)))
        .collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The own-tree check is not vacuous: `sync-log` with its default `store` feature reaches
/// diesel, and the check reports it when that tree is presented as `sync-proto`'s.
#[test]
fn own_tree_check_catches_storage() {
    let tree = own_tree("sync-log");
    let violations = check_own_tree("sync-proto", &tree);
    assert!(violations.iter().any(|v| v.contains("diesel")), "{violations:?}");
}
