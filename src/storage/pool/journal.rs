//! Journal files (`journal/<name>.log`): append-only records of mapping changes (written by the
//! shards, one file each) and catalog operations (written by the control thread, its own file).
//! docs/format.md § Journal has the byte tables; this file is their one definition in code.
//!
//! # Record
//! `len u32 | crc32c u32 | seq u64 | kind u8 | payload`: `len` counts the bytes from `seq` to the
//! end of the payload (9 + payload length, at most [`MAX_RECORD_LEN`]) and the CRC32C covers
//! exactly those bytes. Sequence numbers come from one pool-wide counter, so records of all the
//! files order globally; recovery sorts them (a file need not be in order: the control thread
//! writes a snapshot's record with the seq the shard took at the snapshot point).
//!
//! # Replay semantics (in seq order, after the checkpoint's state)
//! - `Map { image, lext, pext }`: the image's logical extent `lext` now maps to physical extent
//!   `pext`; `pext == 0` unmaps it. The extent it mapped before loses this reference.
//! - `UnmapRange { image, first_lext, count }`: unmaps `first_lext .. first_lext + count` (one
//!   record for a large UNMAP / WRITE SAME, where one `Map` per extent would flood the journal).
//! - `MapGroup { image, entries }`: each `(lext, pext)` of `entries` as a `Map`, all or none (a
//!   torn record is cut whole): the extents of a WRITE ATOMIC switch together.
//! - `Provision { image, thin }`: the volume becomes thin (or full: space reserved for every
//!   extent it does not own alone, which the catalog re-reserves at start).
//! - `CreateImage(meta)`: adds `meta` to the catalog. With `parent == None` the image is empty
//!   (every extent unmapped). With `parent == Some(p)` its map becomes a copy of `p`'s map as
//!   replay has built it at this record's seq: `kind == Snapshot` is a snapshot of volume `p`,
//!   `kind == Volume` a clone of `p` (usually a snapshot; cloning a volume directly is an implicit
//!   snapshot). Snapshot and clone are one record: both are "copy a map at a seq", and differ only
//!   in the new image being writable.
//! - `DeleteImage { image }`: removes the image and its map; its references drop (refcounts are
//!   rebuilt by a scan after replay, so nothing else is recorded).
//! - `Rollback { image, snapshot }`: volume `image`'s map becomes a copy of `snapshot`'s map; the
//!   snapshot and every other image are unchanged.
//! - `Resize { image, size_bytes }`: the new logical size. Growing adds unmapped extents;
//!   shrinking unmaps every extent at or past `ceil(size_bytes / extent_size)`.
//! - `Rename { image, name }`: the image's new name; a volume's snapshots (`old@s`) follow it as
//!   `name@s` in the same record.
//!
//! A record about an image that does not exist at that point of replay breaks an invariant of the
//! writers; recovery skips it and `shoal check` reports it (any extent it named is then simply
//! unreferenced, hence free).
//!
//! # Torn tails
//! A process killed with `kill -9` leaves every appended record in the page cache: complete. A
//! power failure can leave the last records partial, zeroed or garbage. The reader stops at the
//! first record that does not pass its checks (length in range, inside the file, CRC). If a valid
//! record starts anywhere after that point (any byte offset, found by a scan), the file is corrupt
//! ([`FormatError::CorruptJournal`]); otherwise everything from that point on is a torn tail, which
//! the reader reports ([`JournalReader::discarded_bytes`]) and [`JournalWriter::open`] cuts off.
//! Names cannot hold control characters, so no payload can embed a fake record (every header
//! holds zero bytes). Limitation: a filesystem that persists a later page of unsynced records but
//! not an earlier one (a hole after power loss) is reported as corruption; that needs an operator.
//!
//! # Retiring records
//! A checkpoint covers every record with `seq <= checkpoint_seq`. The pool rotates each writer to a
//! new file ([`JournalWriter::rotate`]) when it takes a checkpoint, and once the superblock naming
//! the checkpoint is durable it deletes the retired files whose `max_seq` is covered
//! ([`remove_journals`]). Files are never truncated in place.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    Field, FormatError, ImageMeta, Malformed, decode_prefixed_name, encode_prefixed_name,
    fsync_dir, journal_dir,
};

/// Largest `len` of a record (the bytes from `seq` to the end of the payload).
pub const MAX_RECORD_LEN: u32 = 64 * 1024;

// Record header layout; the payload follows KIND.
const REC_LEN: Field = Field::first(4);
const REC_CRC: Field = Field::after(REC_LEN, 4);
const REC_SEQ: Field = Field::after(REC_CRC, 8);
const REC_KIND: Field = Field::after(REC_SEQ, 1);
/// Bytes before the part `len` counts (`len` and `crc`).
const FRAME_LEN: usize = REC_CRC.end();
/// Smallest `len`: `seq` and `kind` with an empty payload.
const MIN_RECORD_LEN: u32 = (REC_KIND.end() - FRAME_LEN) as u32;
/// Offset of the payload in a record.
pub const PAYLOAD_OFFSET: usize = REC_KIND.end();
const _: () = assert!(PAYLOAD_OFFSET == 17 && MIN_RECORD_LEN == 9);

