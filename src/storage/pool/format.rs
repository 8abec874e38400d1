//! The thin pool's on-disk format: file names, the two-slot superblock, the catalog entry shared by
//! journal records and checkpoints, and the one error type of the format layer.
//!
//! A pool is a directory (usually `<data>/pool/`):
//!
//! ```text
//! superblock                  two 4096-byte slots, see SLOT_* below (docs/format.md § Superblock)
//! journal/<name>.log          append-only records (journal.rs)
//! checkpoint-<generation>.ckpt  full catalog + extent maps (checkpoint.rs)
//! ```
//!
//! Every byte layout is written once, as a table of `Field`s whose offsets are computed from the
//! field before (redb `header.rs`); docs/format.md repeats the tables and must match them.
//! All integers are little-endian.
//!
//! The superblock's format version covers every file of the pool directory: journals and
//! checkpoints have no version of their own (a checkpoint has a magic and repeats the version as a
//! cross-check). Three things never move whatever the version: the magic at offset 0, the version
//! at offset 8 and the CRC32C in the last 4 bytes of a slot, so that any build can tell a slot
//! written by another version from a damaged one and name both versions.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the superblock file in the pool directory.
pub const SUPERBLOCK_FILE: &str = "superblock";
/// Name of the journal directory in the pool directory.
pub const JOURNAL_DIR: &str = "journal";
/// Default data store path (relative to the pool directory).
pub const DEFAULT_DATA_PATH: &str = "data";
/// Default soft threshold, in percent of the pool used.
pub const DEFAULT_SOFT_THRESHOLD_PCT: u8 = 85;
/// Default extent size in bytes.
pub const DEFAULT_EXTENT_SIZE: u32 = 64 * 1024;
/// Smallest extent size a pool may use.
pub const MIN_EXTENT_SIZE: u32 = 4 * 1024;
/// Largest extent size a pool may use.
pub const MAX_EXTENT_SIZE: u32 = 1024 * 1024;
/// Longest image name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;
/// Size of one superblock slot; the superblock file holds two.
pub const SLOT_SIZE: usize = 4096;

/// Errors of the on-disk format layer. Every variant names the file it is about.
#[derive(Debug, Error)]
pub enum FormatError {
    /// An operating-system error.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the expected magic.
    #[error("{path}: bad magic at offset {offset}: expected {expected:?}, found {found:?}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Where the magic was read.
        offset: u64,
        /// The magic this build expects.
        expected: [u8; 8],
        /// What was there.
        found: [u8; 8],
    },
    /// Written by another format version.
    #[error(
        "{path}: pool format version {found} is not supported: this build of Shoal reads and \
         writes format version {supported}"
    )]
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The version this build supports.
        supported: u32,
    },
    /// A checksum does not match the bytes it covers.
    #[error(
        "{path}: checksum mismatch in {what} at offset {offset}: stored {stored:#010x}, \
         computed {computed:#010x}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Where the structure starts.
        offset: u64,
        /// The checksum on disk.
        stored: u32,
        /// The checksum of the bytes on disk.
        computed: u32,
    },
    /// The file ends inside a structure.
    #[error("{path}: truncated {what} at offset {offset}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Where the structure starts (or where the file ended).
        offset: u64,
    },
    /// A structure with a valid checksum holds a value that is not allowed, or a value to be
    /// written is not representable.
    #[error("{path}: invalid {what} at offset {offset}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Where the structure starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A journal record fails its checks but a valid record follows it: not a torn tail.
    #[error(
        "{path}: corrupt journal: the record at offset {offset} is damaged but a valid record \
         follows at offset {next}"
    )]
    CorruptJournal {
        /// The journal file.
        path: PathBuf,
        /// The damaged record.
        offset: u64,
        /// The first valid record after it.
        next: u64,
    },
    /// Two journal records carry the same sequence number.
    #[error("sequence number {seq} appears twice: in {first} and in {second}")]
    DuplicateSeq {
        /// The sequence number.
        seq: u64,
        /// One journal file holding it.
        first: PathBuf,
        /// The other (may be the same file).
        second: PathBuf,
    },
    /// Neither superblock slot is valid.
    #[error("{path}: no valid superblock slot (slot 0: {slot0}; slot 1: {slot1})")]
    NoValidSuperblock {
        /// The superblock file.
        path: PathBuf,
        /// Why slot 0 was refused.
        slot0: Box<FormatError>,
        /// Why slot 1 was refused.
        slot1: Box<FormatError>,
    },
}

impl FormatError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &Path, what: &'static str, source: io::Error) -> Self {
        FormatError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    }
}

/// A fixed-size field of a byte layout: the offset is the previous field's end, so a table of
/// fields is written once and cannot overlap or leave gaps by mistake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// Offset of the first byte.
    pub(crate) offset: usize,
    /// Size in bytes.
    pub(crate) len: usize,
}

