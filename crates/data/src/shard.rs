//! Shard files: many samples in one file, random access by index, per-record checksums.
//!
//! # Shard format v2
//!
//! All integers are little-endian. A shard file (e.g. `train-00000.shard`) is laid out as:
//!
//! ```text
//! offset            size        content
//! 0                 8           magic b"PCPTSHD2"
//! 8                 L0          record 0
//! 8+L0              L1          record 1
//! ...                           (records back to back, no gaps)
//! index_offset      48 * N      index: N entries, one per record, in record order
//! file_len - 24     24          footer
//! ```
//!
//! Index entry (48 bytes): `offset: u64` (from the start of the file), `length: u64`,
//! `checksum: [u8; 32]` (blake3 of the record's `length` bytes).
//!
//! Footer (24 bytes): `index_offset: u64`, `record_count: u64`, magic `b"PCPTSHD2"`.
//! A reader seeks to the footer at the end, finds the index and then any record in O(1).
//! A valid file satisfies `index_offset + 48 * record_count + 24 == file_len`, the first record
//! starts at 8, every record starts where the previous ended and the last ends at
//! `index_offset`; the reader checks all of this on open.
//!
//! A record is:
//!
//! ```text
//! label_len: u32, image_len: u32, drivable_len: u32, lanes_len: u32   (16-byte header)
//! label block      label_len bytes
//! image            image_len bytes     JPEG (quality 90), RGB, width x height
//! drivable mask    drivable_len bytes  PNG, 8-bit grey, values 0/1, width x height
//! lane mask        lanes_len bytes     PNG, 8-bit grey, values 0/1, width x height
//! ```
//!
//! with `16 + label_len + image_len + drivable_len + lanes_len == length`. The label block is
//! compact binary (strings are `len: u16` + UTF-8 bytes):
//!
//! ```text
//! width: u32, height: u32          image size; both masks must decode to the same size
//! traffic_side: u8                 0 = left, 1 = right
//! id: str, weather: str, time_of_day: str, scene: str
//! box_count: u32
//! box_count x { class: u16, x1: f32, y1: f32, x2: f32, y2: f32 }   (18 bytes each)
//! ignore_count: u32
//! ignore_count x { x1: f32, y1: f32, x2: f32, y2: f32 }             (16 bytes each)
//! ```
//!
//! Version 1 (magic `b"PCPTSHD1"`) is the same without the ignore regions; readers still read
//! it (its samples have none), writers write version 2.
//!
//! Constraints, enforced alike by the writer (refused with [`DataError::InvalidSample`]) and the
//! reader (a [`DataError::CorruptRecord`] naming the shard and the sample):
//!
//! - Image sides are 1..=65535 px (JPEG stores them as u16) and `width * height` is at most
//!   [`MAX_IMAGE_PIXELS`]. The label block declares the size before anything is decoded, so this
//!   bounds what reading one record allocates, whatever its bytes.
//! - The JPEG decodes to RGB and each mask PNG to 8-bit grey, all of exactly the declared size,
//!   and masks hold only 0/1.
//! - Every box and ignore region lies inside the image: `0 <= x1 < x2 <= width` and `0 <= y1 < y2 <= height`,
//!   with no tolerance. Integer image sides are exact in f32, so an importer that clamps its
//!   boxes to `[0, width] x [0, height]` always passes; a tolerance would instead make every
//!   consumer (target assignment, metrics) clamp again.
//!
//! Labels and masks round-trip exactly; the image goes through JPEG and comes back within
//! JPEG's tolerance.
//!
//! Writing is atomic: [`ShardWriter`] writes through an [`AtomicFile`], i.e. to a temporary
//! file beside the destination (`.<name>.<pid>.<n>.tmp`, see [`atomic_file`](crate::atomic_file)),
//! which [`ShardWriter::finish`] fsyncs and renames over `<name>` before fsyncing the directory;
//! a writer dropped before `finish` removes its temporary file. Published shards are therefore
//! never modified in place, which is what makes memory-mapping them in [`ShardReader`] sound in
//! practice.
//!
//! The reader takes any bytes: a damaged or forged file yields a [`DataError`], never a panic,
//! an out-of-bounds read or an allocation larger than the file or the limits above
//! (`fuzz/fuzz_targets/shard_reader.rs` checks this).

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::{JpegDecoder, JpegEncoder};
use image::codecs::png::{CompressionType, FilterType, PngDecoder, PngEncoder};
use image::{
    ColorType, ExtendedColorType, GrayImage, ImageDecoder, ImageEncoder, ImageError, Limits,
    RgbImage,
};
use memmap2::Mmap;

use crate::atomic_file::AtomicFile;
use crate::error::{DataError, Result};
use crate::sample::{BoxLabel, Conditions, IgnoreRegion, Sample, TrafficSide};

/// Magic bytes at the start and the end of every shard this build writes (format v2).
pub const SHARD_MAGIC: [u8; 8] = *b"PCPTSHD2";
/// Magic bytes of format v1 shards (no ignore regions), still read.
pub const SHARD_MAGIC_V1: [u8; 8] = *b"PCPTSHD1";
/// JPEG quality of stored images.
pub const JPEG_QUALITY: u8 = 90;
/// Largest image a shard holds, in pixels: 2^25, which 8K UHD (7680x4320) fits. percept-infer's
/// constant, which bounds a model card's input size too.
///
/// With it, reading one record allocates at most 96 MiB of RGB and two 32 MiB masks (plus the
/// JPEG decoder's working memory, which scales with the same size).
pub use percept_infer::MAX_IMAGE_PIXELS;
/// Longest image side: JPEG stores sides as u16.
const MAX_IMAGE_SIDE: u32 = u16::MAX as u32;
/// Allocation budget of the PNG decoder's own buffers (row buffers, ancillary chunks such as a
/// compressed ICC profile, which could otherwise inflate 1000-fold). The pixels are not part of
/// it: they go into a buffer sized from the label block.
const PNG_DECODER_ALLOC: u64 = 4 << 20;

const HEADER_LEN: usize = 8;
const FOOTER_LEN: usize = 24;
const INDEX_ENTRY_LEN: usize = 48;
const RECORD_HEADER_LEN: usize = 16;
const BOX_LEN: usize = 18;
const IGNORE_LEN: usize = 16;

/// One sample encoded as a shard record, with its checksum.
///
/// Encoding (JPEG/PNG compression) is the expensive part of writing a shard and needs no
/// writer state, so it can run on many threads; [`ShardWriter::push_encoded`] then appends
/// the bytes in order.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    bytes: Vec<u8>,
    checksum: [u8; 32],
}

impl EncodedRecord {
    /// Validates and encodes a sample (see the module docs for the layout).
    ///
    /// Refuses (with [`DataError::InvalidSample`]) what [`ShardReader::read`] would refuse:
    /// masks that differ in size from the image or hold values other than 0/1, empty or
    /// over-large images (see [`MAX_IMAGE_PIXELS`]), boxes that are not inside the image, and
    /// strings longer than 65535 bytes.
    pub fn encode(sample: &Sample) -> Result<Self> {
        validate_sample(sample)?;
        Self::from_parts(
            &sample.id,
            [
                encode_label(sample),
                encode_jpeg(sample)?,
                encode_png(&sample.drivable, &sample.id, "drivable mask")?,
                encode_png(&sample.lanes, &sample.id, "lane mask")?,
            ],
        )
    }

