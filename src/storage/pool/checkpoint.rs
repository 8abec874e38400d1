//! Checkpoint files (`checkpoint-<generation>.ckpt`): a full image of the catalog and of every
//! image's extent map as of one journal sequence number, written to a new file, fsynced, then
//! named by the superblock. docs/format.md § Checkpoint has the byte tables.
//!
//! Maps are stored as leaves of [`LEAF_ENTRIES`] entries (a physical extent number, 0 for
//! unmapped), each written once however many images share it, plus per image the sorted list of
//! (leaf index -> leaf number). On disk the list is run-length encoded: a run is a stretch where
//! both the leaf index and the leaf number go up by one. If the pool numbers leaves in the order it
//! first meets them walking the images, a snapshot or clone that shares most of its leaves with an
//! image written before it costs a few runs per difference, so a thousand snapshots cost what their
//! differences cost. [`CheckpointData`] is plain data, independent of the in-memory tree.
//!
//! The file is a header followed by three sections (images, leaves, leaf lists), each ending in
//! the CRC32C of its bytes. Writing streams through a buffer; reading checks every CRC, every
//! count and reference, and that each image's `mapped_extents` matches its leaves.
//!
//! A checkpoint file that no superblock names (a crash between writing it and committing the
//! superblock) is garbage: the pool deletes it at start, and the next checkpoint of the same
//! generation overwrites it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::format::{
    FORMAT_VERSION, Field, FormatError, IMAGE_META_FIXED_LEN, ImageMeta, Malformed, check_name,
    checkpoint_name, fsync_dir, parse_checkpoint_name,
};

/// Entries per leaf.
pub const LEAF_ENTRIES: usize = 512;
/// Bytes of one leaf on disk.
pub const LEAF_BYTES: usize = LEAF_ENTRIES * 8;
/// One leaf: physical extent numbers of `LEAF_ENTRIES` consecutive logical extents, 0 for none.
pub type Leaf = [u64; LEAF_ENTRIES];
/// Magic at the start of a checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"SHOALCK1";

// Header layout. The byte lengths of the two variable sections let the reader check a section's
// CRC before it interprets a byte of it; the leaves section is LEAVES * LEAF_BYTES long.
const HDR_MAGIC: Field = Field::first(8);
const HDR_VERSION: Field = Field::after(HDR_MAGIC, 4);
const HDR_GENERATION: Field = Field::after(HDR_VERSION, 8);
const HDR_SEQ: Field = Field::after(HDR_GENERATION, 8);
const HDR_IMAGES: Field = Field::after(HDR_SEQ, 8);
const HDR_IMAGES_BYTES: Field = Field::after(HDR_IMAGES, 8);
const HDR_LEAVES: Field = Field::after(HDR_IMAGES_BYTES, 8);
const HDR_LISTS: Field = Field::after(HDR_LEAVES, 8);
const HDR_LISTS_BYTES: Field = Field::after(HDR_LISTS, 8);
const HDR_CRC: Field = Field::after(HDR_LISTS_BYTES, 4);
const HEADER_LEN: usize = HDR_CRC.end();
const _: () = assert!(HEADER_LEN == 72);
/// Bytes of a section's CRC.
const SECTION_CRC_LEN: usize = 4;

// Image entry: an encoded ImageMeta (fixed part, then the name), then MAPPED.
const IMG_MAPPED: Field = Field::first(8);

// Leaf list head, then RUNS runs.
const LIST_IMAGE: Field = Field::first(8);
const LIST_RUNS: Field = Field::after(LIST_IMAGE, 8);
const LIST_HEAD_LEN: usize = LIST_RUNS.end();
const RUN_FIRST_INDEX: Field = Field::first(8);
const RUN_FIRST_LEAF: Field = Field::after(RUN_FIRST_INDEX, 4);
const RUN_LEN: Field = Field::after(RUN_FIRST_LEAF, 4);
const RUN_BYTES: usize = RUN_LEN.end();
const _: () = assert!(LIST_HEAD_LEN == 16 && RUN_BYTES == 16);

