//! The diesel schema of the library database: the local tables (kept by hand in step with
//! `migrations/`) and, re-exported, the model tables [`crate::model!`] generates. Internal:
//! hidden from the docs, for this workspace's tests and write path only.
#![allow(missing_docs)]

pub use crate::models::{
    collection, device, entry, location, tag, user_metadata, user_metadata_tag,
};

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
    conflict_log (id) {
        id -> BigInt,
        at_ms -> BigInt,
        seq -> BigInt,
        model -> Text,
        record -> Binary,
        local_change -> Binary,
        remote_change -> Binary,
        remote_won -> Bool,
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
