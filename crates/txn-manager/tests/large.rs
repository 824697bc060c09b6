//! Transactions larger than one message or one decoded row: the outbox splits them, and a
//! change that could never travel is refused before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use library_models as _;
use library_models::Tag;
use sync_log::DeviceId;
use txn_manager::{Error, MAX_CHANGE_BYTES, Op};

/// One commit of 1,000 tags of 20 KB (20 MB, above the codec's 16 MiB decode limit) is kept
/// in several outbox rows that all read back: the outbox yields every change, in origin
/// order, and another device that applies them holds the same content.
#[test]
fn a_transaction_larger_than_a_row_is_split_and_reads_back() {
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let tags: Vec<Tag> =
        (0..1_000).map(|k| Tag::new(format!("{k} {}", "x".repeat(20_000)), None)).collect();
    let committed = lib.commit(tags.into_iter().map(Op::put).collect()).unwrap();
    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let page = lib.outbox_after_seq(after, 100).unwrap();
        let Some(last) = page.last() else { break };
        after = last.origin.seq;
        read.extend(page);
    }
    assert_eq!(read, committed, "every change, in order, from several rows");
    assert!(lib.outbox(1).unwrap().len() < committed.len(), "not one row");
    let entries = common::sequence(&read);
    let (mut other, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    other.apply_entries(&entries).unwrap();
    assert_eq!(other.content_hash().unwrap(), lib.content_hash().unwrap());
}

/// A change whose payload is above `MAX_CHANGE_BYTES` fails the commit with
/// `ChangeTooLarge`; nothing of the transaction is written.
#[test]
fn a_change_too_large_to_travel_is_refused_and_nothing_is_written() {
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let small = Tag::new("small".into(), None);
    let huge = Tag::new("x".repeat(MAX_CHANGE_BYTES + 1), None);
    let hash = lib.content_hash().unwrap();
    let err = lib.commit(vec![Op::put(small), Op::put(huge)]).unwrap_err();
    assert!(matches!(err, Error::ChangeTooLarge { .. }), "{err}");
    assert_eq!(lib.content_hash().unwrap(), hash);
    assert!(lib.outbox(10).unwrap().is_empty());
}
