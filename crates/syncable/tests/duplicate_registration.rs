//! Two `register_syncable_model!` lines under one name, in one build: the registry refuses to
//! start and names both registration sites.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::SqliteConnection;
use sync_log::{Change, DeviceId, Hlc, Stamp};
use syncable::{Applied, Error, Registry, Syncable};
use uuid::Uuid;

macro_rules! model {
    ($name:ident) => {
        struct $name;
        impl Syncable for $name {
            const MODEL: &'static str = "clash";
            fn record_id(&self) -> Uuid {
                Uuid::nil()
            }
            fn stamp(&self) -> Stamp {
                Stamp { version: 0, hlc: Hlc(0), device: DeviceId::NIL }
            }
            fn encode(&self) -> Result<Vec<u8>, Error> {
                Ok(Vec::new())
            }
            fn apply(_: &mut SqliteConnection, _: &Change) -> Result<Applied, Error> {
                Ok(Applied::Won)
            }
            fn hash_rows(_: &mut SqliteConnection, _: &mut dyn FnMut(&[u8])) -> Result<(), Error> {
                Ok(())
            }
        }
    };
}

mod first {
    use super::*;
    model!(A);
    syncable::register_syncable_model!(A);
}

mod second {
    use super::*;
    model!(B);
    syncable::register_syncable_model!(B);
}

/// `Registry::from_inventory` fails with `DuplicateModel` naming both modules.
#[test]
fn duplicate_registration_is_an_error_at_start_up() {
    let err = Registry::from_inventory().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DuplicateModel { name: "clash", .. }), "{msg}");
    assert!(msg.contains("duplicate_registration::first"), "{msg}");
    assert!(msg.contains("duplicate_registration::second"), "{msg}");
}