    /// Like [`encode`](Self::encode), but stores `jpeg`, the image's own JPEG file, instead of
    /// re-encoding `sample.image`: an importer keeps the source's bytes (no second generation
    /// of compression loss, and no encoding cost).
    ///
    /// The JPEG's header must declare an RGB image of the sample's size; `sample.image` is
    /// expected to be its decoded pixels.
    pub fn encode_with_jpeg(sample: &Sample, jpeg: Vec<u8>) -> Result<Self> {
        validate_sample(sample)?;
        let invalid = |reason: String| DataError::InvalidSample {
            id: sample.id.clone(),
            reason,
        };
        check_jpeg_complete(&jpeg).map_err(invalid)?;
        let decoder = JpegDecoder::new(Cursor::new(&jpeg))
            .map_err(|e| invalid(format!("the JPEG does not decode: {e}")))?;
        let (w, h) = decoder.dimensions();
        if (w, h) != sample.image.dimensions() || decoder.color_type() != ColorType::Rgb8 {
            return Err(invalid(format!(
                "the JPEG is {w}x{h} {:?}; the sample's image is {}x{} Rgb8",
                decoder.color_type(),
                sample.image.width(),
                sample.image.height()
            )));
        }
        Self::from_parts(
            &sample.id,
            [
                encode_label(sample),
                jpeg,
                encode_png(&sample.drivable, &sample.id, "drivable mask")?,
                encode_png(&sample.lanes, &sample.id, "lane mask")?,
            ],
        )
    }

    /// Lays out encoded parts (label, image, drivable, lanes) as a record and checksums it.
    fn from_parts(id: &str, parts: [Vec<u8>; 4]) -> Result<Self> {
        let mut bytes =
            Vec::with_capacity(RECORD_HEADER_LEN + parts.iter().map(Vec::len).sum::<usize>());
        for part in &parts {
            let len = u32::try_from(part.len()).map_err(|_| DataError::InvalidSample {
                id: id.to_string(),
                reason: format!("an encoded part is {} bytes, over 4 GiB", part.len()),
            })?;
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        for part in parts {
            bytes.extend_from_slice(&part);
        }
        let checksum = *blake3::hash(&bytes).as_bytes();
        Ok(EncodedRecord { bytes, checksum })
    }

    /// The record bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// blake3 of the record bytes, lowercase hex (the sample checksum in the manifest).
    pub fn checksum_hex(&self) -> String {
        hex32(&self.checksum)
    }
}

/// What [`ShardWriter::finish`] reports about a finished shard; the manifest entry is built
/// from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// File name (no directory), e.g. `train-00000.shard`.
    pub file_name: String,
    /// Number of records.
    pub samples: usize,
    /// File size in bytes.
    pub bytes: u64,
    /// blake3 of the whole file, lowercase hex.
    pub hash: String,
    /// blake3 of each record, lowercase hex, in record order.
    pub sample_checksums: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    length: u64,
    checksum: [u8; 32],
}

/// Writes one shard atomically (an [`AtomicFile`]: temp file + fsync + rename + directory
/// fsync).
#[derive(Debug)]
pub struct ShardWriter {
    /// The [`AtomicFile`]'s temporary file, kept to name it in errors once the file is gone.
    tmp_path: PathBuf,
    file_name: String,
    /// `None` once finished or after a failed write (the writer is then unusable, and dropping
    /// the [`AtomicFile`] has removed its temporary file).
    file: Option<AtomicFile>,
    hasher: blake3::Hasher,
    offset: u64,
    entries: Vec<IndexEntry>,
}

impl ShardWriter {
    /// Starts a shard that will appear at `path` when [`finish`](Self::finish) succeeds.
    ///
    /// The data goes to a temporary file beside `path` until then (see
    /// [`temporary_path`](Self::temporary_path)); `path`'s directory is created if needed. The
    /// file name must be UTF-8 because the manifest records it.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                DataError::InvalidOptions(format!(
                    "shard path {} has no UTF-8 file name",
                    path.display()
                ))
            })?
            .to_string();
        let file = AtomicFile::create(&path)?;
        let mut writer = ShardWriter {
            tmp_path: file.temporary_path().to_path_buf(),
            file_name,
            file: Some(file),
            hasher: blake3::Hasher::new(),
            offset: 0,
            entries: Vec::new(),
        };
        writer.write_all(&SHARD_MAGIC)?;
        Ok(writer)
    }

    /// Encodes and appends a sample; returns its checksum (lowercase blake3 hex).
    pub fn push(&mut self, sample: &Sample) -> Result<String> {
        let record = EncodedRecord::encode(sample)?;
        self.push_encoded(&record)
    }

    /// Appends an already encoded record; returns its checksum (lowercase blake3 hex).
    pub fn push_encoded(&mut self, record: &EncodedRecord) -> Result<String> {
        let offset = self.offset;
        self.write_all(&record.bytes)?;
        self.entries.push(IndexEntry {
            offset,
            length: record.bytes.len() as u64,
            checksum: record.checksum,
        });
        Ok(record.checksum_hex())
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The temporary file the shard is written to until [`finish`](Self::finish) renames it
    /// into place (its name satisfies [`is_temporary`](crate::atomic_file::is_temporary)).
    pub fn temporary_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Writes the index and footer, fsyncs, renames the temp file into place and fsyncs the
    /// directory.
    pub fn finish(mut self) -> Result<ShardInfo> {
        let index_offset = self.offset;
        let mut tail = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_LEN + FOOTER_LEN);
        for e in &self.entries {
            tail.extend_from_slice(&e.offset.to_le_bytes());
            tail.extend_from_slice(&e.length.to_le_bytes());
            tail.extend_from_slice(&e.checksum);
        }
        tail.extend_from_slice(&index_offset.to_le_bytes());
        tail.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        tail.extend_from_slice(&SHARD_MAGIC);
        self.write_all(&tail)?;

        let file = self.file.take().ok_or_else(|| self.closed_error())?;
        file.commit()?;

        Ok(ShardInfo {
            file_name: self.file_name.clone(),
            samples: self.entries.len(),
            bytes: self.offset,
            hash: self.hasher.finalize().to_hex().to_string(),
            sample_checksums: self.entries.iter().map(|e| hex32(&e.checksum)).collect(),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.closed_error());
        };
        if let Err(e) = file.write_all(bytes) {
            // A partial write leaves the file inconsistent: refuse further use (dropping the
            // `AtomicFile` removes its temporary file). The error names the temporary file.
            self.file = None;
            return Err(e);
        }
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn closed_error(&self) -> DataError {
        DataError::io(
            &self.tmp_path,
            std::io::Error::other("shard writer is unusable after an earlier write error"),
        )
    }
}

// No `Drop` of its own: a writer dropped before `finish` drops its `AtomicFile`, which removes
// the temporary file (a stray one, left by a killed process, is never read as a shard).

/// Random-access reader of one shard, backed by a memory map (or by bytes in memory, see
/// [`from_bytes`](Self::from_bytes)).
///
/// `Sync`: many threads may call [`read`](Self::read) at once.
#[derive(Debug)]
pub struct ShardReader {
    path: PathBuf,
    data: ShardBytes,
    entries: Vec<IndexEntry>,
    /// Format version, from the magic: 1 or 2.
    version: u8,
}

enum ShardBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for ShardBytes {
    // The length, not the contents: a shard is megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ShardBytes::Mapped(_) => "mapped",
            ShardBytes::Owned(_) => "in memory",
        };
        write!(f, "{} bytes {kind}", self.len())
    }
}

impl std::ops::Deref for ShardBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShardBytes::Mapped(m) => m,
            ShardBytes::Owned(v) => v,
        }
    }
}