// Payload layouts (offsets from the start of the payload).
const MAP_IMAGE: Field = Field::first(8);
const MAP_LEXT: Field = Field::after(MAP_IMAGE, 8);
const MAP_PEXT: Field = Field::after(MAP_LEXT, 8);
const UNMAP_IMAGE: Field = Field::first(8);
const UNMAP_FIRST: Field = Field::after(UNMAP_IMAGE, 8);
const UNMAP_COUNT: Field = Field::after(UNMAP_FIRST, 8);
const DELETE_IMAGE: Field = Field::first(8);
const ROLLBACK_IMAGE: Field = Field::first(8);
const ROLLBACK_SNAPSHOT: Field = Field::after(ROLLBACK_IMAGE, 8);
const RESIZE_IMAGE: Field = Field::first(8);
const RESIZE_SIZE: Field = Field::after(RESIZE_IMAGE, 8);
const RENAME_IMAGE: Field = Field::first(8);
// RENAME: then name_len u16 and the name.
const GROUP_IMAGE: Field = Field::first(8);
const GROUP_COUNT: Field = Field::after(GROUP_IMAGE, 4);
// MAP_GROUP: then `count` entries of lext u64, pext u64.
const PROVISION_IMAGE: Field = Field::first(8);
const PROVISION_THIN: Field = Field::after(PROVISION_IMAGE, 1);
/// Bytes of one `MapGroup` entry.
const GROUP_ENTRY_LEN: usize = 16;
/// Most entries of one `MapGroup` (the record stays under [`MAX_RECORD_LEN`]).
pub const MAX_GROUP_ENTRIES: usize = 1024;

/// The on-disk kind byte of a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKind(pub u8);

macro_rules! record_kinds {
    ($($name:ident = $value:expr,)*) => {
        impl RecordKind {
            $(
                #[doc = concat!("`", stringify!($name), "` record.")]
                pub const $name: RecordKind = RecordKind($value);
            )*

            /// The kind's name, if this build knows it.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

record_kinds! {
    MAP = 1,
    CREATE_IMAGE = 2,
    DELETE_IMAGE = 3,
    ROLLBACK = 4,
    RESIZE = 5,
    RENAME = 6,
    UNMAP_RANGE = 7,
    MAP_GROUP = 8,
    PROVISION = 9,
}

impl std::fmt::Debug for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "RecordKind({})", self.0),
        }
    }
}

/// What a record changes; see the module docs for the replay semantics of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Logical extent `lext` of `image` maps to physical extent `pext` (0: unmapped).
    Map {
        /// Image id.
        image: u64,
        /// Logical extent.
        lext: u64,
        /// Physical extent, 0 for none.
        pext: u64,
    },
    /// A new image: empty, or a snapshot / clone of `parent`'s map at this seq.
    CreateImage(Box<ImageMeta>),
    /// The image is gone.
    DeleteImage {
        /// Image id.
        image: u64,
    },
    /// Volume `image`'s map becomes a copy of `snapshot`'s.
    Rollback {
        /// The volume.
        image: u64,
        /// The snapshot it returns to.
        snapshot: u64,
    },
    /// The image's logical size changes.
    Resize {
        /// Image id.
        image: u64,
        /// New size in bytes.
        size_bytes: u64,
    },
    /// The image's name changes.
    Rename {
        /// Image id.
        image: u64,
        /// New name.
        name: String,
    },
    /// Logical extents `first_lext .. first_lext + count` of `image` are unmapped.
    UnmapRange {
        /// Image id.
        image: u64,
        /// First logical extent.
        first_lext: u64,
        /// How many.
        count: u64,
    },
    /// Each `(lext, pext)` of `entries` as a `Map` of `image`, all in one record.
    MapGroup {
        /// Image id.
        image: u64,
        /// Logical extent and the physical extent it now maps (0: unmapped), at most
        /// [`MAX_GROUP_ENTRIES`].
        entries: Vec<(u64, u64)>,
    },
    /// Volume `image` becomes thin provisioned, or full.
    Provision {
        /// Image id.
        image: u64,
        /// Thin (true) or full (false).
        thin: bool,
    },
}

impl Op {
    /// The record kind of this operation.
    pub fn kind(&self) -> RecordKind {
        match self {
            Op::Map { .. } => RecordKind::MAP,
            Op::CreateImage(_) => RecordKind::CREATE_IMAGE,
            Op::DeleteImage { .. } => RecordKind::DELETE_IMAGE,
            Op::Rollback { .. } => RecordKind::ROLLBACK,
            Op::Resize { .. } => RecordKind::RESIZE,
            Op::Rename { .. } => RecordKind::RENAME,
            Op::UnmapRange { .. } => RecordKind::UNMAP_RANGE,
            Op::MapGroup { .. } => RecordKind::MAP_GROUP,
            Op::Provision { .. } => RecordKind::PROVISION,
        }
    }

