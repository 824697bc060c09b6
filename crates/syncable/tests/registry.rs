//! Registry behaviour: lookup by name, unknown models, hand-built registries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
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
    fn hash_rows(_: &mut SqliteConnection, _: &mut dyn FnMut(&[u8])) -> Result<(), Error> {
        Ok(())
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
    fn hash_rows(_: &mut SqliteConnection, _: &mut dyn FnMut(&[u8])) -> Result<(), Error> {
        Ok(())
    }
}

/// A model with a real table (`memo(id BLOB PRIMARY KEY, body TEXT)`), to test the content hash.
struct Memo;

#[derive(QueryableByName)]
struct MemoRow {
    #[diesel(sql_type = diesel::sql_types::Binary)]
    id: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    body: String,
}

impl Syncable for Memo {
    const MODEL: &'static str = "test_memo";
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
        Ok(Applied::Won)
    }
    fn hash_rows(conn: &mut SqliteConnection, row: &mut dyn FnMut(&[u8])) -> Result<(), Error> {
        let rows: Vec<MemoRow> =
            diesel::sql_query("SELECT id, body FROM memo ORDER BY id").load(conn)?;
        for r in rows {
            let mut bytes = r.id;
            bytes.extend_from_slice(r.body.as_bytes());
            row(&bytes);
        }
        Ok(())
    }
}

fn memo_db(rows: &[(u128, &str)]) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute("CREATE TABLE memo (id BLOB PRIMARY KEY NOT NULL, body TEXT NOT NULL)")
        .unwrap();
    for (id, body) in rows {
        diesel::sql_query("INSERT INTO memo (id, body) VALUES (?, ?)")
            .bind::<diesel::sql_types::Binary, _>(Uuid::from_u128(*id).as_bytes().as_slice())
            .bind::<diesel::sql_types::Text, _>(*body)
            .execute(&mut conn)
            .unwrap();
    }
    conn
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

/// The content hash covers exactly the registered models, with no list to maintain: rows of a
/// registered model change it, the same rows written in another order do not, and a model
/// with no rows (or one the registry does not know) contributes nothing.
#[test]
fn content_hash_is_driven_by_the_registry() {
    let empty = Registry::empty();
    let mut with_memo = Registry::empty();
    with_memo.register::<Note>().unwrap();
    with_memo.register::<Memo>().unwrap();

    let mut none = memo_db(&[]);
    let mut ab = memo_db(&[(1, "a"), (2, "b")]);
    let mut ba = memo_db(&[(2, "b"), (1, "a")]);
    let mut changed = memo_db(&[(1, "a"), (2, "c")]);

    let blank = empty.content_hash(&mut none).unwrap();
    assert_eq!(with_memo.content_hash(&mut none).unwrap(), blank, "empty tables add nothing");
    assert_eq!(empty.content_hash(&mut ab).unwrap(), blank, "unregistered tables are not seen");
    let h_ab = with_memo.content_hash(&mut ab).unwrap();
    assert_ne!(h_ab, blank, "a registered model's rows are hashed");
    assert_eq!(with_memo.content_hash(&mut ba).unwrap(), h_ab, "write order does not matter");
    assert_ne!(with_memo.content_hash(&mut changed).unwrap(), h_ab, "one column differs");
}

/// A database error while feeding rows is an error, never a silently smaller hash.
#[test]
fn content_hash_fails_when_a_table_cannot_be_read() {
    let mut registry = Registry::empty();
    registry.register::<Memo>().unwrap();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert!(matches!(registry.content_hash(&mut conn), Err(Error::Database(_))));
}