impl ShardReader {
    /// Opens a shard and validates its structure (magics, footer, index bounds, contiguity).
    ///
    /// Record contents are checked lazily, per record, in [`read`](Self::read).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        // SAFETY: shards are published by rename and never modified in place (see the module
        // docs); every access is bounds-checked against the mapped length, which `validate`
        // takes from the map itself, not from an earlier `metadata` call.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
        Self::validate(path, ShardBytes::Mapped(mmap))
    }

    /// Drops this shard's pages from the process's resident set. They stay in the kernel's
    /// page cache, so reading them again costs a minor page fault, not disk I/O. Streaming
    /// readers call it so that resident memory does not grow with the dataset: the hash check
    /// on open reads every byte, and evaluation reads every record once. A no-op for a shard
    /// held in memory, and off Unix.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let ShardBytes::Mapped(m) = &self.data {
            // SAFETY: the mapping is read-only and backed by a file that is never modified in
            // place (see the module docs), so it has no private pages to lose: after
            // MADV_DONTNEED every read, including one racing this call, faults the file's same
            // bytes back in. The advice only fails for a bad range, which the whole map is not,
            // and failing would only leave the pages resident.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Validates a shard held in memory, as [`open`](Self::open) does a file.
    ///
    /// `path` only names the shard in errors; nothing is read from it.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::validate(path.into(), ShardBytes::Owned(bytes))
    }

    fn validate(path: PathBuf, data: ShardBytes) -> Result<Self> {
        let corrupt = |what: String| DataError::CorruptShard {
            path: path.clone(),
            what,
        };
        let len = data.len();
        if len < HEADER_LEN + FOOTER_LEN {
            return Err(corrupt(format!(
                "file is {len} bytes, shorter than an empty shard ({} bytes); truncated?",
                HEADER_LEN + FOOTER_LEN
            )));
        }
        let version = match data[..HEADER_LEN].try_into().expect("8 bytes") {
            SHARD_MAGIC => 2,
            SHARD_MAGIC_V1 => 1,
            _ => {
                return Err(corrupt(
                    "missing magic PCPTSHD2 (or PCPTSHD1) at the start; not a percept shard".into(),
                ))
            }
        };
        let footer = &data[len - FOOTER_LEN..];
        if footer[16..24] != data[..HEADER_LEN] {
            return Err(corrupt(
                "the footer lacks the magic the file starts with; the file is truncated or not \
                 a shard"
                    .into(),
            ));
        }
        let index_offset = read_u64(&footer[0..8]);
        let count = read_u64(&footer[8..16]);
        let index_len = count.checked_mul(INDEX_ENTRY_LEN as u64);
        let expected_end = index_len.and_then(|l| l.checked_add(index_offset));
        if index_offset < HEADER_LEN as u64 || expected_end != Some((len - FOOTER_LEN) as u64) {
            return Err(corrupt(format!(
                "footer says {count} records with the index at byte {index_offset}, which does \
                 not fit a {len}-byte file"
            )));
        }
        // From here on `count * 48 <= len`: the allocation and the index slices are bounded
        // by the file.
        let index_start = index_offset as usize;
        let mut entries = Vec::with_capacity(count as usize);
        let mut expected_offset = HEADER_LEN as u64;
        for i in 0..count as usize {
            let e = &data[index_start + i * INDEX_ENTRY_LEN..][..INDEX_ENTRY_LEN];
            let entry = IndexEntry {
                offset: read_u64(&e[0..8]),
                length: read_u64(&e[8..16]),
                checksum: e[16..48].try_into().expect("slice of 32 bytes"),
            };
            let end = entry.offset.checked_add(entry.length);
            if entry.offset != expected_offset
                || end.is_none_or(|end| end > index_offset)
                || entry.length < RECORD_HEADER_LEN as u64
            {
                return Err(DataError::CorruptRecord {
                    path,
                    index: i,
                    what: format!(
                        "index entry says offset {} length {}, but the record must start at \
                         {expected_offset}, be at least {RECORD_HEADER_LEN} bytes and end \
                         before the index at {index_offset}",
                        entry.offset, entry.length
                    ),
                });
            }
            expected_offset = entry.offset + entry.length;
            entries.push(entry);
        }
        if expected_offset != index_offset {
            return Err(corrupt(format!(
                "records end at byte {expected_offset} but the index starts at {index_offset}"
            )));
        }
        Ok(ShardReader {
            path,
            data,
            entries,
            version,
        })
    }

    /// Path the shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the shard holds no records.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.data.len() as u64
    }

    /// The checksum the index stores for record `i` (lowercase blake3 hex).
    pub fn checksum_hex(&self, i: usize) -> Result<String> {
        Ok(hex32(&self.entry(i)?.checksum))
    }

    /// All index checksums (lowercase blake3 hex), in record order.
    pub fn sample_checksums(&self) -> Vec<String> {
        self.entries.iter().map(|e| hex32(&e.checksum)).collect()
    }

    /// blake3 of the whole file, lowercase hex.
    pub fn file_hash(&self) -> String {
        blake3::hash(&self.data).to_hex().to_string()
    }

    /// Checks the whole file against an expected blake3 (hex, as in the manifest).
    pub fn verify_file_hash(&self, expected: &str) -> Result<()> {
        let actual = self.file_hash();
        if actual.eq_ignore_ascii_case(expected) {
            Ok(())
        } else {
            Err(DataError::ShardHashMismatch {
                path: self.path.clone(),
                expected: expected.to_string(),
                actual,
            })
        }
    }

    /// The raw bytes of record `i`, after checking them against the index checksum.
    pub fn record_bytes(&self, i: usize) -> Result<&[u8]> {
        let entry = self.entry(i)?;
        // Bounds were validated on open.
        let bytes = &self.data[entry.offset as usize..(entry.offset + entry.length) as usize];
        let actual = blake3::hash(bytes);
        if actual.as_bytes() != &entry.checksum {
            return Err(DataError::ChecksumMismatch {
                path: self.path.clone(),
                index: i,
                expected: hex32(&entry.checksum),
                actual: actual.to_hex().to_string(),
            });
        }
        Ok(bytes)
    }

    /// The JPEG bytes of record `i`, after checking the record against its checksum (what
    /// `percept bench data` decodes alone as its baseline).
    pub fn jpeg_bytes(&self, i: usize) -> Result<&[u8]> {
        let bytes = self.record_bytes(i)?;
        let parts = split_record(bytes).map_err(|what| self.corrupt(i, what))?;
        Ok(parts.image)
    }

    /// The id of sample `i`, from its label block alone (no image or mask is decoded).
    pub fn sample_id(&self, i: usize) -> Result<String> {
        let bytes = self.record_bytes(i)?;
        let parts = split_record(bytes).map_err(|what| self.corrupt(i, what))?;
        let label =
            decode_label(parts.label, self.version).map_err(|what| self.corrupt(i, what))?;
        Ok(label.id)
    }

    /// Reads, verifies and decodes sample `i`.
    ///
    /// Checks everything [`EncodedRecord::encode`] guarantees (see the module docs), so a
    /// sample that reads is one a writer accepts.
    pub fn read(&self, i: usize) -> Result<Sample> {
        let bytes = self.record_bytes(i)?;
        let parts = split_record(bytes).map_err(|what| self.corrupt(i, what))?;
        let label =
            decode_label(parts.label, self.version).map_err(|what| self.corrupt(i, what))?;
        let size = (label.width, label.height);
        let image = self.decode_image(i, parts.image, size)?;
        let drivable = self.decode_mask(i, parts.drivable, "drivable mask", size)?;
        let lanes = self.decode_mask(i, parts.lanes, "lane mask", size)?;
        Ok(Sample {
            id: label.id,
            image,
            boxes: label.boxes,
            ignore: label.ignore,
            drivable,
            lanes,
            conditions: label.conditions,
            traffic_side: label.traffic_side,
        })
    }

    /// Decodes the JPEG of record `i`, after checking from its header alone that it is RGB of
    /// the declared size: a damaged header cannot make the reader allocate more.
    fn decode_image(&self, i: usize, bytes: &[u8], size: (u32, u32)) -> Result<RgbImage> {
        check_jpeg_complete(bytes).map_err(|e| self.corrupt(i, format!("image: {e}")))?;
        let decoder = JpegDecoder::new(Cursor::new(bytes))
            .map_err(|source| self.decode_error(i, "image", source))?;
        self.check_header(i, "image", &decoder, ColorType::Rgb8, size)?;
        let mut image = RgbImage::new(size.0, size.1);
        decoder
            .read_image(&mut image)
            .map_err(|source| self.decode_error(i, "image", source))?;
        Ok(image)
    }

    /// Decodes a mask PNG of record `i` straight into its buffer (no intermediate image, no
    /// conversion) and checks it holds 0/1.
    fn decode_mask(
        &self,
        i: usize,
        bytes: &[u8],
        what: &'static str,
        size: (u32, u32),
    ) -> Result<GrayImage> {
        let mut limits = Limits::default();
        limits.max_alloc = Some(PNG_DECODER_ALLOC);
        let decoder = PngDecoder::with_limits(Cursor::new(bytes), limits)
            .map_err(|source| self.decode_error(i, what, source))?;
        self.check_header(i, what, &decoder, ColorType::L8, size)?;
        let mut mask = GrayImage::new(size.0, size.1);
        decoder
            .read_image(&mut mask)
            .map_err(|source| self.decode_error(i, what, source))?;
        if let Some((x, y, v)) = first_non_binary(&mask) {
            return Err(self.corrupt(
                i,
                format!("{what} holds value {v} at pixel ({x}, {y}); masks hold 0/1"),
            ));
        }
        Ok(mask)
    }

    fn check_header(
        &self,
        i: usize,
        what: &str,
        decoder: &impl ImageDecoder,
        color: ColorType,
        (w, h): (u32, u32),
    ) -> Result<()> {
        let (dw, dh) = decoder.dimensions();
        if (dw, dh) != (w, h) {
            return Err(self.corrupt(
                i,
                format!("{what} is {dw}x{dh} but the label block says {w}x{h}"),
            ));
        }
        if decoder.color_type() != color {
            return Err(self.corrupt(
                i,
                format!(
                    "{what} decodes to colour type {:?}; the format stores {color:?}",
                    decoder.color_type()
                ),
            ));
        }
        Ok(())
    }

    fn corrupt(&self, index: usize, what: String) -> DataError {
        DataError::CorruptRecord {
            path: self.path.clone(),
            index,
            what,
        }
    }

    fn decode_error(&self, index: usize, what: &'static str, source: ImageError) -> DataError {
        DataError::ImageDecode {
            path: self.path.clone(),
            index,
            what,
            source,
        }
    }

    fn entry(&self, i: usize) -> Result<&IndexEntry> {
        self.entries
            .get(i)
            .ok_or_else(|| DataError::IndexOutOfRange {
                index: i,
                len: self.entries.len(),
                what: format!("shard {}", self.path.display()),
            })
    }
}

pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8-byte slice"))
}

fn validate_sample(s: &Sample) -> Result<()> {
    let invalid = |reason: String| DataError::InvalidSample {
        id: s.id.clone(),
        reason,
    };
    let (w, h) = s.image.dimensions();
    check_image_size(w, h).map_err(invalid)?;
    for (what, mask) in [("drivable mask", &s.drivable), ("lane mask", &s.lanes)] {
        if mask.dimensions() != (w, h) {
            let (mw, mh) = mask.dimensions();
            return Err(invalid(format!(
                "{what} is {mw}x{mh} but the image is {w}x{h}"
            )));
        }
        if let Some((x, y, v)) = first_non_binary(mask) {
            return Err(invalid(format!(
                "{what} holds value {v} at pixel ({x}, {y}); masks hold 0/1"
            )));
        }
    }
    for (name, value) in [
        ("id", &s.id),
        ("weather", &s.conditions.weather),
        ("time_of_day", &s.conditions.time_of_day),
        ("scene", &s.conditions.scene),
    ] {
        if value.len() > u16::MAX as usize {
            return Err(invalid(format!(
                "{name} is {} bytes; at most 65535",
                value.len()
            )));
        }
    }
    if s.boxes.len() > u32::MAX as usize {
        return Err(invalid(format!("{} boxes; at most 2^32-1", s.boxes.len())));
    }
    if s.ignore.len() > u32::MAX as usize {
        return Err(invalid(format!(
            "{} ignore regions; at most 2^32-1",
            s.ignore.len()
        )));
    }
    for (k, b) in s.boxes.iter().enumerate() {
        check_box(k, b, w, h).map_err(invalid)?;
    }
    for (k, r) in s.ignore.iter().enumerate() {
        check_ignore(k, r, w, h).map_err(invalid)?;
    }
    Ok(())
}

/// Checks that `bytes` is a whole JPEG: its markers, followed from the start, reach the
/// end-of-image marker (FFD9) after at least one scan.
///
/// The `image` crate's JPEG decoder (zune-jpeg, non-strict) pads a file that ends early with
/// grey and reports nothing, so a truncated download would be imported, trained on and
/// predicted on silently. Strict decoding would also refuse harmless quirks of real cameras;
/// following the marker structure catches exactly the premature end. Bytes after the
/// end-of-image marker (camera trailers, zero padding) are allowed. Every path that decodes a
/// JPEG from outside (importers, `percept predict`, the shard reader and writer) calls this.
pub fn check_jpeg_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    let n = bytes.len();
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG: it does not start with the start-of-image marker (FFD8)".into());
    }
    let truncated = |place: &str| {
        Err(format!(
            "the JPEG is truncated: its {n} bytes end {place}, before the end-of-image \
             marker (FFD9)"
        ))
    };
    let mut pos = 2;
    let mut scans = 0usize;
    loop {
        // Like libjpeg, skip stray bytes before a marker, then the 0xFF fill bytes.
        while pos < n && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < n && bytes[pos] == 0xFF {
            pos += 1;
        }
        if pos >= n {
            return truncated("between segments");
        }
        let marker = bytes[pos];
        pos += 1;
        match marker {
            0xD9 if scans > 0 => return Ok(()),
            0xD9 => return Err("the JPEG ends (FFD9) before any image data".into()),
            // Markers without a length: restart markers, TEM; 0x00 is a stuffed byte.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if pos + 2 > n {
            return truncated(&format!(
                "in the header of a segment (marker FF{marker:02X})"
            ));
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos], bytes[pos + 1]]));
        if len < 2 {
            return Err(format!(
                "the JPEG is damaged: segment FF{marker:02X} at byte {} has length {len}",
                pos - 2
            ));
        }
        pos += len;
        if pos > n {
            return truncated(&format!("inside a segment (marker FF{marker:02X})"));
        }
        if marker != 0xDA {
            continue;
        }
        scans += 1;
        // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or a restart.
        loop {
            let Some(ff) = bytes[pos..].iter().position(|&b| b == 0xFF) else {
                return truncated("in the image data");
            };
            let mut next = pos + ff + 1;
            while next < n && bytes[next] == 0xFF {
                next += 1;
            }
            if next >= n {
                return truncated("in the image data");
            }
            if matches!(bytes[next], 0x00 | 0xD0..=0xD7) {
                pos = next + 1;
            } else {
                pos = next - 1;
                break;
            }
        }
    }
}