/// One image of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// Catalog fields.
    pub meta: ImageMeta,
    /// Mapped extents (non-zero entries in the image's leaves); checked on write and read.
    pub mapped_extents: u64,
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointData {
    /// Every journal record with `seq <= self.seq` is reflected here, and no such record may be
    /// appended after the checkpoint is taken.
    pub seq: u64,
    /// The catalog: every live image, ids unique.
    pub images: Vec<ImageEntry>,
    /// Every leaf, each once.
    pub leaves: Vec<Leaf>,
    /// Per image (at most one list each, images of `images` only): (leaf index, index into
    /// `leaves`) sorted by strictly increasing leaf index. Absent leaf indexes are unmapped.
    pub image_leaves: Vec<(u64, Vec<(u64, u32)>)>,
}

/// Writes `data` to `checkpoint-<generation>.ckpt` in `dir` (replacing a stale file of that
/// name), fsyncs it and the directory, and returns the file name for the superblock. Use the
/// generation the superblock will have once it names the file (`superblock.generation + 1`).
pub fn write_checkpoint(
    dir: &Path,
    generation: u64,
    data: &CheckpointData,
) -> Result<String, FormatError> {
    let name = checkpoint_name(generation);
    let path = dir.join(&name);
    validate(data).map_err(|reason| invalid(&path, "checkpoint to write", 0, reason))?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| FormatError::io(&path, "create checkpoint", e))?;
    let mut out = SectionWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: 0,
    };
    write_sections(&mut out, generation, data)
        .map_err(|e| FormatError::io(&path, "write checkpoint", e))?;
    let file = out
        .inner
        .into_inner()
        .map_err(|e| FormatError::io(&path, "write checkpoint", e.into_error()))?;
    file.sync_all()
        .map_err(|e| FormatError::io(&path, "fsync checkpoint", e))?;
    fsync_dir(dir)?;
    Ok(name)
}

/// Reads and checks the checkpoint `name` in `dir`.
pub fn read_checkpoint(dir: &Path, name: &str) -> Result<CheckpointData, FormatError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(|e| FormatError::io(&path, "open checkpoint", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| FormatError::io(&path, "stat checkpoint", e))?
        .len();
    let mut input = SectionReader {
        inner: BufReader::with_capacity(1 << 20, file),
        path: path.clone(),
        crc: 0,
        pos: 0,
        file_len,
    };
    let header = read_header(&mut input)?;
    if let Some(expected) = parse_checkpoint_name(name)
        && expected != header.generation
    {
        return Err(invalid(
            &path,
            "checkpoint header",
            0,
            format!("generation {} in a file named {name}", header.generation),
        ));
    }
    let images = read_images(&mut input, &header)?;
    let leaves = read_leaves(&mut input, header.leaves)?;
    let image_leaves = read_lists(&mut input, &header, leaves.len())?;
    if input.pos != file_len {
        return Err(invalid(
            &path,
            "checkpoint",
            input.pos,
            format!("{} bytes after the last section", file_len - input.pos),
        ));
    }
    let data = CheckpointData {
        seq: header.seq,
        images,
        leaves,
        image_leaves,
    };
    validate(&data).map_err(|reason| invalid(&path, "checkpoint", 0, reason))?;
    Ok(data)
}

/// An `Invalid` error.
fn invalid(path: &Path, what: &'static str, offset: u64, reason: String) -> FormatError {
    FormatError::Invalid {
        path: path.to_owned(),
        what,
        offset,
        reason,
    }
}

