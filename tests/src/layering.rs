//! The layering rules of the workspace, checked against `cargo metadata`.
//!
//! Each workspace crate has a layer; a crate may depend (normally, transitively) only on
//! workspace crates of a lower layer, and some crates are banned from third-party crates that
//! would give them knowledge they must not have (`sync-log` knows nothing of iroh, …).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The layer of each workspace crate: lower layers never depend on higher or equal ones
/// (except themselves).
pub const LAYERS: &[(&str, u8)] = &[
    ("sync-log", 0),
    ("syncable", 1),
    ("leadership", 1),
    ("sync-proto", 1),
    ("library-models", 2),
    ("txn-manager", 3),
    // An out-of-tree model crate, as a dependent writes one: it sits beside the write path.
    ("album-example", 3),
    ("sync-service", 4),
    ("sync-jobs", 5),
    ("sync-host", 6),
];

/// Third-party crates a workspace crate must not reach, even transitively.
pub const BANS: &[(&str, &[&str])] = &[
    ("sync-log", &["iroh", "quinn", "iroh-quinn"]),
    ("syncable", &["iroh", "quinn", "iroh-quinn", "hyper", "reqwest"]),
    ("leadership", &["diesel", "libsqlite3-sys", "iroh", "quinn", "iroh-quinn"]),
    ("library-models", &["iroh", "quinn", "iroh-quinn"]),
    ("txn-manager", &["iroh", "quinn", "iroh-quinn"]),
    ("album-example", &["iroh", "quinn", "iroh-quinn"]),
];

/// Crates a workspace crate must not reach *with its own features* (`cargo tree -p crate`,
/// which resolves features for that crate alone, as a user depending on it would): feature
/// unification in the workspace hides these edges from `cargo metadata`.
pub const OWN_TREE_BANS: &[(&str, &[&str])] = &[
    ("sync-proto", &["diesel", "libsqlite3-sys", "diesel_migrations"]),
    ("syncable", &["tokio", "iroh"]),
    ("library-models", &["tokio", "iroh"]),
    ("leadership", &["diesel", "libsqlite3-sys", "iroh"]),
];

/// Checks one crate's own dependency tree (`cargo tree -p krate -e normal --prefix none`
/// output) against [`OWN_TREE_BANS`]; returns the violations.
pub fn check_own_tree(krate: &str, tree: &str) -> Vec<String> {
    let reached: BTreeSet<&str> =
        tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    OWN_TREE_BANS
        .iter()
        .filter(|(name, _)| *name == krate)
        .flat_map(|(_, banned)| banned.iter())
        .filter(|b| reached.contains(**b))
        .map(|b| format!("{krate} reaches {b} with its own features"))
        .collect()
}

/// tokio features that mean networking: crates that must not know the network may not ask
/// tokio for them.
pub const TOKIO_NET_FEATURES: &[&str] = &["net", "full"];

/// Crates whose own `tokio` dependency must not request networking features.
pub const NO_TOKIO_NET: &[&str] = &["sync-log", "syncable", "leadership", "library-models"];

/// Checks `metadata` (the JSON of `cargo metadata --format-version 1`) and returns every
/// violation, one line each. Empty means the layering holds.
pub fn check(metadata: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new(); // package id -> name
    for p in metadata["packages"].as_array().into_iter().flatten() {
        if let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) {
            names.insert(id.to_owned(), name.to_owned());
        }
    }
    // Normal (non-dev, non-build) dependency edges by package name.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().into_iter().flatten() {
        let Some(from) = node["id"].as_str().and_then(|id| names.get(id)) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal =
                dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let (true, Some(to)) = (normal, dep["pkg"].as_str().and_then(|id| names.get(id))) {
                edges.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    let closure = |start: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.to_owned()];
        while let Some(n) = stack.pop() {
            for d in edges.get(&n).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();

    for (krate, own) in LAYERS {
        let reach = closure(krate);
        for dep in &reach {
            if let Some(&dep_layer) = layer.get(dep.as_str())
                && dep_layer >= *own
            {
                violations
                    .push(format!("{krate} (layer {own}) depends on {dep} (layer {dep_layer})"));
            }
        }
    }
    for (krate, banned) in BANS {
        let reach = closure(krate);
        for b in *banned {
            if reach.contains(*b) {
                violations.push(format!("{krate} must not depend on {b}, but reaches it"));
            }
        }
    }
    for p in metadata["packages"].as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else { continue };
        if !NO_TOKIO_NET.contains(&name) {
            continue;
        }
        for dep in p["dependencies"].as_array().into_iter().flatten() {
            if dep["name"] != "tokio" || dep["kind"].as_str() == Some("dev") {
                continue;
            }
            for f in dep["features"].as_array().into_iter().flatten() {
                if let Some(f) = f.as_str().filter(|f| TOKIO_NET_FEATURES.contains(f)) {
                    violations.push(format!("{name} asks tokio for networking feature {f:?}"));
                }
            }
        }
    }
    // Every workspace member must have a layer (so a new crate cannot slip past the rules),
    // apart from the maintainer tools and test crates.
    for id in metadata["workspace_members"].as_array().into_iter().flatten() {
        let Some(name) = id.as_str().and_then(|id| names.get(id)) else { continue };
        let exempt = ["xtask", "integration-tests", "syncable-fixture"];
        if !layer.contains_key(name.as_str()) && !exempt.contains(&name.as_str()) {
            violations
                .push(format!("workspace crate {name} has no layer in tests/src/layering.rs"));
        }
    }
    violations
}
