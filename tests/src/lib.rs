//! Shared fixtures for the cross-crate tests in `tests/tests/`.
#![deny(missing_docs)]

pub mod layering;
pub mod sql_habits;
