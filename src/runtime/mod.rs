//! The shard runtime: the io_uring loop of each shard, aligned buffer pools, gathered sends,
//! the listener and the login threads.

pub mod buf;
mod files;
pub mod io;
pub mod login;
pub mod qos;
mod readahead;
mod sanitize;
pub mod server;
pub mod shard;
mod sync;
pub mod text;
pub mod tx;
mod volumes;
pub mod xcopy;

pub use server::{AuthSwitch, Server};