impl Field {
    /// The first field of a layout.
    pub(crate) const fn first(len: usize) -> Field {
        Field { offset: 0, len }
    }

    /// The field right after `prev`.
    pub(crate) const fn after(prev: Field, len: usize) -> Field {
        Field {
            offset: prev.offset + prev.len,
            len,
        }
    }

    /// Offset just past the field.
    pub(crate) const fn end(self) -> usize {
        self.offset + self.len
    }

    /// The byte range of the field.
    pub(crate) const fn range(self) -> Range<usize> {
        self.offset..self.end()
    }

    /// Reads a `u8` field.
    pub(crate) fn u8(self, buf: &[u8]) -> u8 {
        debug_assert_eq!(self.len, 1);
        buf[self.offset]
    }

    /// Reads a little-endian `u16` field.
    pub(crate) fn u16(self, buf: &[u8]) -> u16 {
        u16::from_le_bytes(self.array(buf))
    }

    /// Reads a little-endian `u32` field.
    pub(crate) fn u32(self, buf: &[u8]) -> u32 {
        u32::from_le_bytes(self.array(buf))
    }

    /// Reads a little-endian `u64` field.
    pub(crate) fn u64(self, buf: &[u8]) -> u64 {
        u64::from_le_bytes(self.array(buf))
    }

    /// Reads the field as an array of exactly its size.
    pub(crate) fn array<const N: usize>(self, buf: &[u8]) -> [u8; N] {
        debug_assert_eq!(self.len, N);
        let mut out = [0; N];
        out.copy_from_slice(&buf[self.range()]);
        out
    }

    /// Writes the field's bytes (`bytes.len()` must be the field's size).
    pub(crate) fn put(self, buf: &mut [u8], bytes: &[u8]) {
        debug_assert_eq!(self.len, bytes.len());
        buf[self.range()].copy_from_slice(bytes);
    }
}

/// Why a byte string does not decode; the caller adds the file and offset.
#[derive(Debug)]
pub(crate) enum Malformed {
    /// The bytes end before the structure does.
    Short,
    /// A value is not allowed.
    Invalid(String),
}

impl Malformed {
    /// The format error for this problem in `what` at `offset` of `path`.
    pub(crate) fn at(self, path: &Path, what: &'static str, offset: u64) -> FormatError {
        match self {
            Malformed::Short => FormatError::Truncated {
                path: path.to_owned(),
                what,
                offset,
            },
            Malformed::Invalid(reason) => FormatError::Invalid {
                path: path.to_owned(),
                what,
                offset,
                reason,
            },
        }
    }
}

/// Checks an image name: 1 to [`MAX_NAME_LEN`] bytes of UTF-8 without control characters (so a
/// name can never contain the zero bytes every record header has: see journal.rs on torn tails).
pub(crate) fn check_name(name: &str) -> Result<(), Malformed> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Malformed::Invalid(format!(
            "name length {} is not in 1..={MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Malformed::Invalid(format!(
            "name {name:?} contains a control character"
        )));
    }
    Ok(())
}

/// Decodes a name field.
fn decode_name(bytes: &[u8]) -> Result<String, Malformed> {
    let name = std::str::from_utf8(bytes)
        .map_err(|e| Malformed::Invalid(format!("name is not UTF-8: {e}")))?
        .to_owned();
    check_name(&name)?;
    Ok(name)
}

/// What an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// A writable volume (created empty, or a clone).
    Volume,
    /// A read-only snapshot.
    Snapshot,
}

impl ImageKind {
    /// The on-disk byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            ImageKind::Volume => 0,
            ImageKind::Snapshot => 1,
        }
    }

    /// The kind of an on-disk byte.
    pub const fn from_byte(byte: u8) -> Option<ImageKind> {
        match byte {
            0 => Some(ImageKind::Volume),
            1 => Some(ImageKind::Snapshot),
            _ => None,
        }
    }
}

/// The catalog fields of one image, as a `CreateImage` record and a checkpoint store them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMeta {
    /// Image id, unique in the pool, never reused (the superblock keeps the next one).
    pub image: u64,
    /// The image whose map the new image copied when it was created: the volume of a snapshot,
    /// the source of a clone; `None` for a volume created empty. Historical only: the parent may
    /// be deleted later and nothing depends on it.
    pub parent: Option<u64>,
    /// Volume or snapshot.
    pub kind: ImageKind,
    /// Name (unique among live images; the catalog checks that).
    pub name: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Thin (allocate on first write) or full (space reserved at creation).
    pub thin: bool,
    /// Stable device identity (NAA id) reported to initiators.
    pub identity: [u8; 16],
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