/// The image size rule of the format (module docs), shared by writer and reader.
fn check_image_size(w: u32, h: u32) -> std::result::Result<(), String> {
    let sides_ok = (1..=MAX_IMAGE_SIDE).contains(&w) && (1..=MAX_IMAGE_SIDE).contains(&h);
    if sides_ok && u64::from(w) * u64::from(h) <= MAX_IMAGE_PIXELS {
        Ok(())
    } else {
        Err(format!(
            "image is {w}x{h}; sides must be 1..={MAX_IMAGE_SIDE} px (JPEG limit) and \
             width x height at most {MAX_IMAGE_PIXELS} px"
        ))
    }
}

/// The box rule of the format (module docs), shared by writer and reader: box `k` lies inside
/// a `w` x `h` image, exactly. NaN fails every comparison and infinities fail the bounds, so
/// this also refuses non-finite coordinates.
fn check_box(k: usize, b: &BoxLabel, w: u32, h: u32) -> std::result::Result<(), String> {
    check_inside(
        &format!("box {k} (class {})", b.class),
        [b.x1, b.y1, b.x2, b.y2],
        w,
        h,
    )
}

/// The same rule for ignore region `k`.
fn check_ignore(k: usize, r: &IgnoreRegion, w: u32, h: u32) -> std::result::Result<(), String> {
    check_inside(
        &format!("ignore region {k}"),
        [r.x1, r.y1, r.x2, r.y2],
        w,
        h,
    )
}

fn check_inside(
    what: &str,
    [x1, y1, x2, y2]: [f32; 4],
    w: u32,
    h: u32,
) -> std::result::Result<(), String> {
    // Exact: sides are at most 65535, well within f32's 24-bit integers.
    let (wf, hf) = (w as f32, h as f32);
    let inside = 0.0 <= x1 && x1 < x2 && x2 <= wf && 0.0 <= y1 && y1 < y2 && y2 <= hf;
    if inside {
        Ok(())
    } else {
        Err(format!(
            "{what} spans x {x1}..{x2}, y {y1}..{y2}, which is not inside the {w}x{h} image; \
             it needs 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h}"
        ))
    }
}

/// The first pixel of a mask that is not 0/1, as `(x, y, value)`.
///
/// An OR over all bytes has no early exit and vectorises; a `find` did not, and cost as much
/// as decoding the PNG. The position is only looked up when there is something to report.
fn first_non_binary(mask: &GrayImage) -> Option<(u32, u32, u8)> {
    if mask.as_raw().iter().fold(0, |acc, &v| acc | v) <= 1 {
        return None;
    }
    let (i, &v) = mask.as_raw().iter().enumerate().find(|&(_, &v)| v > 1)?;
    let w = mask.width() as usize;
    Some(((i % w) as u32, (i / w) as u32, v))
}

fn encode_label(s: &Sample) -> Vec<u8> {
    let strings = [
        &s.id,
        &s.conditions.weather,
        &s.conditions.time_of_day,
        &s.conditions.scene,
    ];
    let mut out = Vec::with_capacity(
        17 + strings.iter().map(|x| 2 + x.len()).sum::<usize>()
            + s.boxes.len() * BOX_LEN
            + s.ignore.len() * IGNORE_LEN,
    );
    out.extend_from_slice(&s.image.width().to_le_bytes());
    out.extend_from_slice(&s.image.height().to_le_bytes());
    out.push(match s.traffic_side {
        TrafficSide::Left => 0,
        TrafficSide::Right => 1,
    });
    for st in strings {
        // Lengths were validated to fit u16.
        out.extend_from_slice(&(st.len() as u16).to_le_bytes());
        out.extend_from_slice(st.as_bytes());
    }
    out.extend_from_slice(&(s.boxes.len() as u32).to_le_bytes());
    for b in &s.boxes {
        out.extend_from_slice(&b.class.to_le_bytes());
        for v in [b.x1, b.y1, b.x2, b.y2] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(s.ignore.len() as u32).to_le_bytes());
    for r in &s.ignore {
        for v in [r.x1, r.y1, r.x2, r.y2] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn encode_jpeg(s: &Sample) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.image.as_raw().len() / 8);
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .write_image(
            s.image.as_raw(),
            s.image.width(),
            s.image.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|source| DataError::ImageEncode {
            id: s.id.clone(),
            what: "image",
            source,
        })?;
    Ok(out)
}

fn encode_png(mask: &GrayImage, id: &str, what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    // Masks are long runs of 0/1: the fast deflate level already compresses them well. Rows
    // mostly repeat the row above, so the Up filter leaves mostly zeros; on synthetic masks it
    // is 3-5% larger than adaptive filtering but decodes twice as fast (adaptive picks Sub and
    // Paeth for some rows, whose unfiltering runs byte by byte at one byte per pixel).
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Up)
        .write_image(
            mask.as_raw(),
            mask.width(),
            mask.height(),
            ExtendedColorType::L8,
        )
        .map_err(|source| DataError::ImageEncode {
            id: id.to_string(),
            what,
            source,
        })?;
    Ok(out)
}

struct RecordParts<'a> {
    label: &'a [u8],
    image: &'a [u8],
    drivable: &'a [u8],
    lanes: &'a [u8],
}

fn split_record(bytes: &[u8]) -> std::result::Result<RecordParts<'_>, String> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "record is {} bytes, shorter than its 16-byte header",
            bytes.len()
        ));
    }
    let lens: Vec<usize> = (0..4)
        .map(|k| u32::from_le_bytes(bytes[k * 4..k * 4 + 4].try_into().expect("4 bytes")) as usize)
        .collect();
    let total = lens
        .iter()
        .try_fold(RECORD_HEADER_LEN, |acc, &l| acc.checked_add(l));
    if total != Some(bytes.len()) {
        return Err(format!(
            "part lengths label {} + image {} + drivable {} + lanes {} + header 16 do not add up \
             to the record length {}",
            lens[0],
            lens[1],
            lens[2],
            lens[3],
            bytes.len()
        ));
    }
    let (label, rest) = bytes[RECORD_HEADER_LEN..].split_at(lens[0]);
    let (image, rest) = rest.split_at(lens[1]);
    let (drivable, lanes) = rest.split_at(lens[2]);
    Ok(RecordParts {
        label,
        image,
        drivable,
        lanes,
    })
}

struct Label {
    width: u32,
    height: u32,
    traffic_side: TrafficSide,
    id: String,
    conditions: Conditions,
    boxes: Vec<BoxLabel>,
    ignore: Vec<IgnoreRegion>,
}

/// Bounds-checked little-endian reader over the label block.
struct LabelCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> LabelCursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "label block ends at byte {} while reading {what} ({n} bytes at {})",
                self.bytes.len(),
                self.pos
            ));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> std::result::Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn f32(&mut self, what: &str) -> std::result::Result<f32, String> {
        Ok(f32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }
}

