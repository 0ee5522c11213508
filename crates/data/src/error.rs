//! The error type of the data layer.
//!
//! Every variant a user can cause names where the problem is (file path, shard, sample index,
//! manifest key) and, where it helps, what would be valid.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or generating data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a shard of a format this build reads, or its footer/index is damaged.
    #[error("shard {path} is unreadable: {what}")]
    CorruptShard { path: PathBuf, what: String },

    /// One record of a shard is truncated or malformed (after its checksum matched, or because
    /// its index entry points outside the file).
    #[error("shard {path}, sample {index}: corrupt record: {what}")]
    CorruptRecord {
        path: PathBuf,
        index: usize,
        what: String,
    },

    /// A record's bytes do not hash to the checksum stored in the shard index.
    #[error(
        "shard {path}, sample {index}: checksum mismatch (index says blake3 {expected}, record \
         hashes to {actual}); the record was damaged or modified"
    )]
    ChecksumMismatch {
        path: PathBuf,
        index: usize,
        expected: String,
        actual: String,
    },

    /// A whole shard file does not hash to what the manifest recorded.
    #[error(
        "shard {path} has blake3 {actual} but the manifest records {expected}; the file was \
         modified, replaced or truncated"
    )]
    ShardHashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// A shard disagrees with its manifest entry (sample count, per-sample checksums).
    #[error("shard {path} does not match its manifest entry: {what}")]
    ShardMismatch { path: PathBuf, what: String },

    /// The manifest cannot be parsed or fails validation.
    #[error("bad manifest {path}: {reason}")]
    BadManifest { path: PathBuf, reason: String },

    /// An embedded image or mask of a record cannot be decoded.
    #[error("shard {path}, sample {index}: cannot decode the {what}: {source}")]
    ImageDecode {
        path: PathBuf,
        index: usize,
        what: &'static str,
        #[source]
        source: image::ImageError,
    },

    /// An image or mask of a sample cannot be encoded for writing.
    #[error("sample {id}: cannot encode the {what}: {source}")]
    ImageEncode {
        id: String,
        what: &'static str,
        #[source]
        source: image::ImageError,
    },

    /// A sample handed to a writer violates the sample invariants.
    #[error("invalid sample {id}: {reason}")]
    InvalidSample { id: String, reason: String },

    /// A split name other than `train` or `val`.
    #[error("unknown split `{0}`; expected `train` or `val`")]
    UnknownSplit(String),

    /// A sample index past the end of a shard or dataset.
    #[error("sample index {index} is out of range: {what} has {len} samples")]
    IndexOutOfRange {
        index: usize,
        len: usize,
        what: String,
    },

    /// The residency guard refused a dataset at this site. `detail` names the data's region,
    /// the policy line and the site.
    #[error(
        "dataset `{dataset}` ({manifest}) {detail}. Run this job at a site in one of those \
         regions; only trained weights may leave them"
    )]
    ResidencyRefused {
        dataset: String,
        manifest: PathBuf,
        detail: String,
    },

    /// A manifest's signature does not satisfy the site's trust store: unsigned where the site
    /// requires signatures, signed by a key the store does not hold, a signature that does not
    /// match the content, or a steward signing for a region it may not.
    #[error("dataset `{dataset}` ({manifest}) is refused: {detail}")]
    SignatureRefused {
        dataset: String,
        manifest: PathBuf,
        detail: String,
    },

    /// A key or trust-store file is unusable (wrong kind, malformed, or a secret key that
    /// others may read).
    #[error("key file {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },

    /// A shard the manifest lists could not be opened; under the `skip` integrity policy its
    /// samples are reported one by one with this reason.
    #[error("shard {path}, sample {index}: the shard is unusable: {why}")]
    ShardUnusable {
        path: PathBuf,
        index: usize,
        why: String,
    },

    /// A box's class index is outside the dataset's class list.
    #[error(
        "shard {path}, sample {index}: box {box_index} has class index {class} but the dataset \
         has {classes} classes (0..{classes})"
    )]
    UnknownClass {
        path: PathBuf,
        index: usize,
        box_index: usize,
        class: u16,
        classes: usize,
    },

    /// Invalid options for a generator or writer (the message names the option).
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A country profile does not parse or is inconsistent (the message names the key).
    #[error("country profile {origin}: {message}")]
    BadProfile { origin: String, message: String },
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