// ImageMeta layout: the CreateImage payload and the head of a checkpoint image entry.
const IM_IMAGE: Field = Field::first(8);
const IM_PARENT: Field = Field::after(IM_IMAGE, 8);
const IM_HAS_PARENT: Field = Field::after(IM_PARENT, 1);
const IM_KIND: Field = Field::after(IM_HAS_PARENT, 1);
const IM_THIN: Field = Field::after(IM_KIND, 1);
const IM_BLOCK_SIZE: Field = Field::after(IM_THIN, 4);
const IM_SIZE_BYTES: Field = Field::after(IM_BLOCK_SIZE, 8);
const IM_CREATED: Field = Field::after(IM_SIZE_BYTES, 8);
const IM_IDENTITY: Field = Field::after(IM_CREATED, 16);
const IM_NAME_LEN: Field = Field::after(IM_IDENTITY, 2);
/// Size of the fixed part of an encoded [`ImageMeta`]; the name's bytes follow it.
pub(crate) const IMAGE_META_FIXED_LEN: usize = IM_NAME_LEN.end();
const _: () = assert!(IMAGE_META_FIXED_LEN == 57);

/// Decodes a boolean byte.
fn decode_bool(byte: u8, what: &str) -> Result<bool, Malformed> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Malformed::Invalid(format!("{what} is {other}, not 0 or 1"))),
    }
}

impl ImageMeta {
    /// Appends the encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        check_name(&self.name)?;
        let mut fixed = [0u8; IMAGE_META_FIXED_LEN];
        IM_IMAGE.put(&mut fixed, &self.image.to_le_bytes());
        IM_PARENT.put(&mut fixed, &self.parent.unwrap_or(0).to_le_bytes());
        IM_HAS_PARENT.put(&mut fixed, &[u8::from(self.parent.is_some())]);
        IM_KIND.put(&mut fixed, &[self.kind.to_byte()]);
        IM_THIN.put(&mut fixed, &[u8::from(self.thin)]);
        IM_BLOCK_SIZE.put(&mut fixed, &self.block_size.to_le_bytes());
        IM_SIZE_BYTES.put(&mut fixed, &self.size_bytes.to_le_bytes());
        IM_CREATED.put(&mut fixed, &self.created_unix_secs.to_le_bytes());
        IM_IDENTITY.put(&mut fixed, &self.identity);
        // check_name bounds the length by MAX_NAME_LEN, which fits a u16.
        IM_NAME_LEN.put(&mut fixed, &(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&fixed);
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }

    /// The name length announced by an encoding's fixed part (`fixed` holds at least
    /// [`IMAGE_META_FIXED_LEN`] bytes).
    pub(crate) fn name_len(fixed: &[u8]) -> usize {
        usize::from(IM_NAME_LEN.u16(fixed))
    }

    /// Decodes an encoding at the start of `bytes`; returns the meta and the bytes it used.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(ImageMeta, usize), Malformed> {
        if bytes.len() < IMAGE_META_FIXED_LEN {
            return Err(Malformed::Short);
        }
        let total = IMAGE_META_FIXED_LEN + Self::name_len(bytes);
        if bytes.len() < total {
            return Err(Malformed::Short);
        }
        let has_parent = decode_bool(IM_HAS_PARENT.u8(bytes), "has-parent flag")?;
        let kind_byte = IM_KIND.u8(bytes);
        let kind = ImageKind::from_byte(kind_byte)
            .ok_or_else(|| Malformed::Invalid(format!("unknown image kind {kind_byte}")))?;
        let meta = ImageMeta {
            image: IM_IMAGE.u64(bytes),
            parent: has_parent.then(|| IM_PARENT.u64(bytes)),
            kind,
            name: decode_name(&bytes[IMAGE_META_FIXED_LEN..total])?,
            size_bytes: IM_SIZE_BYTES.u64(bytes),
            block_size: IM_BLOCK_SIZE.u32(bytes),
            thin: decode_bool(IM_THIN.u8(bytes), "thin flag")?,
            identity: IM_IDENTITY.array(bytes),
            created_unix_secs: IM_CREATED.u64(bytes),
        };
        Ok((meta, total))
    }
}

/// Decodes a name that follows a little-endian `u16` length at the start of `bytes`.
pub(crate) fn decode_prefixed_name(bytes: &[u8]) -> Result<(String, usize), Malformed> {
    let len_field = Field::first(2);
    if bytes.len() < len_field.end() {
        return Err(Malformed::Short);
    }
    let total = len_field.end() + usize::from(len_field.u16(bytes));
    if bytes.len() < total {
        return Err(Malformed::Short);
    }
    Ok((decode_name(&bytes[len_field.end()..total])?, total))
}

