//! The reference models of a library.

use crate::Id;

crate::model! {
    /// A member device of the library. (Its row also has a local, never-synced
    /// `sync_leadership` column: see [`crate::leadership_state`].)
    pub struct Device {
        table: device,
        model: "device",
        merge: per_record,
        revivable: false,
    }
    fields {
        /// Display name.
        name: String => Text,
        /// Operating system, free text.
        os: String => Text,
        /// The device's iroh endpoint id (its 32-byte public key): who may connect as this
        /// member. Empty until the device is paired.
        endpoint: Vec<u8> => Binary,
    }
    local {
        sync_leadership => Nullable<Binary>,
    }
}

crate::model! {
    /// A folder indexed on one device. Edited by hand: merges per field.
    pub struct Location {
        table: location,
        model: "location",
        merge: per_field,
        revivable: false,
    }
    fields {
        /// The device that holds the folder.
        owner_device: Id => Binary,
        /// Display name.
        name: String => Text,
        /// Path on the owner device.
        path: String => Text,
    }
}

crate::model! {
    /// A tag. Edited by hand: merges per field.
    pub struct Tag {
        table: tag,
        model: "tag",
        merge: per_field,
        revivable: false,
    }
    fields {
        /// Display name.
        name: String => Text,
        /// Colour, e.g. `#ff8800`.
        color: Option<String> => Nullable<Text>,
    }
}

crate::model! {
    /// A user collection. Edited by hand: merges per field.
    pub struct Collection {
        table: collection,
        model: "collection",
        merge: per_field,
        revivable: false,
    }
    fields {
        /// Display name.
        name: String => Text,
        /// Free text.
        description: Option<String> => Nullable<Text>,
    }
}

crate::model! {
    /// What the user says about a file: note, favourite, hidden. Edited by hand: merges per
    /// field ("favourite on the phone" and "a note on the laptop" both survive).
    pub struct UserMetadata {
        table: user_metadata,
        model: "user_metadata",
        merge: per_field,
        revivable: false,
    }
    fields {
        /// The entry described (may arrive later than this row).
        entry: Option<Id> => Nullable<Binary>,
        /// Free text.
        note: Option<String> => Nullable<Text>,
        /// Favourite flag.
        favorite: bool => Bool,
        /// Hidden flag.
        hidden: bool => Bool,
    }
}

crate::model! {
    /// The link between a [`UserMetadata`] and a [`Tag`]. Its id is derived from the pair
    /// ([`UserMetadataTag::link_id`]), so adding and removing the same link on two devices are
    /// writes to one record and converge by last-writer-wins; a removed link is a tombstone and
    /// re-adding it writes a new version of the same record. Written whole: merges per record.
    pub struct UserMetadataTag {
        table: user_metadata_tag,
        model: "user_metadata_tag",
        merge: per_record,
        revivable: true,
    }
    fields {
        /// The metadata side.
        user_metadata: Id => Binary,
        /// The tag side.
        tag: Id => Binary,
    }
}

crate::model! {
    /// A file-index row: one file or directory under a location. Written whole (by the
    /// indexer, often in bulk): merges per record.
    pub struct Entry {
        table: entry,
        model: "entry",
        merge: per_record,
        revivable: false,
    }
    fields {
        /// The location it belongs to.
        location: Id => Binary,
        /// The parent directory entry (`None` at the location root).
        parent: Option<Id> => Nullable<Binary>,
        /// File name.
        name: String => Text,
        /// Kind code (0 file, 1 directory, 2 symlink; others reserved).
        kind: i16 => SmallInt,
        /// Size in bytes.
        size: i64 => BigInt,
        /// Creation time, Unix milliseconds.
        created_at: i64 => BigInt,
        /// Modification time, Unix milliseconds.
        modified_at: i64 => BigInt,
        /// Content hash (e.g. blake3), when computed.
        content_hash: Option<Vec<u8>> => Nullable<Binary>,
    }
}

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
        Self::with_id(Self::link_id(user_metadata, tag), user_metadata, tag)
    }
}