    /// Appends the payload.
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        fn u64s(out: &mut Vec<u8>, values: &[u64]) {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        match self {
            Op::Map { image, lext, pext } => u64s(out, &[*image, *lext, *pext]),
            Op::CreateImage(meta) => meta.encode(out)?,
            Op::DeleteImage { image } => u64s(out, &[*image]),
            Op::Rollback { image, snapshot } => u64s(out, &[*image, *snapshot]),
            Op::Resize { image, size_bytes } => u64s(out, &[*image, *size_bytes]),
            Op::Rename { image, name } => {
                u64s(out, &[*image]);
                encode_prefixed_name(name, out)?;
            }
            Op::UnmapRange {
                image,
                first_lext,
                count,
            } => u64s(out, &[*image, *first_lext, *count]),
            Op::MapGroup { image, entries } => {
                if entries.len() > MAX_GROUP_ENTRIES {
                    return Err(Malformed::Invalid(format!(
                        "{} entries in a map group (at most {MAX_GROUP_ENTRIES})",
                        entries.len()
                    )));
                }
                u64s(out, &[*image]);
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for &(lext, pext) in entries {
                    u64s(out, &[lext, pext]);
                }
            }
            Op::Provision { image, thin } => {
                u64s(out, &[*image]);
                out.push(u8::from(*thin));
            }
        }
        Ok(())
    }

    /// Decodes a payload of `kind`, which must be used entirely.
    fn decode_payload(kind: RecordKind, p: &[u8]) -> Result<Op, Malformed> {
        let fixed = |last: Field| match p.len().cmp(&last.end()) {
            Ordering::Less => Err(Malformed::Short),
            Ordering::Equal => Ok(()),
            Ordering::Greater => Err(trailing(kind, p.len() - last.end())),
        };
        let op = match kind {
            RecordKind::MAP => {
                fixed(MAP_PEXT)?;
                Op::Map {
                    image: MAP_IMAGE.u64(p),
                    lext: MAP_LEXT.u64(p),
                    pext: MAP_PEXT.u64(p),
                }
            }
            RecordKind::CREATE_IMAGE => {
                let (meta, used) = ImageMeta::decode(p)?;
                if used != p.len() {
                    return Err(trailing(kind, p.len() - used));
                }
                Op::CreateImage(Box::new(meta))
            }
            RecordKind::DELETE_IMAGE => {
                fixed(DELETE_IMAGE)?;
                Op::DeleteImage {
                    image: DELETE_IMAGE.u64(p),
                }
            }
            RecordKind::ROLLBACK => {
                fixed(ROLLBACK_SNAPSHOT)?;
                Op::Rollback {
                    image: ROLLBACK_IMAGE.u64(p),
                    snapshot: ROLLBACK_SNAPSHOT.u64(p),
                }
            }
            RecordKind::RESIZE => {
                fixed(RESIZE_SIZE)?;
                Op::Resize {
                    image: RESIZE_IMAGE.u64(p),
                    size_bytes: RESIZE_SIZE.u64(p),
                }
            }
            RecordKind::RENAME => {
                if p.len() < RENAME_IMAGE.end() {
                    return Err(Malformed::Short);
                }
                let (name, used) = decode_prefixed_name(&p[RENAME_IMAGE.end()..])?;
                let end = RENAME_IMAGE.end() + used;
                if end != p.len() {
                    return Err(trailing(kind, p.len() - end));
                }
                Op::Rename {
                    image: RENAME_IMAGE.u64(p),
                    name,
                }
            }
            RecordKind::UNMAP_RANGE => {
                fixed(UNMAP_COUNT)?;
                Op::UnmapRange {
                    image: UNMAP_IMAGE.u64(p),
                    first_lext: UNMAP_FIRST.u64(p),
                    count: UNMAP_COUNT.u64(p),
                }
            }
            RecordKind::MAP_GROUP => decode_map_group(p)?,
            RecordKind::PROVISION => {
                fixed(PROVISION_THIN)?;
                let thin = match p[PROVISION_THIN.offset] {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(Malformed::Invalid(format!(
                            "thin flag {other} in a Provision record"
                        )));
                    }
                };
                Op::Provision {
                    image: PROVISION_IMAGE.u64(p),
                    thin,
                }
            }
            other => {
                return Err(Malformed::Invalid(format!(
                    "unknown record kind {}",
                    other.0
                )));
            }
        };
        Ok(op)
    }
}

/// A `MapGroup` payload: the image, a count, and exactly that many entries.
fn decode_map_group(p: &[u8]) -> Result<Op, Malformed> {
    if p.len() < GROUP_COUNT.end() {
        return Err(Malformed::Short);
    }
    let count = u32::from_le_bytes(
        p[GROUP_COUNT.offset..GROUP_COUNT.end()]
            .try_into()
            .map_err(|_| Malformed::Short)?,
    ) as usize;
    if count > MAX_GROUP_ENTRIES {
        return Err(Malformed::Invalid(format!(
            "{count} entries in a map group (at most {MAX_GROUP_ENTRIES})"
        )));
    }
    let body = &p[GROUP_COUNT.end()..];
    match body.len().cmp(&(count * GROUP_ENTRY_LEN)) {
        Ordering::Less => return Err(Malformed::Short),
        Ordering::Greater => {
            return Err(trailing(
                RecordKind::MAP_GROUP,
                body.len() - count * GROUP_ENTRY_LEN,
            ));
        }
        Ordering::Equal => {}
    }
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let entries = body
        .chunks_exact(GROUP_ENTRY_LEN)
        .map(|e| (u64_at(&e[..8]), u64_at(&e[8..])))
        .collect();
    Ok(Op::MapGroup {
        image: GROUP_IMAGE.u64(p),
        entries,
    })
}

