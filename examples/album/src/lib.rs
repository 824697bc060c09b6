//! # album-example
//!
//! **One job:** show, as a crate outside this workspace would, how a dependent adds its own
//! synced model — a photo album, a name and a list of entry ids — with nothing but the public
//! kit of `library-models`: one [`library_models::model!`] declaration and one
//! [`library_models::register_migrations!`] line. Its table is created by its own migration
//! when a library opens; its changes are committed, sequenced and applied like the reference
//! models'; a device whose database lacks the table keeps its entries and applies the rest.
//!
//! **Must not know:** the network, the sync service, or how sequencing works; and nothing of
//! the workspace beyond the public API of `library-models` (and `syncable` for the registry).
//!
//! Every final artifact that should sync albums names this crate once (`use album_example as
//! _;`), like any crate that registers models (see the `syncable` crate docs).
//!
//! ```
//! use album_example::Album;
//! use library_models::{Encoded, Id};
//! let album = Album::new("Holidays".into(), Encoded(vec![Id::new_v7()]));
//! assert_eq!(album.entries.0.len(), 1);
//! ```
#![deny(missing_docs)]

use library_models::{Encoded, Id};

library_models::model! {
    /// A photo album: a name and the entries in it, in album order. People edit it by hand,
    /// so it merges per field: a rename on one device and a re-ordering on another both
    /// survive.
    pub struct Album {
        table: album,
        model: "album",
        merge: per_field,
        revivable: false,
    }
    fields {
        /// Display name.
        name: String => Text,
        /// The entries in the album, in order (one BLOB column, codec-encoded).
        entries: Encoded<Vec<Id>> => Binary,
    }
}

library_models::register_migrations!(
    "album-example",
    [(1, <Album as library_models::LibraryModel>::create_table_sql),]
);