/// Appends a `u16` length and the name.
pub(crate) fn encode_prefixed_name(name: &str, out: &mut Vec<u8>) -> Result<(), Malformed> {
    check_name(name)?;
    // check_name bounds the length by MAX_NAME_LEN, which fits a u16.
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Magic at the start of a superblock slot.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"SHOALPL1";

// Superblock slot layout, version 1. MAGIC, VERSION and SLOT_CRC stay where they are in every
// version (see the module docs).
const SLOT_MAGIC: Field = Field::first(8);
const SLOT_VERSION: Field = Field::after(SLOT_MAGIC, 4);
const SLOT_GENERATION: Field = Field::after(SLOT_VERSION, 8);
const SLOT_EXTENT_SIZE: Field = Field::after(SLOT_GENERATION, 4);
const SLOT_CAPACITY: Field = Field::after(SLOT_EXTENT_SIZE, 8);
const SLOT_CHECKPOINT_SEQ: Field = Field::after(SLOT_CAPACITY, 8);
const SLOT_NEXT_IMAGE: Field = Field::after(SLOT_CHECKPOINT_SEQ, 8);
const SLOT_SOFT_THRESHOLD: Field = Field::after(SLOT_NEXT_IMAGE, 1);
const SLOT_UUID: Field = Field::after(SLOT_SOFT_THRESHOLD, 16);
const SLOT_CHECKPOINT_NAME_LEN: Field = Field::after(SLOT_UUID, 1);
const SLOT_CHECKPOINT_NAME: Field = Field::after(SLOT_CHECKPOINT_NAME_LEN, 255);
const SLOT_DATA_PATH_LEN: Field = Field::after(SLOT_CHECKPOINT_NAME, 2);
const SLOT_CRC: Field = Field {
    offset: SLOT_SIZE - 4,
    len: 4,
};
const SLOT_DATA_PATH: Field = Field::after(
    SLOT_DATA_PATH_LEN,
    SLOT_CRC.offset - SLOT_DATA_PATH_LEN.end(),
);
const _: () = assert!(SLOT_DATA_PATH.end() == SLOT_CRC.offset);
const _: () = assert!(SLOT_DATA_PATH.offset == 323);

/// Longest data store path, in bytes of UTF-8.
pub const MAX_DATA_PATH_LEN: usize = SLOT_DATA_PATH.len;
/// Longest checkpoint file name, in bytes.
pub const MAX_CHECKPOINT_NAME_LEN: usize = SLOT_CHECKPOINT_NAME.len;

/// The pool's root record: one copy per slot, the valid one with the newest generation wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped by every [`Superblock::write`]; the slot is `generation % 2`.
    pub generation: u64,
    /// Extent size in bytes: a power of two in [`MIN_EXTENT_SIZE`]..=[`MAX_EXTENT_SIZE`].
    pub extent_size: u32,
    /// Data store capacity in extents. Physical extent 0 is never allocated: a map entry of 0
    /// means "unmapped".
    pub capacity_extents: u64,
    /// Data store path: relative to the pool directory, or absolute.
    pub data_path: String,
    /// The current checkpoint's file name in the pool directory, if any.
    pub checkpoint: Option<String>,
    /// Journal records with `seq <= checkpoint_seq` are inside the checkpoint (0 without one).
    pub checkpoint_seq: u64,
    /// The next image id to hand out. Recovery also raises it past every id the journals
    /// create, so it need only be written with checkpoints.
    pub next_image_id: u64,
    /// Soft threshold, percent of the pool used (0..=100).
    pub soft_threshold_pct: u8,
    /// Pool identity.
    pub uuid: [u8; 16],
}

impl Superblock {
    /// A superblock for a new pool with the defaults: data store `data`, no checkpoint, next
    /// image id 1, soft threshold 85%. Generation 0 means "not yet written".
    pub fn new(extent_size: u32, capacity_extents: u64, uuid: [u8; 16]) -> Superblock {
        Superblock {
            generation: 0,
            extent_size,
            capacity_extents,
            data_path: DEFAULT_DATA_PATH.to_owned(),
            checkpoint: None,
            checkpoint_seq: 0,
            next_image_id: 1,
            soft_threshold_pct: DEFAULT_SOFT_THRESHOLD_PCT,
            uuid,
        }
    }