/// Checks the rules of [`CheckpointData`]; the reason of the first one broken.
fn validate(data: &CheckpointData) -> Result<(), String> {
    let mut mapped: HashMap<u64, u64> = HashMap::with_capacity(data.images.len());
    for entry in &data.images {
        check_name(&entry.meta.name).map_err(|m| match m {
            Malformed::Invalid(reason) => reason,
            Malformed::Short => "short name".to_owned(),
        })?;
        if mapped.insert(entry.meta.image, 0).is_some() {
            return Err(format!("image {} appears twice", entry.meta.image));
        }
    }
    let per_leaf: Vec<u64> = data
        .leaves
        .iter()
        .map(|leaf| leaf.iter().filter(|&&pext| pext != 0).count() as u64)
        .collect();
    let mut listed = HashSet::with_capacity(data.image_leaves.len());
    for (image, list) in &data.image_leaves {
        let Some(count) = mapped.get_mut(image) else {
            return Err(format!(
                "leaf list for image {image}, which is not in the catalog"
            ));
        };
        if !listed.insert(*image) {
            return Err(format!("image {image} has two leaf lists"));
        }
        let mut previous = None;
        for &(index, leaf) in list {
            if previous.is_some_and(|p| index <= p) {
                return Err(format!(
                    "leaf indexes of image {image} are not increasing at {index}"
                ));
            }
            previous = Some(index);
            let Some(n) = per_leaf.get(leaf as usize) else {
                return Err(format!(
                    "image {image} names leaf {leaf} of {}",
                    data.leaves.len()
                ));
            };
            *count += n;
        }
    }
    for entry in &data.images {
        let counted = mapped[&entry.meta.image];
        if counted != entry.mapped_extents {
            return Err(format!(
                "image {} says {} mapped extents, its leaves map {counted}",
                entry.meta.image, entry.mapped_extents
            ));
        }
    }
    Ok(())
}

/// A writer that keeps the CRC32C of the current section.
struct SectionWriter {
    inner: BufWriter<File>,
    crc: u32,
}

impl SectionWriter {
    /// Writes bytes of the current section.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }

    /// Ends the section with its CRC and starts the next one.
    fn end_section(&mut self) -> io::Result<()> {
        let crc = std::mem::take(&mut self.crc);
        self.inner.write_all(&crc.to_le_bytes())
    }
}

/// Writes header and sections (`data` is valid).
fn write_sections(
    out: &mut SectionWriter,
    generation: u64,
    data: &CheckpointData,
) -> io::Result<()> {
    let images_bytes: usize = data
        .images
        .iter()
        .map(|e| IMAGE_META_FIXED_LEN + e.meta.name.len() + IMG_MAPPED.len)
        .sum();
    let lists_bytes: usize = data
        .image_leaves
        .iter()
        .map(|(_, list)| LIST_HEAD_LEN + Runs(list).count() * RUN_BYTES)
        .sum();
    let mut header = [0u8; HEADER_LEN];
    HDR_MAGIC.put(&mut header, &CHECKPOINT_MAGIC);
    HDR_VERSION.put(&mut header, &FORMAT_VERSION.to_le_bytes());
    HDR_GENERATION.put(&mut header, &generation.to_le_bytes());
    HDR_SEQ.put(&mut header, &data.seq.to_le_bytes());
    HDR_IMAGES.put(&mut header, &(data.images.len() as u64).to_le_bytes());
    HDR_IMAGES_BYTES.put(&mut header, &(images_bytes as u64).to_le_bytes());
    HDR_LEAVES.put(&mut header, &(data.leaves.len() as u64).to_le_bytes());
    HDR_LISTS.put(&mut header, &(data.image_leaves.len() as u64).to_le_bytes());
    HDR_LISTS_BYTES.put(&mut header, &(lists_bytes as u64).to_le_bytes());
    out.put(&header[..HDR_CRC.offset])?;
    out.end_section()?;

    let mut buf = Vec::with_capacity(IMAGE_META_FIXED_LEN + 64);
    for entry in &data.images {
        buf.clear();
        // validate() checked every name, the only thing encode can refuse.
        entry
            .meta
            .encode(&mut buf)
            .map_err(|m| io::Error::other(format!("{m:?}")))?;
        buf.extend_from_slice(&entry.mapped_extents.to_le_bytes());
        out.put(&buf)?;
    }
    out.end_section()?;

    let mut leaf_bytes = [0u8; LEAF_BYTES];
    for leaf in &data.leaves {
        for (chunk, pext) in leaf_bytes.chunks_exact_mut(8).zip(leaf) {
            chunk.copy_from_slice(&pext.to_le_bytes());
        }
        out.put(&leaf_bytes)?;
    }
    out.end_section()?;

    for (image, list) in &data.image_leaves {
        let mut head = [0u8; LIST_HEAD_LEN];
        LIST_IMAGE.put(&mut head, &image.to_le_bytes());
        LIST_RUNS.put(&mut head, &(Runs(list).count() as u64).to_le_bytes());
        out.put(&head)?;
        for (first_index, first_leaf, len) in Runs(list) {
            let mut run = [0u8; RUN_BYTES];
            RUN_FIRST_INDEX.put(&mut run, &first_index.to_le_bytes());
            RUN_FIRST_LEAF.put(&mut run, &first_leaf.to_le_bytes());
            RUN_LEN.put(&mut run, &len.to_le_bytes());
            out.put(&run)?;
        }
    }
    out.end_section()?;
    out.inner.flush()
}

