//! Shared fixtures for the cross-crate tests in `tests/tests/`.

pub mod layering;
