//! The reference models of a library.

use crate::Id;
use crate::model::{library_model, overwrite_on_conflict};

library_model! {
    /// A member device of the library. (Its row also has a local, never-synced
    /// `sync_leadership` column: see [`crate::leadership_state`].)
    Device, table = device, model = "device", revivable = false,
    fields {
        /// Display name.
        name: String,
        /// Operating system, free text.
        os: String,
    }
}

library_model! {
    /// A folder indexed on one device.
    Location, table = location, model = "location", revivable = false,
    fields {
        /// The device that holds the folder.
        owner_device: Id,
        /// Display name.
        name: String,
        /// Path on the owner device.
        path: String,
    }
}

library_model! {
    /// A tag.
    Tag, table = tag, model = "tag", revivable = false,
    fields {
        /// Display name.
        name: String,
        /// Colour, e.g. `#ff8800`.
        color: Option<String>,
    }
}

library_model! {
    /// A user collection.
    Collection, table = collection, model = "collection", revivable = false,
    fields {
        /// Display name.
        name: String,
        /// Free text.
        description: Option<String>,
    }
}

library_model! {
    /// What the user says about a file: note, favourite, hidden.
    UserMetadata, table = user_metadata, model = "user_metadata", revivable = false,
    fields {
        /// The entry described (may arrive later than this row).
        entry: Option<Id>,
        /// Free text.
        note: Option<String>,
        /// Favourite flag.
        favorite: bool,
        /// Hidden flag.
        hidden: bool,
    }
}

library_model! {
    /// The link between a [`UserMetadata`] and a [`Tag`]. Its id is derived from the pair
    /// ([`UserMetadataTag::link_id`]), so adding and removing the same link on two devices are
    /// writes to one record and converge by last-writer-wins; a removed link is a tombstone and
    /// re-adding it writes a new version of the same record.
    UserMetadataTag, table = user_metadata_tag, model = "user_metadata_tag", revivable = true,
    fields {
        /// The metadata side.
        user_metadata: Id,
        /// The tag side.
        tag: Id,
    }
}

library_model! {
    /// A file-index row: one file or directory under a location.
    Entry, table = entry, model = "entry", revivable = false,
    fields {
        /// The location it belongs to.
        location: Id,
        /// The parent directory entry (`None` at the location root).
        parent: Option<Id>,
        /// File name.
        name: String,
        /// Kind code (0 file, 1 directory, 2 symlink; others reserved).
        kind: i16,
        /// Size in bytes.
        size: i64,
        /// Creation time, Unix milliseconds.
        created_at: i64,
        /// Modification time, Unix milliseconds.
        modified_at: i64,
        /// Content hash (e.g. blake3), when computed.
        content_hash: Option<Vec<u8>>,
    }
}

/// A fresh record with zeroed sync columns: the write path sets them when it commits.
fn unstamped() -> (i64, i64, Id, bool) {
    (0, 0, Id(uuid::Uuid::nil()), false)
}

macro_rules! new_fn {
    ($name:ident { $($field:ident : $ty:ty),* }) => {
        #[allow(clippy::too_many_arguments)]
        impl $name {
            /// A new record with a fresh UUIDv7 id; the write path stamps it on commit.
            pub fn new($($field: $ty),*) -> Self {
                Self::with_id(Id::new_v7(), $($field),*)
            }

            /// A record with the given id; the write path stamps it on commit.
            pub fn with_id(uuid: Id, $($field: $ty),*) -> Self {
                let (version, hlc, device_id, tombstone) = unstamped();
                Self { uuid, $($field,)* version, hlc, device_id, tombstone }
            }
        }
    };
}

new_fn!(Device { name: String, os: String });
new_fn!(Location { owner_device: Id, name: String, path: String });
new_fn!(Tag { name: String, color: Option<String> });
new_fn!(Collection { name: String, description: Option<String> });
new_fn!(UserMetadata { entry: Option<Id>, note: Option<String>, favorite: bool, hidden: bool });
new_fn!(Entry {
    location: Id,
    parent: Option<Id>,
    name: String,
    kind: i16,
    size: i64,
    created_at: i64,
    modified_at: i64,
    content_hash: Option<Vec<u8>>
});

impl UserMetadataTag {
    /// The deterministic id of the link between `user_metadata` and `tag`: the first 16 bytes
    /// of `blake3("library-models/user_metadata_tag" ‖ user_metadata ‖ tag)` as a UUIDv8.
    /// Every device derives the same id, so the link is one record everywhere.
    ///
    /// ```
    /// use library_models::{Id, UserMetadataTag};
    /// let (m, t) = (Id::new_v7(), Id::new_v7());
    /// assert_eq!(UserMetadataTag::link_id(m, t), UserMetadataTag::link_id(m, t));
    /// assert_ne!(UserMetadataTag::link_id(m, t), UserMetadataTag::link_id(t, m));
    /// ```
    pub fn link_id(user_metadata: Id, tag: Id) -> Id {
        let mut h = blake3::Hasher::new();
        h.update(b"library-models/user_metadata_tag");
        h.update(user_metadata.0.as_bytes());
        h.update(tag.0.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Id(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// The link between `user_metadata` and `tag` (with its derived id); the write path stamps
    /// it on commit.
    pub fn link(user_metadata: Id, tag: Id) -> Self {
        let (version, hlc, device_id, tombstone) = unstamped();
        Self {
            uuid: Self::link_id(user_metadata, tag),
            user_metadata,
            tag,
            version,
            hlc,
            device_id,
            tombstone,
        }
    }
}
