//! Shared error types.