/// The error for `extra` bytes after a payload.
fn trailing(kind: RecordKind, extra: usize) -> Malformed {
    Malformed::Invalid(format!("{extra} bytes after the {kind:?} payload"))
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Pool-wide sequence number.
    pub seq: u64,
    /// The change.
    pub op: Op,
}

impl Record {
    /// Encodes the whole record (header and payload) into `out`, which is cleared first.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        out.clear();
        out.resize(PAYLOAD_OFFSET, 0);
        self.op.encode_payload(out)?;
        let len = out.len() - FRAME_LEN;
        if len > MAX_RECORD_LEN as usize {
            return Err(Malformed::Invalid(format!(
                "record length {len} is over {MAX_RECORD_LEN}"
            )));
        }
        REC_LEN.put(out, &(len as u32).to_le_bytes());
        REC_SEQ.put(out, &self.seq.to_le_bytes());
        REC_KIND.put(out, &[self.op.kind().0]);
        let crc = crc32c::crc32c(&out[FRAME_LEN..]);
        REC_CRC.put(out, &crc.to_le_bytes());
        Ok(())
    }

    /// Decodes the `len` bytes a record's CRC covers (`seq` to the end of the payload).
    fn decode_body(body: &[u8]) -> Result<Record, Malformed> {
        // The same fields as REC_SEQ and REC_KIND, counted from the start of the body.
        const BODY_SEQ: Field = Field::first(REC_SEQ.len);
        const BODY_KIND: Field = Field::after(BODY_SEQ, REC_KIND.len);
        if body.len() < BODY_KIND.end() {
            return Err(Malformed::Short);
        }
        let kind = RecordKind(BODY_KIND.u8(body));
        let op = Op::decode_payload(kind, &body[BODY_KIND.end()..])?;
        Ok(Record {
            seq: BODY_SEQ.u64(body),
            op,
        })
    }
}

/// Whether a valid record (length in range, inside `bytes`, CRC right) starts at `bytes[0]`.
fn valid_record_at(bytes: &[u8]) -> bool {
    if bytes.len() < FRAME_LEN {
        return false;
    }
    let len = REC_LEN.u32(bytes);
    if !(MIN_RECORD_LEN..=MAX_RECORD_LEN).contains(&len) || bytes.len() - FRAME_LEN < len as usize {
        return false;
    }
    let body = &bytes[FRAME_LEN..][..len as usize];
    crc32c::crc32c(body) == REC_CRC.u32(bytes)
}

/// Reads the records of one journal file in file order.
///
/// Iterating yields `Ok(record)` for each valid record, then stops at the end of the file or at a
/// torn tail ([`JournalReader::discarded_bytes`] says how much was discarded), or yields one
/// `Err` (corruption, an invalid record with a good CRC, or I/O) and stops.
pub struct JournalReader {
    path: PathBuf,
    file: BufReader<File>,
    file_len: u64,
    offset: u64,
    discarded: u64,
    body: Vec<u8>,
    done: bool,
}

impl JournalReader {
    /// Opens a journal file for reading.
    pub fn open(path: &Path) -> Result<JournalReader, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, "open journal", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| FormatError::io(path, "stat journal", e))?
            .len();
        Ok(JournalReader {
            path: path.to_owned(),
            file: BufReader::with_capacity(256 * 1024, file),
            file_len,
            offset: 0,
            discarded: 0,
            body: Vec::new(),
            done: false,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset just past the last valid record read so far (once iteration has ended: the length
    /// of the valid part of the file).
    pub fn valid_len(&self) -> u64 {
        self.offset
    }

    /// Bytes of torn tail discarded (0 until iteration reaches it).
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// Reads exactly `buf.len()` bytes.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), FormatError> {
        self.file
            .read_exact(buf)
            .map_err(|e| FormatError::io(&self.path, "read journal", e))
    }

    /// The next record, `None` at the end or after a torn tail.
    fn next_record(&mut self) -> Result<Option<Record>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let remaining = self.file_len - self.offset;
        if remaining == 0 {
            self.done = true;
            return Ok(None);
        }
        if remaining < FRAME_LEN as u64 {
            return self.bad_record();
        }
        let mut frame = [0u8; FRAME_LEN];
        self.read(&mut frame)?;
        let len = REC_LEN.u32(&frame);
        if !(MIN_RECORD_LEN..=MAX_RECORD_LEN).contains(&len)
            || u64::from(len) > remaining - FRAME_LEN as u64
        {
            return self.bad_record();
        }
        let mut body = std::mem::take(&mut self.body);
        body.resize(len as usize, 0);
        let read = self.read(&mut body);
        self.body = body;
        read?;
        if crc32c::crc32c(&self.body) != REC_CRC.u32(&frame) {
            return self.bad_record();
        }
        let record = Record::decode_body(&self.body).map_err(|m| {
            self.done = true;
            m.at(&self.path, "journal record", self.offset)
        })?;
        self.offset += FRAME_LEN as u64 + u64::from(len);
        Ok(Some(record))
    }

    /// The record at `self.offset` fails its checks: a torn tail, or corruption if a valid
    /// record starts anywhere after it.
    fn bad_record(&mut self) -> Result<Option<Record>, FormatError> {
        self.done = true;
        let mut rest = Vec::new();
        self.file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| self.file.read_to_end(&mut rest))
            .map_err(|e| FormatError::io(&self.path, "read journal tail", e))?;
        if let Some(at) = (1..rest.len()).find(|&at| valid_record_at(&rest[at..])) {
            return Err(FormatError::CorruptJournal {
                path: self.path.clone(),
                offset: self.offset,
                next: self.offset + at as u64,
            });
        }
        self.discarded = self.file_len - self.offset;
        Ok(None)
    }
}

