//! The diesel schema of the library database (kept by hand in step with `migrations/`).
#![allow(missing_docs)]

diesel::table! {
    device (uuid) {
        uuid -> Binary,
        name -> Text,
        os -> Text,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
        sync_leadership -> Nullable<Binary>,
    }
}

diesel::table! {
    location (uuid) {
        uuid -> Binary,
        owner_device -> Binary,
        name -> Text,
        path -> Text,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
    }
}

diesel::table! {
    tag (uuid) {
        uuid -> Binary,
        name -> Text,
        color -> Nullable<Text>,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
    }
}

diesel::table! {
    collection (uuid) {
        uuid -> Binary,
        name -> Text,
        description -> Nullable<Text>,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
    }
}

diesel::table! {
    user_metadata (uuid) {
        uuid -> Binary,
        entry -> Nullable<Binary>,
        note -> Nullable<Text>,
        favorite -> Bool,
        hidden -> Bool,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
    }
}

diesel::table! {
    user_metadata_tag (uuid) {
        uuid -> Binary,
        user_metadata -> Binary,
        tag -> Binary,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
    }
}

diesel::table! {
    entry (uuid) {
        uuid -> Binary,
        location -> Binary,
        parent -> Nullable<Binary>,
        name -> Text,
        kind -> SmallInt,
        size -> BigInt,
        created_at -> BigInt,
        modified_at -> BigInt,
        content_hash -> Nullable<Binary>,
        version -> BigInt,
        hlc -> BigInt,
        device_id -> Binary,
        tombstone -> Bool,
    }
}

diesel::table! {
    library_meta (key) {
        key -> Text,
        value -> Text,
    }
}

diesel::table! {
    local_state (id) {
        id -> BigInt,
        device_id -> Binary,
        applied_seq -> BigInt,
        origin_seq -> BigInt,
        hlc -> BigInt,
        rewind_to -> Nullable<BigInt>,
    }
}

diesel::table! {
    outbox (last_origin_seq) {
        last_origin_seq -> BigInt,
        first_origin_seq -> BigInt,
        changes -> Binary,
    }
}

diesel::table! {
    resubmit (ord) {
        ord -> BigInt,
        origin_device -> Binary,
        origin_seq -> BigInt,
        change -> Binary,
    }
}

diesel::table! {
    pending_entries (seq) {
        seq -> BigInt,
        model -> Text,
        reason -> Text,
        entry -> Binary,
    }
}