    /// The superblock file of the pool in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(SUPERBLOCK_FILE)
    }

    /// Creates a new pool's metadata in `dir` (created if missing): the `journal/` directory and
    /// a superblock file whose slot 1 holds this superblock as generation 1 and whose slot 0 is
    /// zeros. Refuses to overwrite an existing superblock. Fsyncs the file and the directory.
    pub fn create(&mut self, dir: &Path) -> Result<(), FormatError> {
        fs::create_dir_all(dir).map_err(|e| FormatError::io(dir, "create pool directory", e))?;
        let journal = dir.join(JOURNAL_DIR);
        fs::create_dir_all(&journal)
            .map_err(|e| FormatError::io(&journal, "create journal directory", e))?;
        let path = Self::path(dir);
        let generation = 1;
        let mut both = [0u8; 2 * SLOT_SIZE];
        let slot = Self::slot_of(generation);
        self.encode(
            generation,
            &mut both[slot * SLOT_SIZE..(slot + 1) * SLOT_SIZE],
        )
        .map_err(|m| m.at(&path, "superblock", 0))?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| FormatError::io(&path, "create superblock", e))?;
        file.write_all_at(&both, 0)
            .map_err(|e| FormatError::io(&path, "write superblock", e))?;
        file.sync_all()
            .map_err(|e| FormatError::io(&path, "fsync superblock", e))?;
        fsync_dir(dir)?;
        self.generation = generation;
        Ok(())
    }

    /// Reads the pool's superblock: the valid slot with the newest generation. A slot whose
    /// magic and checksum are good but whose version is not [`FORMAT_VERSION`] makes the whole
    /// pool refused (a newer Shoal wrote it; the other slot is stale), with both versions named.
    pub fn read(dir: &Path) -> Result<Superblock, FormatError> {
        let path = Self::path(dir);
        let mut bytes = Vec::with_capacity(2 * SLOT_SIZE);
        File::open(&path)
            .and_then(|f| f.take(2 * SLOT_SIZE as u64).read_to_end(&mut bytes))
            .map_err(|e| FormatError::io(&path, "read superblock", e))?;
        let slots = [0, 1].map(|slot| Self::decode_slot(&path, &bytes, slot));
        let [slot0, slot1] = slots;
        for result in [&slot0, &slot1] {
            if let Err(FormatError::VersionMismatch {
                found, supported, ..
            }) = result
            {
                return Err(FormatError::VersionMismatch {
                    path,
                    found: *found,
                    supported: *supported,
                });
            }
        }
        match (slot0, slot1) {
            (Ok(a), Ok(b)) => Ok(if a.generation > b.generation { a } else { b }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(e0), Err(e1)) => Err(FormatError::NoValidSuperblock {
                path,
                slot0: Box::new(e0),
                slot1: Box::new(e1),
            }),
        }
    }

    /// Commits this superblock as generation `self.generation + 1`: writes the idle slot
    /// (`generation % 2`, never the one holding the newest valid copy) and fdatasyncs the file.
    /// `self.generation` is updated only once the write is durable. The directory needs no
    /// fsync: the file exists and keeps its size.
    pub fn write(&mut self, dir: &Path) -> Result<(), FormatError> {
        let path = Self::path(dir);
        let generation = self.generation + 1;
        let mut slot = [0u8; SLOT_SIZE];
        self.encode(generation, &mut slot)
            .map_err(|m| m.at(&path, "superblock", 0))?;
        let offset = (Self::slot_of(generation) * SLOT_SIZE) as u64;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| FormatError::io(&path, "open superblock", e))?;
        file.write_all_at(&slot, offset)
            .map_err(|e| FormatError::io(&path, "write superblock slot", e))?;
        file.sync_data()
            .map_err(|e| FormatError::io(&path, "fdatasync superblock", e))?;
        self.generation = generation;
        Ok(())
    }

    /// The slot a generation is written to.
    fn slot_of(generation: u64) -> usize {
        (generation % 2) as usize
    }

    /// Checks the fields that have rules.
    fn check(&self) -> Result<(), Malformed> {
        let e = self.extent_size;
        if !e.is_power_of_two() || !(MIN_EXTENT_SIZE..=MAX_EXTENT_SIZE).contains(&e) {
            return Err(Malformed::Invalid(format!(
                "extent size {e} is not a power of two in {MIN_EXTENT_SIZE}..={MAX_EXTENT_SIZE}"
            )));
        }
        if self.soft_threshold_pct > 100 {
            return Err(Malformed::Invalid(format!(
                "soft threshold {}% is over 100%",
                self.soft_threshold_pct
            )));
        }
        if self.data_path.is_empty() || self.data_path.len() > MAX_DATA_PATH_LEN {
            return Err(Malformed::Invalid(format!(
                "data store path length {} is not in 1..={MAX_DATA_PATH_LEN}",
                self.data_path.len()
            )));
        }
        if let Some(name) = &self.checkpoint {
            check_checkpoint_name(name)?;
        }
        Ok(())
    }

    /// Encodes this superblock as `generation` into a zeroed slot.
    fn encode(&self, generation: u64, slot: &mut [u8]) -> Result<(), Malformed> {
        self.check()?;
        let name = self.checkpoint.as_deref().unwrap_or("");
        SLOT_MAGIC.put(slot, &SUPERBLOCK_MAGIC);
        SLOT_VERSION.put(slot, &FORMAT_VERSION.to_le_bytes());
        SLOT_GENERATION.put(slot, &generation.to_le_bytes());
        SLOT_EXTENT_SIZE.put(slot, &self.extent_size.to_le_bytes());
        SLOT_CAPACITY.put(slot, &self.capacity_extents.to_le_bytes());
        SLOT_CHECKPOINT_SEQ.put(slot, &self.checkpoint_seq.to_le_bytes());
        SLOT_NEXT_IMAGE.put(slot, &self.next_image_id.to_le_bytes());
        SLOT_SOFT_THRESHOLD.put(slot, &[self.soft_threshold_pct]);
        SLOT_UUID.put(slot, &self.uuid);
        // check() bounds both lengths by their fields' sizes (255 and 3769 bytes).
        SLOT_CHECKPOINT_NAME_LEN.put(slot, &[name.len() as u8]);
        slot[SLOT_CHECKPOINT_NAME.offset..][..name.len()].copy_from_slice(name.as_bytes());
        SLOT_DATA_PATH_LEN.put(slot, &(self.data_path.len() as u16).to_le_bytes());
        slot[SLOT_DATA_PATH.offset..][..self.data_path.len()]
            .copy_from_slice(self.data_path.as_bytes());
        let crc = crc32c::crc32c(&slot[..SLOT_CRC.offset]);
        SLOT_CRC.put(slot, &crc.to_le_bytes());
        Ok(())
    }

    /// Decodes slot `index` of the superblock file's bytes.
    fn decode_slot(path: &Path, bytes: &[u8], index: usize) -> Result<Superblock, FormatError> {
        let start = index * SLOT_SIZE;
        let Some(slot) = bytes.get(start..start + SLOT_SIZE) else {
            return Err(FormatError::Truncated {
                path: path.to_owned(),
                what: "superblock slot",
                offset: start as u64,
            });
        };
        let magic: [u8; 8] = SLOT_MAGIC.array(slot);
        if magic != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic {
                path: path.to_owned(),
                offset: start as u64,
                expected: SUPERBLOCK_MAGIC,
                found: magic,
            });
        }
        let stored = SLOT_CRC.u32(slot);
        let computed = crc32c::crc32c(&slot[..SLOT_CRC.offset]);
        if stored != computed {
            return Err(FormatError::Checksum {
                path: path.to_owned(),
                what: "superblock slot",
                offset: start as u64,
                stored,
                computed,
            });
        }
        let version = SLOT_VERSION.u32(slot);
        if version != FORMAT_VERSION {
            return Err(FormatError::VersionMismatch {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        Self::decode_fields(slot, index).map_err(|m| m.at(path, "superblock slot", start as u64))
    }

    /// Decodes the fields of a version-1 slot whose checksum is good.
    fn decode_fields(slot: &[u8], index: usize) -> Result<Superblock, Malformed> {
        let generation = SLOT_GENERATION.u64(slot);
        if Self::slot_of(generation) != index {
            return Err(Malformed::Invalid(format!(
                "generation {generation} does not belong in slot {index}"
            )));
        }
        let name_len = usize::from(SLOT_CHECKPOINT_NAME_LEN.u8(slot));
        let checkpoint = match name_len {
            0 => None,
            n => Some(utf8(
                &slot[SLOT_CHECKPOINT_NAME.offset..][..n],
                "checkpoint name",
            )?),
        };
        let path_len = usize::from(SLOT_DATA_PATH_LEN.u16(slot));
        if path_len > MAX_DATA_PATH_LEN {
            return Err(Malformed::Invalid(format!(
                "data store path length {path_len} is over {MAX_DATA_PATH_LEN}"
            )));
        }
        let sb = Superblock {
            generation,
            extent_size: SLOT_EXTENT_SIZE.u32(slot),
            capacity_extents: SLOT_CAPACITY.u64(slot),
            data_path: utf8(
                &slot[SLOT_DATA_PATH.offset..][..path_len],
                "data store path",
            )?,
            checkpoint,
            checkpoint_seq: SLOT_CHECKPOINT_SEQ.u64(slot),
            next_image_id: SLOT_NEXT_IMAGE.u64(slot),
            soft_threshold_pct: SLOT_SOFT_THRESHOLD.u8(slot),
            uuid: SLOT_UUID.array(slot),
        };
        sb.check()?;
        Ok(sb)
    }
}

/// Decodes UTF-8 text.
fn utf8(bytes: &[u8], what: &str) -> Result<String, Malformed> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| Malformed::Invalid(format!("{what} is not UTF-8: {e}")))
}