impl Iterator for JournalReader {
    type Item = Result<Record, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.next_record();
        if next.is_err() {
            self.done = true;
        }
        next.transpose()
    }
}

/// A journal file retired by [`JournalWriter::rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredJournal {
    /// The file.
    pub path: PathBuf,
    /// The highest sequence number in it (`None`: no records). It may be deleted once a durable
    /// checkpoint covers this seq.
    pub max_seq: Option<u64>,
}

/// Appends records to one journal file.
///
/// Each [`append`](JournalWriter::append) is one `pwrite(2)` at the end of the valid records,
/// encoded in a reused buffer: once it returns, the record is in the page cache and survives the
/// process being killed; [`sync`](JournalWriter::sync) makes it survive power loss. A failed
/// write is cut back off the file so that a later record never follows a partial one; if even
/// that fails the writer refuses further appends.
pub struct JournalWriter {
    path: PathBuf,
    file: File,
    len: u64,
    buf: Vec<u8>,
    max_seq: Option<u64>,
    poisoned: bool,
}

impl JournalWriter {
    /// Opens (creating if missing) a journal file for appending, after its last valid record.
    /// A torn tail is cut off (and the cut fsynced); a corrupt file is an error. Creating the
    /// file fsyncs its directory so that a later `sync` also makes the file's entry durable.
    pub fn open(path: &Path) -> Result<JournalWriter, FormatError> {
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path);
        let (file, len, max_seq) = match created {
            Ok(file) => {
                fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
                (file, 0, None)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::open_existing(path)?,
            Err(e) => return Err(FormatError::io(path, "create journal", e)),
        };
        Ok(JournalWriter {
            path: path.to_owned(),
            file,
            len,
            buf: Vec::with_capacity(4096),
            max_seq,
            poisoned: false,
        })
    }

    /// Scans an existing file and cuts a torn tail off: the file, its valid length and max seq.
    fn open_existing(path: &Path) -> Result<(File, u64, Option<u64>), FormatError> {
        let mut reader = JournalReader::open(path)?;
        let mut max_seq = None;
        for record in &mut reader {
            let seq = record?.seq;
            max_seq = Some(max_seq.map_or(seq, |m: u64| m.max(seq)));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| FormatError::io(path, "open journal", e))?;
        if reader.discarded_bytes() > 0 {
            file.set_len(reader.valid_len())
                .and_then(|()| file.sync_all())
                .map_err(|e| FormatError::io(path, "cut torn journal tail", e))?;
        }
        Ok((file, reader.valid_len(), max_seq))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of valid records in the file.
    pub fn size_bytes(&self) -> u64 {
        self.len
    }

    /// The highest sequence number in the file, `None` if it has no records.
    pub fn max_seq(&self) -> Option<u64> {
        self.max_seq
    }

    /// Appends one record with one write; no allocation once the buffer has grown.
    pub fn append(&mut self, record: &Record) -> Result<(), FormatError> {
        if self.poisoned {
            return Err(FormatError::io(
                &self.path,
                "append to journal",
                io::Error::other("an earlier failed append could not be cut back"),
            ));
        }
        record
            .encode(&mut self.buf)
            .map_err(|m| m.at(&self.path, "journal record to append", self.len))?;
        if let Err(e) = self.file.write_all_at(&self.buf, self.len) {
            if self.file.set_len(self.len).is_err() {
                self.poisoned = true;
            }
            return Err(FormatError::io(&self.path, "append to journal", e));
        }
        self.len += self.buf.len() as u64;
        self.max_seq = Some(self.max_seq.map_or(record.seq, |m| m.max(record.seq)));
        Ok(())
    }

    /// Makes every appended record durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), FormatError> {
        self.file
            .sync_data()
            .map_err(|e| FormatError::io(&self.path, "fdatasync journal", e))
    }

    /// Syncs this file, then continues in a new file at `new_path` (created, or opened after
    /// its last record). Returns the file retired, for deletion once a checkpoint covers it.
    pub fn rotate(&mut self, new_path: &Path) -> Result<RetiredJournal, FormatError> {
        self.sync()?;
        let old = std::mem::replace(self, JournalWriter::open(new_path)?);
        Ok(RetiredJournal {
            path: old.path,
            max_seq: old.max_seq,
        })
    }
}

