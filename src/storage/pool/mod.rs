//! The thin pool: extent maps, reference counts and allocation over one data store.

pub mod catalog;
pub mod checkpoint;
pub mod extent_map;
pub mod format;
pub mod journal;
pub mod refs;
pub mod thin;
