//! Whole login conversations.