/// Deletes journal files (retired and covered by a durable checkpoint), then fsyncs each
/// directory they were in.
pub fn remove_journals(paths: &[PathBuf]) -> Result<(), FormatError> {
    let mut dirs: Vec<&Path> = Vec::new();
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FormatError::io(path, "remove journal", e)),
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.into_iter().try_for_each(fsync_dir)
}

/// The `*.log` files of the pool in `pool_dir`, sorted by name.
pub fn list_journals(pool_dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let dir = journal_dir(pool_dir);
    let entries = fs::read_dir(&dir).map_err(|e| FormatError::io(&dir, "list journals", e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| FormatError::io(&dir, "list journals", e))?
            .path();
        if path.extension().is_some_and(|ext| ext == "log") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Every record with `seq > after_seq` from all `readers`, in seq order: what recovery replays
/// on top of the checkpoint that covers `after_seq`. Reads every reader to its end (their
/// [`discarded_bytes`](JournalReader::discarded_bytes) then tell what each torn tail cost).
/// Records are sorted in memory, so a file need not be in seq order; two records with the same
/// seq are an error.
pub fn replay_order(
    readers: &mut [JournalReader],
    after_seq: u64,
) -> Result<Vec<Record>, FormatError> {
    let mut tagged: Vec<(Record, usize)> = Vec::new();
    for (index, reader) in readers.iter_mut().enumerate() {
        for record in reader.by_ref() {
            let record = record?;
            if record.seq > after_seq {
                tagged.push((record, index));
            }
        }
    }
    tagged.sort_by_key(|(record, _)| record.seq);
    if let Some(pair) = tagged.windows(2).find(|w| w[0].0.seq == w[1].0.seq) {
        return Err(FormatError::DuplicateSeq {
            seq: pair[0].0.seq,
            first: readers[pair[0].1].path.clone(),
            second: readers[pair[1].1].path.clone(),
        });
    }
    Ok(tagged.into_iter().map(|(record, _)| record).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::pool::format::ImageKind;
    use proptest::prelude::*;

    fn meta(image: u64, parent: Option<u64>, kind: ImageKind, name: &str) -> Box<ImageMeta> {
        Box::new(ImageMeta {
            image,
            parent,
            kind,
            name: name.to_owned(),
            size_bytes: 10 << 30,
            block_size: 512,
            thin: true,
            identity: [image as u8; 16],
            created_unix_secs: 1_800_000_000 + image,
        })
    }

    fn every_kind() -> Vec<Record> {
        let ops = vec![
            Op::CreateImage(meta(1, None, ImageKind::Volume, "golden")),
            Op::Map {
                image: 1,
                lext: 7,
                pext: 1234,
            },
            Op::Map {
                image: 1,
                lext: 8,
                pext: 0,
            },
            Op::CreateImage(meta(2, Some(1), ImageKind::Snapshot, "golden@base")),
            Op::CreateImage(meta(3, Some(2), ImageKind::Volume, "vm-01")),
            Op::UnmapRange {
                image: 3,
                first_lext: 0,
                count: u64::MAX,
            },
            Op::Rollback {
                image: 1,
                snapshot: 2,
            },
            Op::Resize {
                image: 3,
                size_bytes: 20 << 30,
            },
            Op::Rename {
                image: 3,
                name: "vm-01-renamed ✓".to_owned(),
            },
            Op::DeleteImage { image: 1 },
        ];
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| Record {
                seq: 100 + i as u64,
                op,
            })
            .collect()
    }

    fn write_all(path: &Path, records: &[Record]) {
        let mut writer = JournalWriter::open(path).unwrap();
        for record in records {
            writer.append(record).unwrap();
        }
        writer.sync().unwrap();
    }

    fn read_all(path: &Path) -> (Vec<Record>, JournalReader) {
        let mut reader = JournalReader::open(path).unwrap();
        let records = reader.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
        (records, reader)
    }

    #[test]
    fn record_round_trip_every_kind() {
        let mut buf = Vec::new();
        for record in every_kind() {
            record.encode(&mut buf).unwrap();
            assert_eq!(REC_LEN.u32(&buf) as usize, buf.len() - FRAME_LEN);
            assert_eq!(RecordKind(REC_KIND.u8(&buf)), record.op.kind());
            assert_eq!(Record::decode_body(&buf[FRAME_LEN..]).unwrap(), record);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write_all(&path, &every_kind());
        let (records, reader) = read_all(&path);
        assert_eq!(records, every_kind());
        assert_eq!(reader.discarded_bytes(), 0);
    }

    #[test]
    fn record_map_bytes_match_the_table() {
        let mut buf = Vec::new();
        let record = Record {
            seq: 0x0102,
            op: Op::Map {
                image: 3,
                lext: 4,
                pext: 5,
            },
        };
        record.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), 17 + 24);
        assert_eq!(&buf[0..4], &33u32.to_le_bytes());
        assert_eq!(&buf[4..8], &crc32c::crc32c(&buf[8..]).to_le_bytes());
        assert_eq!(&buf[8..16], &0x0102u64.to_le_bytes());
        assert_eq!(buf[16], 1);
        assert_eq!(&buf[17..25], &3u64.to_le_bytes());
        assert_eq!(&buf[25..33], &4u64.to_le_bytes());
        assert_eq!(&buf[33..41], &5u64.to_le_bytes());
    }

    /// The offsets docs/format.md gives (payload offsets count from the payload's start).
    #[test]
    fn layout_matches_docs_format_md() {
        let header = [REC_LEN, REC_CRC, REC_SEQ, REC_KIND].map(|f| f.offset);
        assert_eq!(header, [0, 4, 8, 16]);
        let payloads = [
            MAP_IMAGE,
            MAP_LEXT,
            MAP_PEXT,
            UNMAP_IMAGE,
            UNMAP_FIRST,
            UNMAP_COUNT,
            DELETE_IMAGE,
            ROLLBACK_IMAGE,
            ROLLBACK_SNAPSHOT,
            RESIZE_IMAGE,
            RESIZE_SIZE,
            RENAME_IMAGE,
            GROUP_IMAGE,
            GROUP_COUNT,
            PROVISION_IMAGE,
            PROVISION_THIN,
        ]
        .map(|f| f.offset);
        assert_eq!(payloads, [0, 8, 16, 0, 8, 16, 0, 0, 8, 0, 8, 0, 0, 8, 0, 8]);
    }

    #[test]
    fn record_encode_refuses_bad_names() {
        let mut buf = Vec::new();
        for name in [String::new(), "a\nb".to_owned(), "x".repeat(2000)] {
            let record = Record {
                seq: 1,
                op: Op::Rename { image: 1, name },
            };
            assert!(record.encode(&mut buf).is_err());
        }
    }

    #[test]
    fn journal_torn_tail_at_every_offset_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let records = every_kind();
        write_all(&path, &records);
        let full = fs::read(&path).unwrap();
        let mut last = Vec::new();
        records.last().unwrap().encode(&mut last).unwrap();
        let start = full.len() - last.len();
        for cut in start..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (read, reader) = read_all(&path);
            assert_eq!(read, records[..records.len() - 1], "cut at {cut}");
            assert_eq!(reader.valid_len(), start as u64);
            assert_eq!(reader.discarded_bytes(), (cut - start) as u64);
            // The writer cuts the tail and appends after the last good record.
            let mut writer = JournalWriter::open(&path).unwrap();
            assert_eq!(writer.size_bytes(), start as u64);
            assert_eq!(writer.max_seq(), Some(records[records.len() - 2].seq));
            writer.append(records.last().unwrap()).unwrap();
            drop(writer);
            assert_eq!(read_all(&path).0, records);
        }
    }

    #[test]
    fn journal_garbage_tail_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let records = every_kind();
        write_all(&path, &records);
        let mut bytes = fs::read(&path).unwrap();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 4096]);
        bytes.extend_from_slice(&[0xa5u8; 100]);
        fs::write(&path, &bytes).unwrap();
        let (read, reader) = read_all(&path);
        assert_eq!(read, records);
        assert_eq!(reader.discarded_bytes(), 4196);
        assert_eq!(reader.valid_len(), good);
    }

    #[test]
    fn journal_flipped_bit_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let records = every_kind();
        write_all(&path, &records);
        let clean = fs::read(&path).unwrap();
        let mut first = Vec::new();
        records[0].encode(&mut first).unwrap();
        // A flip in the payload, the CRC, the seq and the length of the second record.
        for at in [
            first.len() + 20,
            first.len() + 5,
            first.len() + 9,
            first.len(),
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x10;
            fs::write(&path, &bytes).unwrap();
            let mut reader = JournalReader::open(&path).unwrap();
            assert_eq!(reader.next().unwrap().unwrap(), records[0]);
            let err = reader.next().unwrap().unwrap_err();
            assert!(
                matches!(err, FormatError::CorruptJournal { offset, .. }
                    if offset == first.len() as u64),
                "flip at {at}: {err}"
            );
            assert!(reader.next().is_none());
            assert!(matches!(
                JournalWriter::open(&path),
                Err(FormatError::CorruptJournal { .. })
            ));
        }
    }

    #[test]
    fn journal_good_crc_with_unknown_kind_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut buf = Vec::new();
        Record {
            seq: 1,
            op: Op::DeleteImage { image: 1 },
        }
        .encode(&mut buf)
        .unwrap();
        buf[REC_KIND.offset] = 99;
        let crc = crc32c::crc32c(&buf[FRAME_LEN..]);
        REC_CRC.put(&mut buf, &crc.to_le_bytes());
        fs::write(&path, &buf).unwrap();
        let err = JournalReader::open(&path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("unknown record kind 99"), "{err}");
    }

    #[test]
    fn replay_order_merges_journals_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let map = |seq, image| Record {
            seq,
            op: Op::Map {
                image,
                lext: seq,
                pext: seq + 1000,
            },
        };
        let shard0: Vec<_> = [1, 4, 5, 9].iter().map(|&s| map(s, 1)).collect();
        let shard1: Vec<_> = [2, 3, 8, 10].iter().map(|&s| map(s, 2)).collect();
        // The control journal need not be in seq order.
        let control = vec![
            Record {
                seq: 7,
                op: Op::CreateImage(meta(3, Some(1), ImageKind::Snapshot, "s")),
            },
            Record {
                seq: 6,
                op: Op::Resize {
                    image: 2,
                    size_bytes: 1 << 30,
                },
            },
        ];
        let paths: Vec<_> = ["shard-0", "shard-1", "control"]
            .iter()
            .map(|n| dir.path().join(format!("{n}.log")))
            .collect();
        write_all(&paths[0], &shard0);
        write_all(&paths[1], &shard1);
        write_all(&paths[2], &control);
        let mut readers: Vec<_> = paths
            .iter()
            .map(|p| JournalReader::open(p).unwrap())
            .collect();
        let merged = replay_order(&mut readers, 3).unwrap();
        let seqs: Vec<u64> = merged.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8, 9, 10]);
        assert!(matches!(merged[3].op, Op::CreateImage(_)));

        write_all(&paths[2], &[map(9, 3)]);
        let mut readers: Vec<_> = paths
            .iter()
            .map(|p| JournalReader::open(p).unwrap())
            .collect();
        let err = replay_order(&mut readers, 0).unwrap_err();
        assert!(
            matches!(err, FormatError::DuplicateSeq { seq: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn rotate_and_remove_retired_journals() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_dir(dir.path());
        fs::create_dir_all(&journal).unwrap();
        let first = journal.join("shard-0-1.log");
        let mut writer = JournalWriter::open(&first).unwrap();
        let records = every_kind();
        writer.append(&records[0]).unwrap();
        writer.append(&records[1]).unwrap();
        let retired = writer.rotate(&journal.join("shard-0-2.log")).unwrap();
        assert_eq!(
            retired,
            RetiredJournal {
                path: first.clone(),
                max_seq: Some(records[1].seq),
            }
        );
        writer.append(&records[2]).unwrap();
        assert_eq!(writer.max_seq(), Some(records[2].seq));
        assert_eq!(list_journals(dir.path()).unwrap().len(), 2);
        remove_journals(&[retired.path]).unwrap();
        assert_eq!(
            list_journals(dir.path()).unwrap(),
            [journal.join("shard-0-2.log")]
        );
        assert_eq!(read_all(writer.path()).0, records[2..3]);
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9@:._ é-]{1,40}"
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let meta = (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            arb_name(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<u64>(),
        )
            .prop_map(|(image, parent, snap, name, size, bs, thin, identity, t)| {
                Op::CreateImage(Box::new(ImageMeta {
                    image,
                    parent,
                    kind: if snap {
                        ImageKind::Snapshot
                    } else {
                        ImageKind::Volume
                    },
                    name,
                    size_bytes: size,
                    block_size: bs,
                    thin,
                    identity,
                    created_unix_secs: t,
                }))
            });
        prop_oneof![
            4 => (any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(image, lext, pext)| Op::Map { image, lext, pext }),
            1 => meta,
            1 => any::<u64>().prop_map(|image| Op::DeleteImage { image }),
            1 => (any::<u64>(), any::<u64>())
                .prop_map(|(image, snapshot)| Op::Rollback { image, snapshot }),
            1 => (any::<u64>(), any::<u64>())
                .prop_map(|(image, size_bytes)| Op::Resize { image, size_bytes }),
            1 => (any::<u64>(), arb_name()).prop_map(|(image, name)| Op::Rename { image, name }),
            1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(image, first_lext, count)| Op::UnmapRange { image, first_lext, count }
            ),
            1 => (any::<u64>(), proptest::collection::vec((any::<u64>(), any::<u64>()), 0..40))
                .prop_map(|(image, entries)| Op::MapGroup { image, entries }),
            1 => (any::<u64>(), any::<bool>()).prop_map(|(image, thin)| Op::Provision { image, thin }),
        ]
    }

    proptest! {
        #[test]
        fn proptest_record_sequences_round_trip(
            ops in proptest::collection::vec((any::<u64>(), arb_op()), 0..60),
            cut in any::<prop::sample::Index>(),
        ) {
            let records: Vec<Record> =
                ops.into_iter().map(|(seq, op)| Record { seq, op }).collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.log");
            write_all(&path, &records);
            let (read, reader) = read_all(&path);
            prop_assert_eq!(&read, &records);
            prop_assert_eq!(reader.discarded_bytes(), 0);
            // Any cut keeps exactly the records wholly before it.
            let bytes = fs::read(&path).unwrap();
            let cut = cut.index(bytes.len() + 1);
            fs::write(&path, &bytes[..cut]).unwrap();
            let (read, reader) = read_all(&path);
            let mut end = 0;
            let mut kept = 0;
            let mut buf = Vec::new();
            for record in &records {
                record.encode(&mut buf).unwrap();
                if end + buf.len() > cut {
                    break;
                }
                end += buf.len();
                kept += 1;
            }
            prop_assert_eq!(&read[..], &records[..kept]);
            prop_assert_eq!(reader.discarded_bytes(), (cut - end) as u64);
        }
    }
}