/// The runs of a sorted leaf list: `(first leaf index, first leaf, length)`, each as long as
/// both the index and the leaf go up by one.
struct Runs<'a>(&'a [(u64, u32)]);

impl Iterator for Runs<'_> {
    type Item = (u64, u32, u32);

    fn next(&mut self) -> Option<Self::Item> {
        let (&(first_index, first_leaf), rest) = self.0.split_first()?;
        let mut len: u32 = 1;
        for &(index, leaf) in rest {
            let continues = index.checked_sub(first_index) == Some(u64::from(len))
                && leaf.checked_sub(first_leaf) == Some(len)
                && len < u32::MAX;
            if !continues {
                break;
            }
            len += 1;
        }
        self.0 = &self.0[len as usize..];
        Some((first_index, first_leaf, len))
    }
}

/// A reader that keeps the CRC32C of the current section and the file offset.
struct SectionReader {
    inner: BufReader<File>,
    path: PathBuf,
    crc: u32,
    pos: u64,
    file_len: u64,
}

impl SectionReader {
    /// Reads bytes of the current section.
    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), FormatError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(FormatError::Truncated {
                    path: self.path.clone(),
                    what,
                    offset: self.pos,
                });
            }
            Err(e) => return Err(FormatError::io(&self.path, "read checkpoint", e)),
        }
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads and checks the CRC that ends a section that started at `start`.
    fn end_section(&mut self, what: &'static str, start: u64) -> Result<(), FormatError> {
        let computed = std::mem::take(&mut self.crc);
        let mut stored = [0u8; SECTION_CRC_LEN];
        self.take(&mut stored, what)?;
        self.crc = 0;
        let stored = u32::from_le_bytes(stored);
        if stored != computed {
            return Err(FormatError::Checksum {
                path: self.path.clone(),
                what,
                offset: start,
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Fails with `Truncated` unless `len` section bytes and a CRC are left in the file.
    fn expect(&self, len: u64, what: &'static str) -> Result<(), FormatError> {
        let left = self.file_len - self.pos;
        if len
            .checked_add(SECTION_CRC_LEN as u64)
            .is_none_or(|need| need > left)
        {
            return Err(FormatError::Truncated {
                path: self.path.clone(),
                what,
                offset: self.pos,
            });
        }
        Ok(())
    }

    /// Reads a whole section of `len` bytes and checks its CRC before anything interprets it.
    fn section(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>, FormatError> {
        self.expect(len, what)?;
        let start = self.pos;
        // expect() bounded len by the file's length.
        let mut bytes = vec![0u8; len as usize];
        self.take(&mut bytes, what)?;
        self.end_section(what, start)?;
        Ok(bytes)
    }
}

/// The header's fields.
struct Header {
    generation: u64,
    seq: u64,
    images: u64,
    images_bytes: u64,
    leaves: u64,
    lists: u64,
    lists_bytes: u64,
}

/// Reads and checks the header.
fn read_header(input: &mut SectionReader) -> Result<Header, FormatError> {
    let mut header = [0u8; HEADER_LEN];
    input.take(&mut header[..HDR_CRC.offset], "checkpoint header")?;
    let magic: [u8; 8] = HDR_MAGIC.array(&header);
    if magic != CHECKPOINT_MAGIC {
        return Err(FormatError::BadMagic {
            path: input.path.clone(),
            offset: 0,
            expected: CHECKPOINT_MAGIC,
            found: magic,
        });
    }
    input.end_section("checkpoint header", 0)?;
    let version = HDR_VERSION.u32(&header);
    if version != FORMAT_VERSION {
        return Err(FormatError::VersionMismatch {
            path: input.path.clone(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(Header {
        generation: HDR_GENERATION.u64(&header),
        seq: HDR_SEQ.u64(&header),
        images: HDR_IMAGES.u64(&header),
        images_bytes: HDR_IMAGES_BYTES.u64(&header),
        leaves: HDR_LEAVES.u64(&header),
        lists: HDR_LISTS.u64(&header),
        lists_bytes: HDR_LISTS_BYTES.u64(&header),
    })
}

/// The error for a section whose bytes do not hold what its header says.
fn section_mismatch(path: &Path, what: &'static str, start: u64, used: usize) -> FormatError {
    invalid(
        path,
        what,
        start,
        format!("the entries end after {used} bytes, not where the section does"),
    )
}

/// Reads the images section.
fn read_images(input: &mut SectionReader, header: &Header) -> Result<Vec<ImageEntry>, FormatError> {
    const WHAT: &str = "checkpoint images section";
    let start = input.pos;
    let bytes = input.section(header.images_bytes, WHAT)?;
    let mut images = Vec::new();
    let mut at = 0;
    for _ in 0..header.images {
        let entry_at = start + at as u64;
        let (meta, used) = ImageMeta::decode(&bytes[at..])
            .map_err(|m| m.at(&input.path, "checkpoint image", entry_at))?;
        at += used;
        let Some(mapped) = bytes.get(at..at + IMG_MAPPED.len) else {
            return Err(section_mismatch(&input.path, WHAT, start, at));
        };
        images.push(ImageEntry {
            meta,
            mapped_extents: IMG_MAPPED.u64(mapped),
        });
        at += IMG_MAPPED.len;
    }
    if at != bytes.len() {
        return Err(section_mismatch(&input.path, WHAT, start, at));
    }
    Ok(images)
}

/// Reads the leaves section, streaming (a leaf cannot be invalid; the CRC comes at the end).
fn read_leaves(input: &mut SectionReader, count: u64) -> Result<Vec<Leaf>, FormatError> {
    const WHAT: &str = "checkpoint leaves section";
    let start = input.pos;
    input.expect(count.saturating_mul(LEAF_BYTES as u64), WHAT)?;
    // expect() bounded count by the file's length.
    let mut leaves = Vec::with_capacity(count as usize);
    let mut bytes = [0u8; LEAF_BYTES];
    for _ in 0..count {
        input.take(&mut bytes, WHAT)?;
        let mut leaf = [0u64; LEAF_ENTRIES];
        for (pext, chunk) in leaf.iter_mut().zip(bytes.chunks_exact(8)) {
            *pext = Field::first(8).u64(chunk);
        }
        leaves.push(leaf);
    }
    input.end_section(WHAT, start)?;
    Ok(leaves)
}

/// A list of (leaf index, leaf number).
type LeafList = Vec<(u64, u32)>;

/// Reads the leaf lists section, expanding runs (each run is checked against the leaf count
/// before it is expanded).
fn read_lists(
    input: &mut SectionReader,
    header: &Header,
    leaves: usize,
) -> Result<Vec<(u64, LeafList)>, FormatError> {
    const WHAT: &str = "checkpoint leaf lists section";
    let start = input.pos;
    let bytes = input.section(header.lists_bytes, WHAT)?;
    let mut lists = Vec::new();
    let mut at = 0;
    for _ in 0..header.lists {
        let Some(head) = bytes.get(at..at + LIST_HEAD_LEN) else {
            return Err(section_mismatch(&input.path, WHAT, start, at));
        };
        let image = LIST_IMAGE.u64(head);
        let runs = LIST_RUNS.u64(head);
        at += LIST_HEAD_LEN;
        let mut list = Vec::new();
        for _ in 0..runs {
            let run_at = start + at as u64;
            let Some(run) = bytes.get(at..at + RUN_BYTES) else {
                return Err(section_mismatch(&input.path, WHAT, start, at));
            };
            at += RUN_BYTES;
            let (first_index, first_leaf, len) = (
                RUN_FIRST_INDEX.u64(run),
                RUN_FIRST_LEAF.u32(run),
                RUN_LEN.u32(run),
            );
            let leaf_end = u64::from(first_leaf) + u64::from(len);
            if len == 0
                || leaf_end > leaves as u64
                || first_index.checked_add(u64::from(len)).is_none()
            {
                return Err(invalid(
                    &input.path,
                    "checkpoint leaf run",
                    run_at,
                    format!(
                        "run of {len} from leaf index {first_index} / leaf {first_leaf} \
                         does not fit {leaves} leaves"
                    ),
                ));
            }
            list.extend((0..len).map(|k| (first_index + u64::from(k), first_leaf + k)));
        }
        lists.push((image, list));
    }
    if at != bytes.len() {
        return Err(section_mismatch(&input.path, WHAT, start, at));
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::pool::format::ImageKind;
    use std::fs;

    fn entry(image: u64, parent: Option<u64>, kind: ImageKind, mapped: u64) -> ImageEntry {
        ImageEntry {
            meta: ImageMeta {
                image,
                parent,
                kind,
                name: format!("image-{image}"),
                size_bytes: 1 << 40,
                block_size: 4096,
                thin: image != 4,
                identity: [image as u8; 16],
                created_unix_secs: 1_800_000_000,
            },
            mapped_extents: mapped,
        }
    }

    fn leaf(fill: u64, entries: usize) -> Leaf {
        let mut leaf = [0u64; LEAF_ENTRIES];
        for (i, pext) in leaf.iter_mut().take(entries).enumerate() {
            *pext = fill + i as u64;
        }
        leaf
    }

    /// A volume of 100 leaves, a snapshot sharing all of them, a clone that rewrote one leaf,
    /// and an empty volume.
    fn shared() -> CheckpointData {
        let mut leaves: Vec<Leaf> = (0..100).map(|i| leaf(1 + i * 1000, 512)).collect();
        leaves.push(leaf(900_000, 3));
        let volume: LeafList = (0..100).map(|i| (i, i as u32)).collect();
        let mut clone = volume.clone();
        clone[50].1 = 100;
        CheckpointData {
            seq: 777,
            images: vec![
                entry(1, None, ImageKind::Volume, 100 * 512),
                entry(2, Some(1), ImageKind::Snapshot, 100 * 512),
                entry(3, Some(2), ImageKind::Volume, 99 * 512 + 3),
                entry(4, None, ImageKind::Volume, 0),
            ],
            leaves,
            image_leaves: vec![(1, volume.clone()), (2, volume), (3, clone)],
        }
    }

    #[test]
    fn checkpoint_round_trip_with_shared_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let data = shared();
        let name = write_checkpoint(dir.path(), 5, &data).unwrap();
        assert_eq!(name, "checkpoint-5.ckpt");
        assert_eq!(read_checkpoint(dir.path(), &name).unwrap(), data);
        // Leaves are written once; the lists cost a run each, or three around the difference.
        let meta_len: usize = data
            .images
            .iter()
            .map(|e| IMAGE_META_FIXED_LEN + e.meta.name.len() + 8)
            .sum();
        let lists_len = 3 * LIST_HEAD_LEN + (1 + 1 + 3) * RUN_BYTES;
        let expected = HEADER_LEN + meta_len + 4 + 101 * LEAF_BYTES + 4 + lists_len + 4;
        let size = fs::metadata(dir.path().join(&name)).unwrap().len();
        assert_eq!(size, expected as u64);
    }

    #[test]
    fn checkpoint_empty_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data = CheckpointData::default();
        let name = write_checkpoint(dir.path(), 1, &data).unwrap();
        assert_eq!(read_checkpoint(dir.path(), &name).unwrap(), data);
    }

    #[test]
    fn checkpoint_sparse_lists_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = shared();
        data.image_leaves[0].1 = vec![(3, 7), (4, 8), (9, 9), (u64::MAX / 512, 10)];
        data.images[0].mapped_extents = 4 * 512;
        let name = write_checkpoint(dir.path(), 2, &data).unwrap();
        assert_eq!(read_checkpoint(dir.path(), &name).unwrap(), data);
    }

    #[test]
    fn checkpoint_write_refuses_inconsistent_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut cases = Vec::new();
        let mut d = shared();
        d.images[2].mapped_extents += 1;
        cases.push(d);
        let mut d = shared();
        d.image_leaves[0].1.swap(3, 4);
        cases.push(d);
        let mut d = shared();
        d.image_leaves[0].1[7].1 = 101;
        cases.push(d);
        let mut d = shared();
        d.image_leaves.push((9, Vec::new()));
        cases.push(d);
        let mut d = shared();
        d.image_leaves.push((4, Vec::new()));
        d.image_leaves.push((4, Vec::new()));
        cases.push(d);
        let mut d = shared();
        d.images.push(entry(1, None, ImageKind::Volume, 0));
        cases.push(d);
        for data in cases {
            let err = write_checkpoint(dir.path(), 3, &data).unwrap_err();
            assert!(matches!(err, FormatError::Invalid { .. }), "{err}");
        }
    }

    #[test]
    fn checkpoint_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let name = write_checkpoint(dir.path(), 6, &shared()).unwrap();
        let path = dir.path().join(&name);
        let clean = fs::read(&path).unwrap();
        // A flipped bit in the header, an image, a leaf and the lists: a checksum error.
        for at in [20, HEADER_LEN + 10, clean.len() / 2, clean.len() - 10] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let err = read_checkpoint(dir.path(), &name).unwrap_err();
            assert!(
                matches!(err, FormatError::Checksum { .. }),
                "flip at {at}: {err}"
            );
        }
        for cut in [10, HEADER_LEN + 30, clean.len() / 2, clean.len() - 1] {
            fs::write(&path, &clean[..cut]).unwrap();
            let err = read_checkpoint(dir.path(), &name).unwrap_err();
            assert!(
                matches!(err, FormatError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
        let mut bytes = clean.clone();
        bytes.push(0);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_checkpoint(dir.path(), &name),
            Err(FormatError::Invalid { .. })
        ));
        let mut bytes = clean.clone();
        bytes[0] = b'X';
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_checkpoint(dir.path(), &name),
            Err(FormatError::BadMagic { .. })
        ));
        fs::write(&path, &clean).unwrap();
        fs::copy(&path, dir.path().join("checkpoint-7.ckpt")).unwrap();
        assert!(matches!(
            read_checkpoint(dir.path(), "checkpoint-7.ckpt"),
            Err(FormatError::Invalid { .. })
        ));
    }

    /// The offsets docs/format.md gives.
    #[test]
    fn layout_matches_docs_format_md() {
        let header = [
            HDR_MAGIC,
            HDR_VERSION,
            HDR_GENERATION,
            HDR_SEQ,
            HDR_IMAGES,
            HDR_IMAGES_BYTES,
            HDR_LEAVES,
            HDR_LISTS,
            HDR_LISTS_BYTES,
            HDR_CRC,
        ]
        .map(|f| f.offset);
        assert_eq!(header, [0, 8, 12, 20, 28, 36, 44, 52, 60, 68]);
        assert_eq!(
            [
                LIST_IMAGE,
                LIST_RUNS,
                RUN_FIRST_INDEX,
                RUN_FIRST_LEAF,
                RUN_LEN
            ]
            .map(|f| f.offset),
            [0, 8, 0, 8, 12]
        );
    }

    #[test]
    fn checkpoint_runs_of_lists() {
        let runs: Vec<_> = Runs(&[(0, 5), (1, 6), (2, 9), (4, 10), (5, 11)]).collect();
        assert_eq!(runs, [(0, 5, 2), (2, 9, 1), (4, 10, 2)]);
        assert_eq!(Runs(&[]).count(), 0);
    }
}
