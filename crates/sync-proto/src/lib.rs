//! sync-proto: being built (see its issue).
