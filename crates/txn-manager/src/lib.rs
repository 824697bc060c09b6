//! txn-manager: being built (see its issue).
