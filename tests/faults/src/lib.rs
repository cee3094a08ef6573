//! The fault suites live in `tests/`; this crate holds no code of its own.
