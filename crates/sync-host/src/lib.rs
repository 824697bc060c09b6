//! # sync-host
//!
//! **One job:** compose the sync crates into one running device — open the databases, start the
//! iroh endpoint, the leadership driver, the service and the jobs — and offer the CLI.
//!
//! **Invariant:** nothing in the workspace depends on this crate; it sits on top.
//!
//! This crate is a placeholder: the host issue fills it. It deliberately exports nothing yet.
#![deny(missing_docs)]
