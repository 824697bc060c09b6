//! Registry behaviour: lookup by name, unknown models, hand-built registries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::{Connection, SqliteConnection};
use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey, Stamp};
use syncable::{Applied, Error, ModelRegistration, Registry, Syncable};
use uuid::Uuid;

struct Note;

impl Syncable for Note {
    const MODEL: &'static str = "test_note";
    fn record_id(&self) -> Uuid {
        Uuid::nil()
    }
    fn stamp(&self) -> Stamp {
        Stamp { version: 1, hlc: Hlc(0), device: DeviceId::NIL }
    }
    fn encode(&self) -> Result<Vec<u8>, Error> {
        Ok(Vec::new())
    }
    fn apply(_: &mut SqliteConnection, change: &Change) -> Result<Applied, Error> {
        Ok(if change.version > 1 { Applied::Won } else { Applied::Lost })
    }
}

struct OtherNote;

impl Syncable for OtherNote {
    const MODEL: &'static str = "test_note";
    fn record_id(&self) -> Uuid {
        Uuid::nil()
    }
    fn stamp(&self) -> Stamp {
        Note.stamp()
    }
    fn encode(&self) -> Result<Vec<u8>, Error> {
        Ok(Vec::new())
    }
    fn apply(_: &mut SqliteConnection, _: &Change) -> Result<Applied, Error> {
        Ok(Applied::Duplicate)
    }
}

fn change(model: &str, version: u64) -> Change {
    Change {
        origin: OriginKey { device: DeviceId::NIL, seq: 1 },
        hlc: Hlc(0),
        model: model.into(),
        record: Uuid::nil(),
        change: ChangeType::Insert,
        version,
        payload: Vec::new(),
    }
}

/// A registered model's apply function is reached by its name.
#[test]
fn apply_dispatches_by_model_name() {
    let mut registry = Registry::empty();
    registry.register::<Note>().unwrap();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert_eq!(registry.apply(&mut conn, &change("test_note", 2)).unwrap(), Applied::Won);
    assert_eq!(registry.names().collect::<Vec<_>>(), vec!["test_note"]);
}

/// An unknown model name is a typed error naming the model, never a panic.
#[test]
fn unknown_model_is_a_typed_error() {
    let registry = Registry::empty();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let err = registry.apply(&mut conn, &change("from_the_future", 1)).unwrap_err();
    assert!(matches!(&err, Error::UnknownModel(name) if name == "from_the_future"));
    assert!(err.to_string().contains("from_the_future"));
}

/// Two registrations under one name are refused with an error naming both sites.
#[test]
fn duplicate_names_are_refused_naming_both() {
    let first = ModelRegistration::of::<Note>("crate_a::models");
    let second = ModelRegistration::of::<OtherNote>("crate_b::models");
    let err = Registry::from_registrations([&first, &second]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DuplicateModel { name: "test_note", .. }));
    assert!(msg.contains("crate_a::models") && msg.contains("crate_b::models"), "{msg}");
}

/// `require` turns a model missing from this build into a start-up error that names it.
#[test]
fn require_names_missing_models() {
    let mut registry = Registry::empty();
    registry.register::<Note>().unwrap();
    registry.require(["test_note"]).unwrap();
    let err = registry.require(["test_note", "tag"]).unwrap_err();
    assert!(matches!(&err, Error::MissingModels(m) if m == &vec!["tag".to_string()]));
}
