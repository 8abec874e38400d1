//! Shoal: an iSCSI block-storage target on io_uring shard threads.
//!
//! # Thread model
//! - **Listener / login threads** accept TCP connections and run the iSCSI login phase (and whole
//!   discovery sessions), which need no storage. A logged-in normal session is handed, with its
//!   socket, to the shard that owns its target.
//! - **Shard threads** (one per core by default) each own one io_uring, a set of LUNs and every
//!   connection to them. The shard drives both the sockets and the O_DIRECT backing I/O on its ring.
//!   Everything a shard owns is plain, single-threaded data: no lock on the I/O path.
//! - **The control thread** (later: the admin API and metadata commits) talks to shards by message.
//!
//! # Module map
//! - [`iscsi`]: RFC 7143 protocol core — PDU codec, login negotiation, session and connection
//!   state. No I/O, no clock: bytes and a `now` in, actions out.
//! - [`scsi`]: SPC-4 / SBC-3 command set of a block device. No I/O: CDB in, outcome out.
//! - [`storage`]: the backing store behind the SCSI layer's storage seam.
//! - [`runtime`]: shard threads, the io_uring loop, aligned buffer pools, the listener.
//! - [`control`]: target/volume catalog and the session registry.
//! - [`stats`]: per-shard latency histograms and counters.
//! - [`config`]: typed configuration (CLI and TOML).

pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod iscsi;
pub mod runtime;
pub mod scsi;
pub mod stats;
pub mod storage;