/// Decodes a label block of shard format `version` (1 or 2).
fn decode_label(bytes: &[u8], version: u8) -> std::result::Result<Label, String> {
    let mut c = LabelCursor { bytes, pos: 0 };
    let width = c.u32("width")?;
    let height = c.u32("height")?;
    // Before anything is decoded: this size bounds the buffers of the image and masks.
    check_image_size(width, height).map_err(|e| format!("label block: {e}"))?;
    let traffic_side = match c.u8("traffic side")? {
        0 => TrafficSide::Left,
        1 => TrafficSide::Right,
        v => {
            return Err(format!(
                "traffic side byte is {v}; expected 0 (left) or 1 (right)"
            ))
        }
    };
    let id = c.string("sample id")?;
    let weather = c.string("weather")?;
    let time_of_day = c.string("time of day")?;
    let scene = c.string("scene")?;
    let count = c.u32("box count")? as usize;
    // Check the count against the remaining bytes before allocating for it.
    let remaining = bytes.len() - c.pos;
    let box_bytes = count.checked_mul(BOX_LEN);
    let fits = match version {
        1 => box_bytes == Some(remaining),
        // v2: an ignore count follows the boxes.
        _ => box_bytes.is_some_and(|n| n.checked_add(4).is_some_and(|n| n <= remaining)),
    };
    if !fits {
        return Err(format!(
            "box count {count} needs {} bytes but the label block has {remaining} left",
            count.saturating_mul(BOX_LEN)
        ));
    }
    let mut boxes = Vec::with_capacity(count);
    for _ in 0..count {
        boxes.push(BoxLabel {
            class: c.u16("box class")?,
            x1: c.f32("box x1")?,
            y1: c.f32("box y1")?,
            x2: c.f32("box x2")?,
            y2: c.f32("box y2")?,
        });
    }
    for (k, b) in boxes.iter().enumerate() {
        check_box(k, b, width, height)?;
    }
    let mut ignore = Vec::new();
    if version >= 2 {
        let count = c.u32("ignore count")? as usize;
        let remaining = bytes.len() - c.pos;
        if count.checked_mul(IGNORE_LEN) != Some(remaining) {
            return Err(format!(
                "ignore count {count} needs {} bytes but the label block has {remaining} left",
                count.saturating_mul(IGNORE_LEN)
            ));
        }
        ignore.reserve_exact(count);
        for _ in 0..count {
            ignore.push(IgnoreRegion {
                x1: c.f32("ignore x1")?,
                y1: c.f32("ignore y1")?,
                x2: c.f32("ignore x2")?,
                y2: c.f32("ignore y2")?,
            });
        }
        for (k, r) in ignore.iter().enumerate() {
            check_ignore(k, r, width, height)?;
        }
    }
    Ok(Label {
        width,
        height,
        traffic_side,
        id,
        conditions: Conditions {
            weather,
            time_of_day,
            scene,
        },
        boxes,
        ignore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::test_sample;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// The temporary files of `AtomicFile` in `dir`.
    fn temporary_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| crate::atomic_file::is_temporary(n))
            .collect()
    }

    #[test]
    fn a_truncated_jpeg_is_refused_by_the_check_the_writer_and_the_reader() {
        let sample = test_sample(2);
        let jpeg = encode_jpeg(&sample).unwrap();
        assert_eq!(check_jpeg_complete(&jpeg), Ok(()));
        let mut padded = jpeg.clone();
        padded.extend([0u8; 64]);
        assert_eq!(check_jpeg_complete(&padded), Ok(()));
        for len in 0..jpeg.len() {
            assert!(check_jpeg_complete(&jpeg[..len]).is_err(), "{len} bytes");
        }
        let cut = jpeg[..jpeg.len() - 40].to_vec();
        let why = format!(
            "the JPEG is truncated: its {} bytes end in the image data, before the \
             end-of-image marker (FFD9)",
            cut.len()
        );
        assert_eq!(check_jpeg_complete(&cut), Err(why.clone()));
        // The decoder alone pads the missing part and reports nothing: why the check exists.
        let (w, h) = sample.image.dimensions();
        let mut pixels = RgbImage::new(w, h);
        JpegDecoder::new(Cursor::new(&cut))
            .unwrap()
            .read_image(&mut pixels)
            .unwrap();

        let err = EncodedRecord::encode_with_jpeg(&sample, cut.clone()).unwrap_err();
        assert_eq!(err.to_string(), format!("invalid sample test-2: {why}"));

        // A shard written before the check holds such a record: the reader refuses it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.shard");
        let record = EncodedRecord::from_parts(
            &sample.id,
            [
                encode_label(&sample),
                cut,
                encode_png(&sample.drivable, &sample.id, "drivable mask").unwrap(),
                encode_png(&sample.lanes, &sample.id, "lane mask").unwrap(),
            ],
        )
        .unwrap();
        let mut w = ShardWriter::create(&path).unwrap();
        w.push_encoded(&record).unwrap();
        w.finish().unwrap();
        let err = ShardReader::open(&path).unwrap().read(0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "shard {}, sample 0: corrupt record: image: {why}",
                path.display()
            )
        );
    }

    fn write_three(dir: &Path) -> (PathBuf, ShardInfo, Vec<Sample>) {
        let path = dir.join("train-00000.shard");
        let samples: Vec<Sample> = (0..3).map(test_sample).collect();
        let mut w = ShardWriter::create(&path).unwrap();
        let mut sums = Vec::new();
        for s in &samples {
            sums.push(w.push(s).unwrap());
        }
        let info = w.finish().unwrap();
        assert_eq!(info.sample_checksums, sums);
        (path, info, samples)
    }

    #[test]
    fn round_trip_is_exact_for_labels_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let (path, info, samples) = write_three(dir.path());
        assert_eq!(info.file_name, "train-00000.shard");
        assert_eq!(info.samples, 3);
        assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(temporary_files(dir.path()), Vec::<String>::new());

        let r = ShardReader::open(&path).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.file_hash(), info.hash);
        r.verify_file_hash(&info.hash).unwrap();
        assert_eq!(r.sample_checksums(), info.sample_checksums);
        for (i, want) in samples.iter().enumerate() {
            let got = r.read(i).unwrap();
            assert_eq!(got.id, want.id);
            assert_eq!(got.boxes, want.boxes);
            assert_eq!(got.ignore, want.ignore);
            assert_eq!(got.conditions, want.conditions);
            assert_eq!(got.traffic_side, want.traffic_side);
            assert_eq!(got.drivable, want.drivable);
            assert_eq!(got.lanes, want.lanes);
            assert_eq!(got.image.dimensions(), want.image.dimensions());
            let max_err = got
                .image
                .as_raw()
                .iter()
                .zip(want.image.as_raw())
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max()
                .unwrap();
            assert!(max_err <= 12, "JPEG error {max_err} too large");
        }
        assert!(matches!(
            r.read(3),
            Err(DataError::IndexOutOfRange {
                index: 3,
                len: 3,
                ..
            })
        ));

        let m = ShardReader::from_bytes(&path, std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(m.path(), path);
        assert_eq!(m.file_hash(), info.hash);
        for i in 0..3 {
            assert_eq!(m.read(i).unwrap(), r.read(i).unwrap());
        }

        // Released pages read back the same bytes, for a mapped and an in-memory shard.
        let before: Vec<Sample> = (0..3).map(|i| r.read(i).unwrap()).collect();
        r.release_pages();
        m.release_pages();
        for (i, want) in before.iter().enumerate() {
            assert_eq!(&r.read(i).unwrap(), want);
            assert_eq!(&m.read(i).unwrap(), want);
        }
        assert_eq!(r.file_hash(), info.hash);
    }

    #[test]
    fn flipped_byte_in_record_names_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        let (path, info, _) = write_three(dir.path());
        let r = ShardReader::open(&path).unwrap();
        let e1 = r.entries[1];
        drop(r);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(e1.offset + e1.length / 2) as usize] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let r = ShardReader::open(&path).unwrap();
        r.read(0).unwrap();
        r.read(2).unwrap();
        let err = r.read(1).unwrap_err();
        match &err {
            DataError::ChecksumMismatch {
                index, expected, ..
            } => {
                assert_eq!(*index, 1);
                assert_eq!(expected, &info.sample_checksums[1]);
            }
            other => panic!("expected a checksum mismatch, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("sample 1") && msg.contains("train-00000.shard"),
            "{msg}"
        );
        assert!(matches!(
            r.verify_file_hash(&info.hash),
            Err(DataError::ShardHashMismatch { .. })
        ));
    }

    #[test]
    fn every_prefix_of_a_shard_fails_to_open() {
        // What a crash or a short copy leaves: the footer magic is gone, whatever the cut.
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = write_three(dir.path());
        let full = std::fs::read(&path).unwrap();
        let cut_path = dir.path().join("cut.shard");
        for cut in 0..full.len() {
            std::fs::write(&cut_path, &full[..cut]).unwrap();
            match ShardReader::open(&cut_path) {
                Err(DataError::CorruptShard { path, .. }) => assert_eq!(path, cut_path),
                other => panic!(
                    "{cut} of {} bytes: expected CorruptShard, got {other:?}",
                    full.len()
                ),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (path, info, _) = write_three(dir.path());
        let full = std::fs::read(&path).unwrap();
        let entries = ShardReader::open(&path).unwrap().entries;
        let n = full.len();
        let index_offset = n - FOOTER_LEN - entries.len() * INDEX_ENTRY_LEN;
        let name = PathBuf::from("flipped.shard");
        for pos in 0..n {
            for flip in [0x01u8, 0x80] {
                let mut bytes = full.clone();
                bytes[pos] ^= flip;
                let opened = ShardReader::from_bytes(&name, bytes);
                let record = entries
                    .iter()
                    .position(|e| (e.offset..e.offset + e.length).contains(&(pos as u64)));
                // (entry, byte within the entry) for a byte of the index.
                let in_index = pos
                    .checked_sub(index_offset)
                    .filter(|&k| k < entries.len() * INDEX_ENTRY_LEN)
                    .map(|k| (k / INDEX_ENTRY_LEN, k % INDEX_ENTRY_LEN));
                let damaged = match (record, in_index) {
                    // Record bytes or the checksum the index keeps for them.
                    (Some(i), _) => Some(i),
                    (None, Some((entry, field))) if field >= 16 => Some(entry),
                    // Magics, footer, index offsets and lengths: refused on open.
                    (None, Some((entry, _))) => {
                        match opened {
                            Err(DataError::CorruptRecord { index, .. })
                                if index == entry || index == entry + 1 => {}
                            Err(DataError::CorruptShard { .. }) if entry == entries.len() - 1 => {}
                            other => panic!("byte {pos} ^ {flip:#x}: got {other:?}"),
                        }
                        None
                    }
                    (None, None) => {
                        assert!(
                            matches!(opened, Err(DataError::CorruptShard { .. })),
                            "byte {pos} ^ {flip:#x}: got {opened:?}"
                        );
                        None
                    }
                };
                if let Some(i) = damaged {
                    let r = opened.unwrap();
                    for j in 0..entries.len() {
                        let read = r.read(j);
                        if j == i {
                            assert!(
                                matches!(read, Err(DataError::ChecksumMismatch { index, .. }) if index == i),
                                "byte {pos} ^ {flip:#x}: got {read:?}"
                            );
                        } else {
                            read.unwrap();
                        }
                    }
                    assert!(matches!(
                        r.verify_file_hash(&info.hash),
                        Err(DataError::ShardHashMismatch { .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn corrupt_index_and_footer_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = write_three(dir.path());
        let full = std::fs::read(&path).unwrap();
        let n = full.len();
        // Record count in the footer set huge: must not allocate or index out of bounds.
        let mut b = full.clone();
        b[n - 16..n - 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(
            ShardReader::open(&path),
            Err(DataError::CorruptShard { .. })
        ));
        // Length of record 2 in the index made to run past the index.
        let mut b = full.clone();
        let index_offset = read_u64(&full[n - 24..n - 16]) as usize;
        let len_pos = index_offset + 2 * INDEX_ENTRY_LEN + 8;
        b[len_pos..len_pos + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        match ShardReader::open(&path) {
            Err(DataError::CorruptRecord { index: 2, .. }) => {}
            other => panic!("expected corrupt record 2, got {other:?}"),
        }
        // Index offset near u64::MAX: `offset + 48 * count` must not overflow (the input on
        // which the fuzz harness's own index walk overflowed).
        let mut b = full.clone();
        b[n - 24..n - 16].copy_from_slice(&(u64::MAX - 40).to_le_bytes());
        assert!(matches!(
            ShardReader::from_bytes(&path, b),
            Err(DataError::CorruptShard { .. })
        ));
        // Not a shard at all.
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        assert!(matches!(
            ShardReader::open(&path),
            Err(DataError::CorruptShard { .. })
        ));
    }

    #[test]
    fn dropped_writer_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val-00000.shard");
        let mut w = ShardWriter::create(&path).unwrap();
        w.push(&test_sample(1)).unwrap();
        let tmp = w.temporary_path().to_path_buf();
        assert_eq!(tmp.parent(), Some(dir.path()));
        assert!(tmp.exists());
        assert_eq!(
            temporary_files(dir.path()),
            [tmp.file_name().unwrap().to_string_lossy()]
        );
        drop(w);
        assert!(!tmp.exists());
        assert_eq!(temporary_files(dir.path()), Vec::<String>::new());
        assert!(!path.exists());
    }

    #[test]
    fn crashed_writer_leaves_no_shard() {
        // A crash runs neither `finish` nor `Drop`: `forget` the writer. Small records are still
        // in the writer's buffer (empty temp file); big ones have reached the file (a prefix of
        // a shard). Neither leaves anything at the final path or a temp file that opens.
        let dir = tempfile::tempdir().unwrap();
        let mut state = 1u32;
        let noise = RgbImage::from_fn(512, 512, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let [r, g, b, _] = state.to_le_bytes();
            Rgb([r, g, b])
        });
        let mut big = test_sample(1);
        big.image = noise;
        big.drivable = GrayImage::new(512, 512);
        big.lanes = GrayImage::new(512, 512);
        for (name, sample, count) in [("small", test_sample(1), 2), ("big", big, 4)] {
            let path = dir.path().join(format!("{name}.shard"));
            let mut w = ShardWriter::create(&path).unwrap();
            for _ in 0..count {
                w.push(&sample).unwrap();
            }
            let tmp = w.temporary_path().to_path_buf();
            assert_eq!(tmp.parent(), Some(dir.path()));
            std::mem::forget(w);
            assert!(!path.exists());
            let flushed = std::fs::metadata(&tmp).unwrap().len();
            assert_eq!(
                flushed > 0,
                name == "big",
                "{name}: {flushed} bytes in the temp file"
            );
            assert!(matches!(
                ShardReader::open(&tmp),
                Err(DataError::CorruptShard { .. })
            ));
        }
    }

    fn refused(s: &Sample) -> String {
        match EncodedRecord::encode(s) {
            Err(DataError::InvalidSample { id, reason }) => {
                assert_eq!(id, s.id);
                reason
            }
            other => panic!("expected InvalidSample, got {other:?}"),
        }
    }

    /// Encodes parts as the writer would, without its validation: records a writer refuses.
    fn forge(s: &Sample) -> [Vec<u8>; 4] {
        [
            encode_label(s),
            encode_jpeg(s).unwrap(),
            encode_png(&s.drivable, &s.id, "drivable mask").unwrap(),
            encode_png(&s.lanes, &s.id, "lane mask").unwrap(),
        ]
    }

    /// The `what` of the CorruptRecord that reading `parts` as sample 0 of a shard gives.
    fn read_refusal(parts: [Vec<u8>; 4]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forged.shard");
        let mut w = ShardWriter::create(&path).unwrap();
        w.push_encoded(&EncodedRecord::from_parts("forged", parts).unwrap())
            .unwrap();
        w.finish().unwrap();
        match ShardReader::open(&path).unwrap().read(0) {
            Err(DataError::CorruptRecord {
                path: p,
                index: 0,
                what,
            }) => {
                assert_eq!(p, path);
                what
            }
            other => panic!("expected CorruptRecord for sample 0, got {other:?}"),
        }
    }

    #[test]
    fn invalid_samples_are_refused() {
        let mut s = test_sample(2);
        s.lanes = GrayImage::new(3, 3);
        assert_eq!(refused(&s), "lane mask is 3x3 but the image is 56x32");
        let mut s = test_sample(2);
        s.drivable.put_pixel(5, 1, Luma([255]));
        assert_eq!(
            refused(&s),
            "drivable mask holds value 255 at pixel (5, 1); masks hold 0/1"
        );
        for (w, h) in [(0, 10), (10, 0), (65536, 1), (8193, 4097)] {
            let mut s = test_sample(0);
            s.image = RgbImage::new(w, h);
            assert_eq!(
                refused(&s),
                format!(
                    "image is {w}x{h}; sides must be 1..=65535 px (JPEG limit) and width x \
                     height at most 33554432 px"
                )
            );
        }
    }

    #[test]
    fn version_1_shards_still_read() {
        let mut s = test_sample(3);
        s.ignore.clear();
        let mut parts = forge(&s);
        // A v1 label block ends after the boxes: no ignore count.
        parts[0].truncate(parts[0].len() - 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.shard");
        let mut w = ShardWriter::create(&path).unwrap();
        w.push_encoded(&EncodedRecord::from_parts(&s.id, parts).unwrap())
            .unwrap();
        w.finish().unwrap();
        // As a v2 file, the block lacks its ignore count.
        assert!(matches!(
            ShardReader::open(&path).unwrap().read(0),
            Err(DataError::CorruptRecord { index: 0, .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[..8].copy_from_slice(&SHARD_MAGIC_V1);
        bytes[n - 8..].copy_from_slice(&SHARD_MAGIC_V1);
        let got = ShardReader::from_bytes(&path, bytes)
            .unwrap()
            .read(0)
            .unwrap();
        assert_eq!(got.boxes, s.boxes);
        assert!(got.ignore.is_empty());
        assert_eq!((got.drivable, got.lanes), (s.drivable, s.lanes));
        assert_eq!(got.conditions, s.conditions);
    }

    /// Boxes that break `0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height` in the 56x32 image of
    /// `test_sample(2)`.
    const BAD_BOXES: [[f32; 4]; 8] = [
        [-0.5, 2.5, 10.0, 12.0],
        [1.0, -0.001, 10.0, 12.0],
        [1.0, 2.5, 56.25, 12.0],
        [1.0, 2.5, 10.0, 32.01],
        [10.0, 2.5, 10.0, 12.0],
        [1.0, 12.0, 10.0, 2.5],
        [f32::NAN, 2.5, 10.0, 12.0],
        [1.0, 2.5, f32::INFINITY, 12.0],
    ];

    #[test]
    fn boxes_outside_the_image_are_refused_on_write_and_read() {
        for [x1, y1, x2, y2] in BAD_BOXES {
            let mut s = test_sample(2);
            s.boxes[1] = BoxLabel {
                class: 7,
                x1,
                y1,
                x2,
                y2,
            };
            let want = format!(
                "box 1 (class 7) spans x {x1}..{x2}, y {y1}..{y2}, which is not inside the 56x32 \
                 image; it needs 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 32"
            );
            assert_eq!(refused(&s), want);
            assert_eq!(read_refusal(forge(&s)), want);

            // Ignore regions follow the same rule.
            let mut s = test_sample(2);
            s.ignore[0] = IgnoreRegion { x1, y1, x2, y2 };
            let want = format!(
                "ignore region 0 spans x {x1}..{x2}, y {y1}..{y2}, which is not inside the 56x32 \
                 image; it needs 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 32"
            );
            assert_eq!(refused(&s), want);
            assert_eq!(read_refusal(forge(&s)), want);
        }
        // The image border itself is inside.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edges.shard");
        let mut s = test_sample(2);
        s.boxes[1] = BoxLabel {
            class: 7,
            x1: 0.0,
            y1: 0.0,
            x2: 56.0,
            y2: 32.0,
        };
        let mut w = ShardWriter::create(&path).unwrap();
        w.push(&s).unwrap();
        w.finish().unwrap();
        assert_eq!(
            ShardReader::open(&path).unwrap().read(0).unwrap().boxes,
            s.boxes
        );
    }

    #[test]
    fn declared_sizes_are_checked_before_decoding() {
        let s = test_sample(2);
        // The label block's size: out of range, or too many pixels for its sides.
        for (w, h) in [(0u32, 32u32), (70_000, 32), (8193, 4097)] {
            let mut parts = forge(&s);
            parts[0][0..4].copy_from_slice(&w.to_le_bytes());
            parts[0][4..8].copy_from_slice(&h.to_le_bytes());
            assert_eq!(
                read_refusal(parts),
                format!(
                    "label block: image is {w}x{h}; sides must be 1..=65535 px (JPEG limit) and \
                     width x height at most 33554432 px"
                )
            );
        }
        // A JPEG header claiming 65535x65535: refused from the header, before a 12 GiB buffer.
        let mut parts = forge(&s);
        let sof = parts[1]
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .expect("baseline JPEG");
        parts[1][sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);
        assert_eq!(
            read_refusal(parts),
            "image is 65535x65535 but the label block says 56x32"
        );
    }

    #[test]
    fn images_and_masks_must_match_the_label_block() {
        let s = test_sample(2);
        let mut odd = s.clone();
        odd.lanes = GrayImage::new(3, 3);
        assert_eq!(
            read_refusal(forge(&odd)),
            "lane mask is 3x3 but the label block says 56x32"
        );
        let mut odd = s.clone();
        odd.drivable.put_pixel(3, 1, Luma([2]));
        assert_eq!(
            read_refusal(forge(&odd)),
            "drivable mask holds value 2 at pixel (3, 1); masks hold 0/1"
        );
        // Colour types other than the format's: an RGB mask, a grey image.
        let mut parts = forge(&s);
        let rgb_mask = RgbImage::new(56, 32);
        parts[2].clear();
        PngEncoder::new(&mut parts[2])
            .write_image(rgb_mask.as_raw(), 56, 32, ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(
            read_refusal(parts),
            "drivable mask decodes to colour type Rgb8; the format stores L8"
        );
        let mut parts = forge(&s);
        parts[1].clear();
        JpegEncoder::new(&mut parts[1])
            .write_image(&[0; 56 * 32], 56, 32, ExtendedColorType::L8)
            .unwrap();
        assert_eq!(
            read_refusal(parts),
            "image decodes to colour type L8; the format stores Rgb8"
        );
    }

    #[test]
    fn empty_shard_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.shard");
        let info = ShardWriter::create(&path).unwrap().finish().unwrap();
        assert_eq!(info.samples, 0);
        assert_eq!(info.bytes, 32);
        let r = ShardReader::open(&path).unwrap();
        assert!(r.is_empty());
    }
}
