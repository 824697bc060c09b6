//! Zero-touch registration: a model registered in a crate that this test never names in code —
//! only `use syncable_fixture as _;`, the one line the `syncable` docs ask of every final
//! artifact — is found by the registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use syncable_fixture as _;

/// The fixture crate's model is in the registry built from `inventory`.
#[test]
fn model_in_unnamed_crate_is_registered() {
    let registry = syncable::Registry::from_inventory().unwrap();
    assert!(registry.knows("fixture_note"), "found: {:?}", registry.names().collect::<Vec<_>>());
}