/// Checks a checkpoint file name: a plain file name of at most 255 bytes.
fn check_checkpoint_name(name: &str) -> Result<(), Malformed> {
    if name.is_empty()
        || name.len() > MAX_CHECKPOINT_NAME_LEN
        || name.contains('/')
        || name == "."
        || name == ".."
    {
        return Err(Malformed::Invalid(format!(
            "checkpoint name {name:?} is not a plain file name of 1..={MAX_CHECKPOINT_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

/// The file name of the checkpoint written for superblock generation `generation`.
pub fn checkpoint_name(generation: u64) -> String {
    format!("checkpoint-{generation}.ckpt")
}

/// The generation in a checkpoint file name made by [`checkpoint_name`].
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The journal directory of the pool in `dir`.
pub fn journal_dir(dir: &Path) -> PathBuf {
    dir.join(JOURNAL_DIR)
}

/// A fresh random pool UUID (RFC 9562 version 4) from the kernel's random source.
pub fn random_uuid() -> Result<[u8; 16], FormatError> {
    let path = Path::new("/dev/urandom");
    let mut uuid = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut uuid))
        .map_err(|e| FormatError::io(path, "read random bytes", e))?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    Ok(uuid)
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FormatError> {
    crate::storage::sync_dir(dir).map_err(|e| FormatError::io(dir, "fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let mut sb = Superblock::new(DEFAULT_EXTENT_SIZE, 1 << 20, [7; 16]);
        sb.data_path = "/dev/disk/by-id/nvme-shoal".to_owned();
        sb.checkpoint = Some(checkpoint_name(12));
        sb.checkpoint_seq = 99;
        sb.next_image_id = 42;
        sb.soft_threshold_pct = 90;
        sb
    }

    fn corrupt_slot(dir: &Path, slot: usize) {
        let path = Superblock::path(dir);
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[0xff], (slot * SLOT_SIZE + 100) as u64)
            .unwrap();
    }

    #[test]
    fn superblock_create_read_write_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut sb = sample();
        sb.create(dir.path()).unwrap();
        assert_eq!(sb.generation, 1);
        assert!(dir.path().join(JOURNAL_DIR).is_dir());
        assert_eq!(Superblock::read(dir.path()).unwrap(), sb);
        sb.checkpoint = None;
        sb.checkpoint_seq = 0;
        sb.data_path = DEFAULT_DATA_PATH.to_owned();
        sb.write(dir.path()).unwrap();
        assert_eq!(sb.generation, 2);
        assert_eq!(Superblock::read(dir.path()).unwrap(), sb);
        let mut again = sample();
        assert!(matches!(
            again.create(dir.path()),
            Err(FormatError::Io { .. })
        ));
    }

    #[test]
    fn superblock_newest_valid_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut sb = sample();
        sb.create(dir.path()).unwrap();
        sb.next_image_id = 43;
        sb.write(dir.path()).unwrap();
        sb.next_image_id = 44;
        sb.write(dir.path()).unwrap();
        let read = Superblock::read(dir.path()).unwrap();
        assert_eq!((read.generation, read.next_image_id), (3, 44));
    }

    #[test]
    fn superblock_corrupt_newest_falls_back_to_older() {
        let dir = tempfile::tempdir().unwrap();
        let mut sb = sample();
        sb.create(dir.path()).unwrap();
        sb.next_image_id = 43;
        sb.write(dir.path()).unwrap(); // generation 2, slot 0
        corrupt_slot(dir.path(), 0);
        let read = Superblock::read(dir.path()).unwrap();
        assert_eq!((read.generation, read.next_image_id), (1, 42));
        // The next write goes to the damaged slot, never over the good one.
        let mut read = read;
        read.write(dir.path()).unwrap();
        assert_eq!(Superblock::read(dir.path()).unwrap().generation, 2);
        corrupt_slot(dir.path(), 1);
        assert_eq!(Superblock::read(dir.path()).unwrap().generation, 2);
    }

    #[test]
    fn superblock_both_slots_invalid_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        sample().create(dir.path()).unwrap();
        corrupt_slot(dir.path(), 1);
        let err = Superblock::read(dir.path()).unwrap_err();
        assert!(
            matches!(&err, FormatError::NoValidSuperblock { slot0, slot1, .. }
                if matches!(**slot0, FormatError::BadMagic { .. })
                && matches!(**slot1, FormatError::Checksum { .. })),
            "{err}"
        );
    }

    #[test]
    fn superblock_version_2_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut sb = sample();
        sb.create(dir.path()).unwrap();
        // A newer Shoal writes generation 2 (slot 0) as version 2.
        let mut slot = [0u8; SLOT_SIZE];
        sb.encode(2, &mut slot).unwrap();
        SLOT_VERSION.put(&mut slot, &2u32.to_le_bytes());
        let crc = crc32c::crc32c(&slot[..SLOT_CRC.offset]);
        SLOT_CRC.put(&mut slot, &crc.to_le_bytes());
        let file = OpenOptions::new()
            .write(true)
            .open(Superblock::path(dir.path()))
            .unwrap();
        file.write_all_at(&slot, 0).unwrap();
        let err = Superblock::read(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::VersionMismatch {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("version 2"), "{message}");
        assert!(message.contains("version 1"), "{message}");
    }

    #[test]
    fn superblock_refuses_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            Superblock::new(3000, 10, [0; 16]),
            Superblock::new(2 * MAX_EXTENT_SIZE, 10, [0; 16]),
            Superblock {
                soft_threshold_pct: 101,
                ..sample()
            },
            Superblock {
                checkpoint: Some("../x".to_owned()),
                ..sample()
            },
            Superblock {
                data_path: "x".repeat(MAX_DATA_PATH_LEN + 1),
                ..sample()
            },
        ] {
            let mut bad = bad;
            let err = bad.create(dir.path()).unwrap_err();
            assert!(matches!(err, FormatError::Invalid { .. }), "{err}");
        }
        let mut longest = Superblock {
            data_path: "x".repeat(MAX_DATA_PATH_LEN),
            ..sample()
        };
        longest.create(dir.path()).unwrap();
        assert_eq!(Superblock::read(dir.path()).unwrap(), longest);
    }

    #[test]
    fn image_meta_round_trip() {
        let meta = ImageMeta {
            image: 5,
            parent: Some(0),
            kind: ImageKind::Snapshot,
            name: "golden@monday".to_owned(),
            size_bytes: 40 << 30,
            block_size: 512,
            thin: true,
            identity: [0xab; 16],
            created_unix_secs: 1_790_000_000,
        };
        let mut out = Vec::new();
        meta.encode(&mut out).unwrap();
        assert_eq!(out.len(), IMAGE_META_FIXED_LEN + meta.name.len());
        assert_eq!(ImageMeta::decode(&out).unwrap(), (meta.clone(), out.len()));
        assert!(matches!(
            ImageMeta::decode(&out[..out.len() - 1]),
            Err(Malformed::Short)
        ));
        let bad = ImageMeta {
            name: "a\0b".to_owned(),
            ..meta
        };
        assert!(bad.encode(&mut out).is_err());
    }

    /// The offsets docs/format.md gives.
    #[test]
    fn layout_matches_docs_format_md() {
        let slot = [
            SLOT_MAGIC,
            SLOT_VERSION,
            SLOT_GENERATION,
            SLOT_EXTENT_SIZE,
            SLOT_CAPACITY,
            SLOT_CHECKPOINT_SEQ,
            SLOT_NEXT_IMAGE,
            SLOT_SOFT_THRESHOLD,
            SLOT_UUID,
            SLOT_CHECKPOINT_NAME_LEN,
            SLOT_CHECKPOINT_NAME,
            SLOT_DATA_PATH_LEN,
            SLOT_DATA_PATH,
            SLOT_CRC,
        ]
        .map(|f| (f.offset, f.len));
        assert_eq!(
            slot,
            [
                (0, 8),
                (8, 4),
                (12, 8),
                (20, 4),
                (24, 8),
                (32, 8),
                (40, 8),
                (48, 1),
                (49, 16),
                (65, 1),
                (66, 255),
                (321, 2),
                (323, 3769),
                (4092, 4),
            ]
        );
        let meta = [
            IM_IMAGE,
            IM_PARENT,
            IM_HAS_PARENT,
            IM_KIND,
            IM_THIN,
            IM_BLOCK_SIZE,
            IM_SIZE_BYTES,
            IM_CREATED,
            IM_IDENTITY,
            IM_NAME_LEN,
        ]
        .map(|f| f.offset);
        assert_eq!(meta, [0, 8, 16, 17, 18, 19, 23, 31, 39, 55]);
    }

    #[test]
    fn checkpoint_names_parse() {
        assert_eq!(parse_checkpoint_name(&checkpoint_name(17)), Some(17));
        assert_eq!(parse_checkpoint_name("checkpoint-.ckpt"), None);
        assert_eq!(parse_checkpoint_name("checkpoint-+1.ckpt"), None);
        assert_eq!(parse_checkpoint_name("superblock"), None);
    }

    #[test]
    fn random_uuids_differ_and_are_version_4() {
        let (a, b) = (random_uuid().unwrap(), random_uuid().unwrap());
        assert_ne!(a, b);
        assert_eq!(a[6] >> 4, 4);
    }
}
