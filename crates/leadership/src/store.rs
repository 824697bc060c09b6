//! Persistence seam: the record that survives restarts, the store trait and an in-memory store.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{Epoch, Term};

/// What a device persists about leadership: the `sync_leadership` field of its device record.
///
/// This is a storage format (serialized with serde, e.g. as JSON in the Device row): fields may
/// be added with `#[serde(default)]`, never renamed or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedLeadership {
    /// The highest epoch this device has seen or claimed. It never decreases, and after a
    /// restart the device claims only epochs above it, so it never reuses an epoch.
    pub max_epoch: Epoch,
    /// The last leader this device knew of (itself when it led): shown in status. Not trusted
    /// after a restart — a restarted device always starts as a follower without a leader.
    #[serde(default)]
    pub last_leader: Option<Term>,
}

/// Where a device's [`PersistedLeadership`] lives (in the product: the device's own row).
///
/// `save` must be durable when it returns `Ok` (the machine leads an epoch only after that).
/// Both methods are synchronous and are called from `tokio::task::spawn_blocking` by the
/// driver. Any implementation must pass [`store_suite`].
pub trait LeadershipStore: Send + Sync + 'static {
    /// The saved record, or `None` if this device never saved one.
    fn load(&self) -> Result<Option<PersistedLeadership>>;
    /// Replaces the saved record durably.
    fn save(&self, record: &PersistedLeadership) -> Result<()>;
}

/// A [`LeadershipStore`] in memory, for tests and simulations; saves can be made to fail.
#[derive(Debug, Default)]
pub struct MemoryStore {
    record: Mutex<Option<PersistedLeadership>>,
    failing: AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later `save` fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The record currently saved (what a restart would load).
    pub fn snapshot(&self) -> Option<PersistedLeadership> {
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl LeadershipStore for MemoryStore {
    fn load(&self) -> Result<Option<PersistedLeadership>> {
        Ok(self.snapshot())
    }

    fn save(&self, record: &PersistedLeadership) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::store(std::io::Error::other("memory store: injected save failure")));
        }
        *self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(record.clone());
        Ok(())
    }
}

/// The contract every [`LeadershipStore`] must meet, as a reusable check: give it a store that
/// has never been saved to. Returns a description of the first broken rule.
///
/// ```
/// use leadership::{MemoryStore, store_suite};
/// store_suite(&MemoryStore::new()).expect("the in-memory store meets the contract");
/// ```
pub fn store_suite(store: &dyn LeadershipStore) -> std::result::Result<(), String> {
    use crate::types::MemberId;

    let loaded = |what: &str| store.load().map_err(|e| format!("load after {what} failed: {e}"));
    if loaded("nothing")?.is_some() {
        return Err("a fresh store must load None".into());
    }
    let leader = MemberId::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    let records = [
        PersistedLeadership { max_epoch: Epoch(1), last_leader: Some(Term::new(Epoch(1), leader)) },
        PersistedLeadership { max_epoch: Epoch(2), last_leader: Some(Term::new(Epoch(1), leader)) },
        PersistedLeadership { max_epoch: Epoch(u64::MAX), last_leader: None },
    ];
    for record in records {
        store.save(&record).map_err(|e| format!("save of {record:?} failed: {e}"))?;
        let back = loaded("a save")?;
        if back.as_ref() != Some(&record) {
            return Err(format!("saved {record:?} but loaded {back:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_meets_the_contract() {
        store_suite(&MemoryStore::new()).unwrap();
    }

    #[test]
    fn failing_memory_store_keeps_the_old_record() {
        let store = MemoryStore::new();
        let first = PersistedLeadership { max_epoch: Epoch(3), last_leader: None };
        store.save(&first).unwrap();
        store.set_failing(true);
        let err = store
            .save(&PersistedLeadership { max_epoch: Epoch(4), last_leader: None })
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(store.load().unwrap(), Some(first));
    }

    #[test]
    fn record_is_readable_json_and_tolerates_missing_optional_fields() {
        let leader = crate::MemberId::from_u128(42);
        let record = PersistedLeadership {
            max_epoch: Epoch(7),
            last_leader: Some(Term::new(Epoch(7), leader)),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"max_epoch":7,"last_leader":{{"epoch":7,"leader":"{}"}}}}"#, leader)
        );
        assert_eq!(serde_json::from_str::<PersistedLeadership>(&json).unwrap(), record);
        let old: PersistedLeadership = serde_json::from_str(r#"{"max_epoch":2}"#).unwrap();
        assert_eq!(old.max_epoch, Epoch(2));
        assert_eq!(old.last_leader, None);
    }
}
