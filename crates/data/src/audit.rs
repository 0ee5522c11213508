//! The tamper-evident audit log of a run: `runs/<name>/audit.jsonl`.
//!
//! # Format
//!
//! JSON Lines: one entry per line, each line ending in `\n`, appended and never rewritten.
//!
//! ```json
//! {"seq":0,"time":"2026-04-14T09:30:12.345Z","prev":"000…000","event":{"kind":"run_start",…},"hash":"<hex>"}
//! {"seq":1,"time":"2026-04-14T09:30:12.401Z","prev":"<hash of seq 0>","event":{"kind":"guard_decision",…},"hash":"<hex>"}
//! ```
//!
//! - `seq`: 0-based and consecutive.
//! - `time`: when the entry was written, RFC 3339 in UTC with milliseconds
//!   (`YYYY-MM-DDTHH:MM:SS.mmmZ`), from the system clock (informational: it is hashed but not
//!   checked for monotonicity, since clocks step).
//! - `prev`: the `hash` of the entry before; [`GENESIS_HASH`] (64 zeros) for seq 0.
//! - `event`: the payload, an [`AuditEvent`] tagged by `kind`.
//! - `hash`: lowercase hex blake3 of the *canonical serialisation* of the entry without its
//!   `hash` key.
//!
//! The canonical serialisation is defined on the parsed JSON value, not on the bytes in the file:
//! compact JSON (no whitespace), object keys sorted by their UTF-8 bytes at every depth, strings
//! escaped minimally (`"`, `\` and control characters only; everything else as raw UTF-8),
//! integers in decimal. It is computed by [`canonical_json`], which does not depend on how
//! serde_json orders maps (its `preserve_order` feature), so the key order or whitespace of a
//! line does not matter, only its content. Every key of the line but `hash` is covered, including
//! keys this version does not know.
//!
//! An append is one `write` of the whole line followed by an fsync, so a crash leaves at most a
//! torn (incomplete) last line, which verification reports as unparsable.
//!
//! # What it proves
//!
//! [`verify`] detects, naming the file, the 1-based line and the seq:
//! - an unparsable line, including a torn last line ([`AuditError::Unparsable`]);
//! - an edited entry whose hash no longer matches its content ([`AuditError::Edited`]);
//! - a deleted entry, from the jump in `seq` ([`AuditError::Missing`]);
//! - reordered or duplicated entries, from `seq` going backwards or repeating
//!   ([`AuditError::Reordered`]);
//! - an inserted entry, or a line replaced by a valid-looking one from elsewhere, or an entry
//!   edited *and rehashed*: the next entry's `prev` no longer matches ([`AuditError::BrokenLink`]).
//!
//! # Signed logs
//!
//! A run whose config names a site key (`site.key`) writes a *signed* log: the first entry (a
//! `run_start`) records the key's public half in `event.site_key`, and every entry carries
//! `"sig": {"key": "<fingerprint>", "signature": "<hex>"}`, the key's Ed25519 signature over the
//! entry's `hash` (`sig` is the one key `hash` does not cover). [`verify`] checks every signature
//! against the key the first entry names ([`AuditError::BadSignature`] names the first entry that
//! fails); [`verify_signed_by`] also checks that this key is the site's, held apart from the log
//! ([`AuditError::WrongKey`]), so a chain rewritten and re-signed with another key is caught.
//! [`signed_head`] gives the head with the site's signature ([`SignedHead`]) to anchor elsewhere.
//!
//! # What it does not prove
//!
//! Without a site key the log is tamper-*evident*, not tamper-proof: the hashes are not keyed.
//! Whoever can write the file can delete trailing entries, rehash an edited last entry, or
//! rewrite the whole chain from any point on, and the file alone still verifies. With a site key,
//! rewriting needs the key, but deleting trailing entries still leaves a log whose every entry is
//! validly signed. What catches that is the *head*
//! ([`AuditHead`]: entry count and last hash) pinned elsewhere: a run records the head it saw
//! into its checkpoints, its run summary and the provenance of exported models, and
//! [`verify_against`] checks the log still contains that head ([`AuditError::Truncated`],
//! [`AuditError::HeadMismatch`]). An attacker who rewrites the log *and* every pinned head
//! (every checkpoint and every export that left the site) can still forge it.
//!
//! Writers: [`AuditLog::open`] verifies an existing log before continuing it and refuses to
//! append to a broken one (an append would bury the break under valid-looking entries). It takes
//! an exclusive lock on the file for as long as the [`AuditLog`] lives, so two writers cannot fork
//! the chain.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{PublicKey, SecretKey, SignatureDomain};

/// File name of the audit log inside a run directory (`runs/<name>/audit.jsonl`).
pub const AUDIT_FILE: &str = "audit.jsonl";

/// The `prev` of the first entry, and the head hash of an empty log: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event a training site must be able to prove happened.
///
/// Serialised as a JSON object tagged by `kind` (the variant name in snake_case, see
/// [`AuditEvent::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A run started (fresh, not resumed).
    RunStart {
        /// Run name (`runs/<run>`).
        run: String,
        /// blake3 hex of the run's resolved configuration.
        config_hash: String,
        /// Region (ISO 3166-1 alpha-2) the site declares it is in.
        site_region: String,
        /// Name of the site.
        site_name: String,
        /// Version of percept that ran.
        percept_version: String,
        /// Public key (64 hex) of the site key that signs every entry of this log; set on the
        /// log's first entry by a signing [`AuditLog`]. Absent: the log is unsigned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site_key: Option<String>,
    },
    /// The residency guard allowed or denied a dataset at this site.
    GuardDecision {
        /// Dataset name (from its manifest).
        dataset: String,
        /// Path of the manifest file that was checked.
        manifest: String,
        /// blake3 hex of the manifest's bytes on disk.
        manifest_hash: String,
        /// Region the dataset was collected in (from the manifest).
        data_region: String,
        /// Region of the site.
        site_region: String,
        /// Whether the dataset may be processed here.
        allowed: bool,
        /// Why (the policy clause that decided, and what the signature check found).
        reason: String,
        /// Fingerprint of the trusted steward key whose signature on the manifest verified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signed_by: Option<String>,
    },
    /// A shard was opened and its whole-file hash checked.
    ShardOpened {
        /// Dataset name.
        dataset: String,
        /// Shard file name (no directory).
        shard: String,
        /// Split the shard belongs to (`train`, `val`, ...).
        split: String,
        /// blake3 hex the shard was expected to have (from the manifest).
        hash: String,
        /// `"ok"`, or the text of the failure.
        result: String,
    },
    /// A sample was skipped (corrupt record, undecodable image, ...).
    SampleSkipped {
        /// Dataset name.
        dataset: String,
        /// Shard file name.
        shard: String,
        /// Index of the sample within the shard.
        index: u64,
        /// Sample id, if it could be read.
        sample_id: Option<String>,
        /// Why it was skipped.
        reason: String,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Path of the checkpoint.
        path: String,
        /// Training step it holds.
        step: u64,
        /// blake3 hex of the checkpoint file.
        hash: String,
        /// blake3 hex of the checkpoint's training state (optimiser, raw weights), when it has
        /// one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        training_state_hash: Option<String>,
    },
    /// A model was exported (weights only).
    Export {
        /// Path of the exported file.
        path: String,
        /// blake3 hex of the exported file.
        hash: String,
        /// What it was exported from (checkpoint path).
        source: String,
    },
    /// A run was resumed from a checkpoint.
    RunResumed {
        /// Run name.
        run: String,
        /// Path of the checkpoint resumed from.
        from_checkpoint: String,
        /// Step the run resumes at.
        step: u64,
    },
    /// A run ended.
    RunEnd {
        /// Training steps completed.
        steps: u64,
        /// Samples skipped over the whole run.
        skipped_samples: u64,
        /// How it ended (`"completed"`, `"interrupted"`, or the error text).
        status: String,
    },
    /// A checkpoint could not be written (disk full, ...): its files were removed, and the
    /// run went on or stopped as `checkpoint.on_error` says. When the failure came after the
    /// checkpoint's own `checkpoint` entry (its commit record could not be written), this
    /// entry withdraws it.
    CheckpointFailed {
        /// Path of the checkpoint's model file.
        path: String,
        /// Training step it would have held.
        step: u64,
        /// The error.
        error: String,
        /// `"continue"` or `"stop"`.
        action: String,
    },
    /// A run was resumed with a config key changed that cannot alter its results (see
    /// `percept_train::checkpoint::RESUME_MUTABLE_KEYS`).
    ConfigChanged {
        /// Dotted key path, e.g. `logging.every`.
        key: String,
        /// The value the resumed checkpoint was written with (TOML; `(unset)` if absent).
        old: String,
        /// The value now in the run's config.
        new: String,
    },
    /// Temporary files of writes that never finished (a killed process) were removed.
    TemporariesRemoved {
        /// The files removed.
        files: Vec<String>,
    },
}

impl AuditEvent {
    /// The `kind` tag this event is serialised with (`"run_start"`, `"guard_decision"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::RunStart { .. } => "run_start",
            AuditEvent::GuardDecision { .. } => "guard_decision",
            AuditEvent::ShardOpened { .. } => "shard_opened",
            AuditEvent::SampleSkipped { .. } => "sample_skipped",
            AuditEvent::Checkpoint { .. } => "checkpoint",
            AuditEvent::Export { .. } => "export",
            AuditEvent::RunResumed { .. } => "run_resumed",
            AuditEvent::RunEnd { .. } => "run_end",
            AuditEvent::CheckpointFailed { .. } => "checkpoint_failed",
            AuditEvent::ConfigChanged { .. } => "config_changed",
            AuditEvent::TemporariesRemoved { .. } => "temporaries_removed",
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 0-based position in the chain.
    pub seq: u64,
    /// When it was written, RFC 3339 UTC.
    pub time: String,
    /// `hash` of the previous entry ([`GENESIS_HASH`] for seq 0).
    pub prev: String,
    /// The payload.
    pub event: AuditEvent,
    /// blake3 hex of the canonical serialisation of the other fields (all but `sig`).
    pub hash: String,
    /// The site's signature over `hash`; present on every entry of a signed log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<EntrySignature>,
}

/// A site key's signature on one audit entry: the key's fingerprint and the Ed25519 signature
/// of the entry's `hash` ([`SignatureDomain::AuditEntry`]). Not covered by `hash`: it signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySignature {
    pub key: String,
    pub signature: String,
}

/// The entry without `hash`: what `hash` is computed over.
#[derive(Serialize)]
struct EntryBody<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    event: &'a AuditEvent,
}

/// The state of a log at some moment: how many entries it had and the hash of the last one.
///
/// Pin it (into checkpoints, the run summary, export provenance) and check it later with
/// [`verify_against`]. An empty log's head is `{ entries: 0, hash: GENESIS_HASH }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditHead {
    /// Number of entries (= seq of the last entry + 1).
    pub entries: u64,
    /// `hash` of the last entry, or [`GENESIS_HASH`] when there are none.
    pub hash: String,
}

impl AuditHead {
    fn genesis() -> Self {
        AuditHead {
            entries: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// The result of verifying a whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Number of entries.
    pub entries: u64,
    /// Head of the log (last entry).
    pub head: AuditHead,
    /// Entry count per event `kind`.
    pub events_by_kind: BTreeMap<String, u64>,
    /// Fingerprint of the site key every entry is signed with (each signature verified against
    /// the public key the first entry names); `None` for an unsigned log.
    pub signed_by: Option<String>,
}

/// Why an audit log cannot be read, verified or appended to.
///
/// `line` is 1-based; for an intact log, line = seq + 1.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file-system operation failed.
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line is not a well-formed entry (not JSON, a torn last line, missing or mistyped
    /// fields). `seq` is given when the line's `seq` could still be read.
    #[error("audit log {path}, line {line}{}: unparsable entry: {detail}", seq_suffix(.seq))]
    Unparsable {
        path: PathBuf,
        line: u64,
        seq: Option<u64>,
        detail: String,
    },

    /// An entry's content does not hash to its stored `hash`: it was edited after it was written.
    #[error(
        "audit log {path}, line {line} (seq {seq}): edited entry: its content hashes to \
         {computed} but it records {stored}"
    )]
    Edited {
        path: PathBuf,
        line: u64,
        seq: u64,
        stored: String,
        computed: String,
    },

    /// `seq` jumps forward: entries `seq..found` were deleted.
    #[error(
        "audit log {path}, line {line}: {} (the entry on this line is seq {found}); entries \
         were deleted",
        missing_range(.seq, .found)
    )]
    Missing {
        path: PathBuf,
        line: u64,
        /// First missing seq (the seq this line should have).
        seq: u64,
        /// The seq actually on this line.
        found: u64,
    },

    /// `seq` is out of order: it goes backwards or repeats (entries duplicated or reordered), or
    /// jumps forward while the skipped seq appears later in the file (entries reordered).
    #[error(
        "audit log {path}, line {line}: entry seq {seq} is out of order (expected seq \
         {expected}); entries were reordered or duplicated"
    )]
    Reordered {
        path: PathBuf,
        line: u64,
        /// The seq on this line.
        seq: u64,
        /// The seq this line should have.
        expected: u64,
    },

    /// An entry's `prev` is not the hash of the entry before it: an entry was inserted, replaced
    /// by one from elsewhere, or the previous entry was edited and rehashed.
    #[error(
        "audit log {path}, line {line} (seq {seq}): broken link: prev is {found} but the \
         previous entry hashes to {expected}; the previous entry was rehashed or this one was \
         inserted or replaced"
    )]
    BrokenLink {
        path: PathBuf,
        line: u64,
        seq: u64,
        /// Hash of the previous entry (or [`GENESIS_HASH`]).
        expected: String,
        /// The `prev` recorded on this line.
        found: String,
    },

    /// The log has fewer entries than a pinned head recorded: trailing entries were deleted.
    #[error(
        "audit log {path} is truncated: it has {entries} entries but a pinned head recorded \
         {pinned_entries}; {} deleted",
        missing_range(.entries, .pinned_entries)
    )]
    Truncated {
        path: PathBuf,
        /// Entries in the log.
        entries: u64,
        /// Entries the pinned head recorded.
        pinned_entries: u64,
    },

    /// The entry at a pinned head's seq has a different hash: the log was rewritten from there
    /// on (or the head was pinned from another run's log).
    #[error(
        "audit log {path}, line {line} (seq {seq}): entry hashes to {found} but a pinned head \
         recorded {pinned}; the log was rewritten from this entry on"
    )]
    HeadMismatch {
        path: PathBuf,
        line: u64,
        seq: u64,
        pinned: String,
        found: String,
    },

    /// An entry of a signed log has no valid signature by the log's site key: it was written or
    /// rewritten by someone without the key.
    #[error(
        "audit log {path}, line {line} (seq {seq}): {detail}; the entry was written or rewritten \
         without the site key {key}"
    )]
    BadSignature {
        path: PathBuf,
        line: u64,
        seq: u64,
        /// Fingerprint of the key the log is signed with.
        key: String,
        detail: String,
    },

    /// The log is not signed by the key the verifier holds (unsigned, or signed by another key
    /// named in its first entry).
    #[error(
        "audit log {path} is {}, not by the site key {expected}: it was rewritten (and re-signed \
         with another key) or it is not this site's log",
        found.as_ref().map_or_else(|| "unsigned".to_string(), |k| format!("signed by {k}"))
    )]
    WrongKey {
        path: PathBuf,
        expected: String,
        found: Option<String>,
    },

    /// A signed head was asked of an unsigned log.
    #[error(
        "audit log {path} is unsigned, so it has no signed head: runs sign their logs when the \
         config's `site.key` names the site's key"
    )]
    Unsigned { path: PathBuf },

    /// A head file (`percept audit export-head`) that is malformed or whose signature does not
    /// verify.
    #[error("head file {path}: {detail}")]
    BadHead { path: PathBuf, detail: String },

    /// A signing writer and a log that disagree: appending would leave entries the log's
    /// verification rejects.
    #[error("audit log {path}: {detail}")]
    SignerMismatch { path: PathBuf, detail: String },

    /// [`AuditLog::open`] found an existing log that does not verify and will not append to it.
    #[error(
        "refusing to append to the audit log {path}: {cause}. Run `percept audit verify {run}` \
         to inspect it, and do not edit the file: it is evidence, and an edit adds a break"
    )]
    Refused {
        path: PathBuf,
        /// Run name (the log's directory name).
        run: String,
        /// The verification error.
        cause: Box<AuditError>,
    },

    /// Another [`AuditLog`] (in this or another process) holds the log open for appending.
    #[error("audit log {path} is already open for appending by another writer")]
    Locked { path: PathBuf },

    /// An earlier append failed part-way; this writer appends nothing more.
    #[error(
        "audit log {path}: an earlier append failed, so this writer appends nothing more; \
         reopen the log (which verifies it) to continue"
    )]
    Poisoned { path: PathBuf },
}

fn seq_suffix(seq: &Option<u64>) -> String {
    match seq {
        Some(s) => format!(" (seq {s})"),
        None => String::new(),
    }
}

fn missing_range(first: &u64, end: &u64) -> String {
    if end.saturating_sub(*first) <= 1 {
        format!("entry seq {first} missing")
    } else {
        format!("entries seq {first} to {} missing", end - 1)
    }
}

/// Writes `value` in the canonical form the entry hash is computed over: compact, object keys
/// sorted by UTF-8 bytes at every depth, strings escaped minimally.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn hash_value(body: &Value) -> String {
    blake3::hash(canonical_json(body).as_bytes())
        .to_hex()
        .to_string()
}

fn is_hash_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Formats `time` as RFC 3339 UTC with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`. Times before
/// the Unix epoch are clamped to it.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// One line that parsed, hashed correctly and has the entry shape.
struct ParsedLine {
    line: u64,
    seq: u64,
    prev: String,
    hash: String,
    kind: &'static str,
    sig: Option<EntrySignature>,
    /// `event.site_key` of a run start.
    site_key: Option<String>,
}

/// A verified chain: the hash of every entry, in seq order, and counts per kind.
struct Chain {
    hashes: Vec<String>,
    by_kind: BTreeMap<String, u64>,
    /// The site key the first entry names; every entry's signature verified against it.
    key: Option<PublicKey>,
    /// The last entry's signature (it signs the head).
    last_sig: Option<EntrySignature>,
}

impl Chain {
    fn head(&self) -> AuditHead {
        match self.hashes.last() {
            Some(h) => AuditHead {
                entries: self.hashes.len() as u64,
                hash: h.clone(),
            },
            None => AuditHead::genesis(),
        }
    }

    fn report(&self) -> AuditReport {
        AuditReport {
            entries: self.hashes.len() as u64,
            head: self.head(),
            events_by_kind: self.by_kind.clone(),
            signed_by: self.key.as_ref().map(PublicKey::fingerprint),
        }
    }
}

fn parse_line(path: &Path, line: u64, bytes: &[u8], torn: bool) -> Result<ParsedLine, AuditError> {
    let unparsable = |seq: Option<u64>, detail: String| AuditError::Unparsable {
        path: path.to_path_buf(),
        line,
        seq,
        detail,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| unparsable(None, format!("not UTF-8 ({e})")))?;
    let parsed: Result<Value, _> = serde_json::from_str(text);
    if torn {
        let seq = parsed
            .ok()
            .and_then(|v| v.get("seq").and_then(Value::as_u64));
        return Err(unparsable(
            seq,
            "incomplete last line (no newline at the end): a write was cut short (crash, full \
             disk) or the file was cut"
                .to_string(),
        ));
    }
    if text.trim().is_empty() {
        return Err(unparsable(None, "empty line".to_string()));
    }
    let mut value = parsed.map_err(|e| unparsable(None, format!("not JSON ({e})")))?;
    let seq = value.get("seq").and_then(Value::as_u64);
    let Some(object) = value.as_object_mut() else {
        return Err(unparsable(None, "not a JSON object".to_string()));
    };
    let stored = match object.remove("hash") {
        Some(Value::String(h)) if is_hash_hex(&h) => h,
        Some(_) => {
            return Err(unparsable(
                seq,
                "`hash` is not 64 lowercase hex digits".to_string(),
            ))
        }
        None => return Err(unparsable(seq, "no `hash`".to_string())),
    };
    let sig = match object.remove("sig") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<EntrySignature>(v)
                .map_err(|e| unparsable(seq, format!("`sig` is not a signature ({e})")))?,
        ),
    };
    let computed = hash_value(&value);
    let Some(seq) = seq else {
        return Err(unparsable(
            None,
            "no `seq` (a non-negative integer)".to_string(),
        ));
    };
    if computed != stored {
        return Err(AuditError::Edited {
            path: path.to_path_buf(),
            line,
            seq,
            stored,
            computed,
        });
    }
    if let Value::Object(object) = &mut value {
        object.insert("hash".to_string(), Value::String(stored));
    }
    let entry: AuditEntry = serde_json::from_value(value)
        .map_err(|e| unparsable(Some(seq), format!("not an audit entry ({e})")))?;
    if !is_hash_hex(&entry.prev) {
        return Err(unparsable(
            Some(seq),
            "`prev` is not 64 lowercase hex digits".to_string(),
        ));
    }
    let site_key = match &entry.event {
        AuditEvent::RunStart { site_key, .. } => site_key.clone(),
        _ => None,
    };
    Ok(ParsedLine {
        line,
        seq,
        prev: entry.prev,
        hash: entry.hash,
        kind: entry.event.kind(),
        sig,
        site_key,
    })
}

/// Verifies the bytes of a log; `path` is only used in errors.
fn check_bytes(path: &Path, bytes: &[u8]) -> Result<Chain, AuditError> {
    let mut raw: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // `split` yields a final fragment after the last `\n`: empty for a complete file, the torn
    // line otherwise.
    let tail = raw.pop().unwrap_or_default();
    let mut lines: Vec<Result<ParsedLine, AuditError>> = raw
        .iter()
        .enumerate()
        .map(|(i, l)| parse_line(path, i as u64 + 1, l, false))
        .collect();
    if !tail.is_empty() {
        lines.push(parse_line(path, lines.len() as u64 + 1, tail, true));
    }

    let mut chain = Chain {
        hashes: Vec::with_capacity(lines.len()),
        by_kind: BTreeMap::new(),
        key: None,
        last_sig: None,
    };
    // Seqs of the lines that parsed, to tell a reorder from a deletion.
    let seqs: Vec<Option<u64>> = lines
        .iter()
        .map(|l| l.as_ref().ok().map(|p| p.seq))
        .collect();
    for (i, parsed) in lines.into_iter().enumerate() {
        let p = parsed?;
        let expected = chain.hashes.len() as u64;
        if p.seq > expected {
            // A forward jump is a reorder if a skipped seq comes later, a deletion otherwise.
            let skipped_later = seqs[i + 1..]
                .iter()
                .flatten()
                .any(|s| (expected..p.seq).contains(s));
            return Err(if skipped_later {
                AuditError::Reordered {
                    path: path.to_path_buf(),
                    line: p.line,
                    seq: p.seq,
                    expected,
                }
            } else {
                AuditError::Missing {
                    path: path.to_path_buf(),
                    line: p.line,
                    seq: expected,
                    found: p.seq,
                }
            });
        }
        if p.seq < expected {
            return Err(AuditError::Reordered {
                path: path.to_path_buf(),
                line: p.line,
                seq: p.seq,
                expected,
            });
        }
        let prev_hash = chain.hashes.last().map_or(GENESIS_HASH, String::as_str);
        if p.prev != prev_hash {
            return Err(AuditError::BrokenLink {
                path: path.to_path_buf(),
                line: p.line,
                seq: p.seq,
                expected: prev_hash.to_string(),
                found: p.prev,
            });
        }
        if p.seq == 0 {
            if let Some(hex) = &p.site_key {
                chain.key = Some(
                    PublicKey::from_hex(hex).map_err(|e| AuditError::Unparsable {
                        path: path.to_path_buf(),
                        line: p.line,
                        seq: Some(0),
                        detail: format!("`event.site_key`: {e}"),
                    })?,
                );
            }
        }
        check_signature(path, &p, chain.key.as_ref())?;
        chain.last_sig = p.sig;
        chain.hashes.push(p.hash);
        *chain.by_kind.entry(p.kind.to_string()).or_default() += 1;
    }
    Ok(chain)
}

/// A log whose first entry names a site key has every entry signed by it; an unsigned log has
/// no signatures at all.
fn check_signature(path: &Path, p: &ParsedLine, key: Option<&PublicKey>) -> Result<(), AuditError> {
    let fail = |key: String, detail: String| AuditError::BadSignature {
        path: path.to_path_buf(),
        line: p.line,
        seq: p.seq,
        key,
        detail,
    };
    match (key, &p.sig) {
        (None, None) => Ok(()),
        (None, Some(sig)) => Err(fail(
            sig.key.clone(),
            "the entry is signed, but the log's first entry names no site key (it was removed \
             or replaced)"
                .into(),
        )),
        (Some(key), None) => Err(fail(key.fingerprint(), "the entry is not signed".into())),
        (Some(key), Some(sig)) => {
            if sig.key != key.fingerprint() {
                Err(fail(
                    key.fingerprint(),
                    format!("the entry is signed by another key, {}", sig.key),
                ))
            } else if !key.verifies(
                SignatureDomain::AuditEntry,
                p.hash.as_bytes(),
                &sig.signature,
            ) {
                Err(fail(
                    key.fingerprint(),
                    "its signature does not verify over its hash".into(),
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn read_log(path: &Path) -> Result<Vec<u8>, AuditError> {
    std::fs::read(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Verifies the whole chain of the log at `path`.
///
/// Stops at the first problem. A log whose trailing entries were deleted, or whose last entry
/// was edited and rehashed, still verifies on its own: use [`verify_against`] with a pinned head.
pub fn verify(path: impl AsRef<Path>) -> Result<AuditReport, AuditError> {
    let path = path.as_ref();
    Ok(check_bytes(path, &read_log(path)?)?.report())
}

/// Verifies the whole chain, then that it still contains the pinned head `expected`: at least
/// `expected.entries` entries, the one at seq `expected.entries - 1` hashing to `expected.hash`.
/// The log may have grown since. A head with 0 entries pins nothing.
pub fn verify_against(
    path: impl AsRef<Path>,
    expected: &AuditHead,
) -> Result<AuditReport, AuditError> {
    let path = path.as_ref();
    let chain = check_bytes(path, &read_log(path)?)?;
    if expected.entries > 0 {
        let entries = chain.hashes.len() as u64;
        if entries < expected.entries {
            return Err(AuditError::Truncated {
                path: path.to_path_buf(),
                entries,
                pinned_entries: expected.entries,
            });
        }
        let seq = expected.entries - 1;
        let found = &chain.hashes[seq as usize];
        if *found != expected.hash {
            return Err(AuditError::HeadMismatch {
                path: path.to_path_buf(),
                line: seq + 1,
                seq,
                pinned: expected.hash.clone(),
                found: found.clone(),
            });
        }
    }
    Ok(chain.report())
}

/// [`verify`], then that every entry is signed by `key`: the site's public key, held apart from
/// the log (a log rewritten and re-signed with another key names that key in its first entry).
pub fn verify_signed_by(
    path: impl AsRef<Path>,
    key: &PublicKey,
) -> Result<AuditReport, AuditError> {
    let path = path.as_ref();
    let report = verify(path)?;
    if report.signed_by.as_deref() != Some(key.fingerprint().as_str()) {
        return Err(AuditError::WrongKey {
            path: path.to_path_buf(),
            expected: key.fingerprint(),
            found: report.signed_by,
        });
    }
    Ok(report)
}

/// A log's head with the site's signature on it, to anchor outside the site (a ticket, a
/// transparency log): `percept audit export-head` prints it, `percept audit verify --head`
/// checks that the log still extends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// Entries in the log at the time, and the last entry's hash.
    pub entries: u64,
    pub hash: String,
    /// The site key: fingerprint and public key (64 hex).
    pub key: String,
    pub public_key: String,
    /// The last entry's signature: the site key's signature over `hash`.
    pub signature: String,
}

impl SignedHead {
    /// The head as [`verify_against`] takes it.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            entries: self.entries,
            hash: self.hash.clone(),
        }
    }

    /// Reads a head file and checks its own signature (not yet against a log).
    pub fn load(path: impl AsRef<Path>) -> Result<(SignedHead, PublicKey), AuditError> {
        let path = path.as_ref();
        let bad = |detail: String| AuditError::BadHead {
            path: path.to_path_buf(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let head: SignedHead = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not a signed audit head ({e}); `percept audit export-head RUN` writes one"
            ))
        })?;
        let key =
            PublicKey::from_hex(&head.public_key).map_err(|e| bad(format!("public_key: {e}")))?;
        if key.fingerprint() != head.key {
            return Err(bad(format!(
                "`key` says {} but `public_key` has fingerprint {}: the file was edited",
                head.key,
                key.fingerprint()
            )));
        }
        if head.entries == 0
            || !key.verifies(
                SignatureDomain::AuditEntry,
                head.hash.as_bytes(),
                &head.signature,
            )
        {
            return Err(bad(format!(
                "its signature does not verify with key {}: the head was edited",
                head.key
            )));
        }
        Ok((head, key))
    }
}

/// The signed head of a signed log (its last entry's hash and signature).
pub fn signed_head(path: impl AsRef<Path>) -> Result<SignedHead, AuditError> {
    let path = path.as_ref();
    let chain = check_bytes(path, &read_log(path)?)?;
    let (Some(key), Some(sig)) = (&chain.key, &chain.last_sig) else {
        return Err(AuditError::Unsigned {
            path: path.to_path_buf(),
        });
    };
    let head = chain.head();
    Ok(SignedHead {
        entries: head.entries,
        hash: head.hash,
        key: key.fingerprint(),
        public_key: key.to_hex(),
        signature: sig.signature.clone(),
    })
}

/// An open audit log, appending to the end of a verified chain.
///
/// Holds an exclusive lock on the file while it lives.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    head: AuditHead,
    poisoned: bool,
    /// Fingerprint of the key the log is signed with (from its first entry, or the signer's
    /// for a new log).
    log_key: Option<String>,
    /// Signs every appended entry ([`with_signer`](Self::with_signer)).
    signer: Option<SecretKey>,
}

impl AuditLog {
    /// Opens the log at `path` for appending, creating it (and its parent directories) if
    /// missing. An existing log is verified first; a broken one is refused
    /// ([`AuditError::Refused`], wrapping the verification error), and one held open by another
    /// writer gives [`AuditError::Locked`].
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf);
        if let Some(dir) = &parent {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            // File systems without locks: carry on unlocked rather than refuse to audit.
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        if !existed {
            // Make the new file's directory entry durable too.
            #[cfg(unix)]
            if let Some(dir) = &parent {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let chain = check_bytes(&path, &bytes).map_err(|cause| AuditError::Refused {
            run: parent
                .as_deref()
                .and_then(Path::file_name)
                .map_or_else(|| "<run>".to_string(), |n| n.to_string_lossy().into_owned()),
            path: path.clone(),
            cause: Box::new(cause),
        })?;
        Ok(AuditLog {
            head: chain.head(),
            log_key: chain.key.as_ref().map(PublicKey::fingerprint),
            path,
            file,
            poisoned: false,
            signer: None,
        })
    }

    /// Signs every entry this writer appends with the site key `key`. A new log records the
    /// key's public half in its first entry (which must be a `run_start`); an existing log must
    /// already be signed by the same key. `None` leaves the writer unsigned, which only an
    /// unsigned log accepts.
    pub fn with_signer(mut self, key: Option<SecretKey>) -> Result<AuditLog, AuditError> {
        let wanted = key.as_ref().map(|k| k.public().fingerprint());
        if self.head.entries > 0 && wanted.is_some() && self.log_key != wanted {
            return Err(AuditError::SignerMismatch {
                path: self.path.clone(),
                detail: format!(
                    "the log is {}, but this run's site key is {}: a log is signed by one key \
                     from its first entry on; use the key it was started with",
                    self.log_key
                        .as_ref()
                        .map_or_else(|| "unsigned".to_string(), |k| format!("signed by {k}")),
                    wanted.unwrap_or_default()
                ),
            });
        }
        self.signer = key;
        Ok(self)
    }

    /// Appends `event` as the next entry: one write of the whole line, then fsync. Returns the
    /// new head. If the write or the fsync fails, this writer is poisoned (further appends give
    /// [`AuditError::Poisoned`]); reopening verifies what reached the file.
    pub fn append(&mut self, event: AuditEvent) -> Result<AuditHead, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned {
                path: self.path.clone(),
            });
        }
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut event = event;
        let seq = self.head.entries;
        match (&self.signer, &self.log_key) {
            (None, Some(key)) => {
                return Err(AuditError::SignerMismatch {
                    path: self.path.clone(),
                    detail: format!(
                        "the log is signed by the site key {key}, and an unsigned entry would \
                         break it: give the run's site key (`site.key` in its config)"
                    ),
                })
            }
            (Some(signer), None) if seq == 0 => match &mut event {
                AuditEvent::RunStart { site_key, .. } => {
                    *site_key = Some(signer.public().to_hex());
                }
                other => {
                    return Err(AuditError::SignerMismatch {
                        path: self.path.clone(),
                        detail: format!(
                            "a signed log starts with a run_start entry, not {}",
                            other.kind()
                        ),
                    })
                }
            },
            _ => {}
        }
        let time = rfc3339_utc(SystemTime::now());
        let body = serde_json::to_value(EntryBody {
            seq,
            time: &time,
            prev: &self.head.hash,
            event: &event,
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        let hash = hash_value(&body);
        let sig = self.signer.as_ref().map(|k| EntrySignature {
            key: k.public().fingerprint(),
            signature: k.sign(SignatureDomain::AuditEntry, hash.as_bytes()),
        });
        let entry = AuditEntry {
            seq,
            time,
            prev: self.head.hash.clone(),
            event,
            hash,
            sig,
        };
        let mut line = serde_json::to_string(&entry).map_err(|e| io(std::io::Error::other(e)))?;
        line.push('\n');
        // `write_all` of one buffer: one write(2) on a regular file unless it is interrupted or
        // the disk fills, in which case the line may be torn and the writer is poisoned.
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.poisoned = true;
            return Err(io(e));
        }
        self.head = AuditHead {
            entries: seq + 1,
            hash: entry.hash,
        };
        if seq == 0 {
            self.log_key = self.signer.as_ref().map(|k| k.public().fingerprint());
        }
        Ok(self.head.clone())
    }

    /// The head after the last entry (of the existing log on open, then of the last append).
    pub fn head(&self) -> AuditHead {
        self.head.clone()
    }

    /// Fingerprint of the site key the log is signed with; `None` for an unsigned log.
    pub fn signed_by(&self) -> Option<&str> {
        self.log_key.as_deref()
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<AuditEvent> {
        vec![
            AuditEvent::RunStart {
                run: "r1".into(),
                config_hash: "c".repeat(64),
                site_region: "DE".into(),
                site_name: "munich-1".into(),
                percept_version: "0.1.0".into(),
                site_key: None,
            },
            AuditEvent::GuardDecision {
                dataset: "synth-us".into(),
                manifest: "data/synth-us/manifest.json".into(),
                manifest_hash: "a".repeat(64),
                data_region: "US".into(),
                site_region: "DE".into(),
                allowed: false,
                reason: "DE is not in processing_regions [US]".into(),
                signed_by: None,
            },
            AuditEvent::ShardOpened {
                dataset: "synth-de".into(),
                shard: "train-00000.shard".into(),
                split: "train".into(),
                hash: "b".repeat(64),
                result: "ok".into(),
            },
            AuditEvent::SampleSkipped {
                dataset: "synth-de".into(),
                shard: "train-00000.shard".into(),
                index: 17,
                sample_id: Some("scene-17 \"quoted\"\n".into()),
                reason: "checksum mismatch".into(),
            },
            AuditEvent::Checkpoint {
                path: "runs/r1/ckpt-100".into(),
                step: 100,
                hash: "d".repeat(64),
                training_state_hash: None,
            },
            AuditEvent::RunEnd {
                steps: 100,
                skipped_samples: 1,
                status: "completed".into(),
            },
        ]
    }

    /// Writes the six events to `dir/r1/audit.jsonl`; returns the path and the head.
    fn write_log(dir: &Path) -> (PathBuf, AuditHead) {
        let path = dir.join("r1").join(AUDIT_FILE);
        let mut log = AuditLog::open(&path).unwrap();
        let mut head = log.head();
        for event in events() {
            head = log.append(event).unwrap();
        }
        (path, head)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.ends_with('\n'));
        text.lines().map(str::to_string).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    /// Serialises `value` with object keys in reverse order, spaces after separators.
    fn reversed_keys(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                keys.reverse();
                let parts: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{}: {}",
                            serde_json::to_string(k).unwrap(),
                            reversed_keys(&map[k.as_str()])
                        )
                    })
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(reversed_keys).collect();
                format!("[{}]", parts.join(", "))
            }
            other => serde_json::to_string(other).unwrap(),
        }
    }

    fn rehash(value: &mut Value) {
        let object = value.as_object_mut().unwrap();
        object.remove("hash");
        let hash = hash_value(value);
        value
            .as_object_mut()
            .unwrap()
            .insert("hash".into(), Value::String(hash));
    }

    #[test]
    fn audit_write_verify_and_reopen_continues_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = write_log(dir.path());
        assert_eq!(head.entries, 6);

        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 6);
        assert_eq!(report.head, head);
        let expected: BTreeMap<String, u64> = [
            ("run_start", 1),
            ("guard_decision", 1),
            ("shard_opened", 1),
            ("sample_skipped", 1),
            ("checkpoint", 1),
            ("run_end", 1),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
        assert_eq!(report.events_by_kind, expected);
        assert_eq!(verify_against(&path, &head).unwrap(), report);

        // The lines are the typed entries, linked and numbered.
        let entries: Vec<AuditEntry> = read_lines(&path)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries[0].prev, GENESIS_HASH);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64);
            assert_eq!(e.event, events()[i]);
            if i > 0 {
                assert_eq!(e.prev, entries[i - 1].hash);
            }
        }
        assert_eq!(entries[5].hash, head.hash);

        // Reopen: head restored, appends continue the chain.
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), head);
        let resumed = AuditEvent::RunResumed {
            run: "r1".into(),
            from_checkpoint: "runs/r1/ckpt-100".into(),
            step: 100,
        };
        let head7 = log.append(resumed.clone()).unwrap();
        let export = AuditEvent::Export {
            path: "exports/r1.safetensors".into(),
            hash: "e".repeat(64),
            source: "runs/r1/ckpt-100".into(),
        };
        let head8 = log.append(export).unwrap();
        assert_eq!(log.head(), head8);
        drop(log);
        assert_eq!(head7.entries, 7);
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 8);
        let e6: AuditEntry = serde_json::from_str(&lines[6]).unwrap();
        assert_eq!(e6.seq, 6);
        assert_eq!(e6.prev, head.hash);
        assert_eq!(e6.hash, head7.hash);
        assert_eq!(e6.event, resumed);

        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 8);
        assert_eq!(report.head, head8);
        assert_eq!(report.events_by_kind["run_resumed"], 1);
        assert_eq!(report.events_by_kind["export"], 1);
        // Older pinned heads are still contained in the grown log.
        verify_against(&path, &head).unwrap();
        verify_against(&path, &head7).unwrap();
    }

    #[test]
    fn audit_empty_and_missing_logs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("b").join(AUDIT_FILE);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), AuditHead::genesis());
        assert_eq!(log.head().hash, GENESIS_HASH);
        drop(log);
        assert!(path.is_file());
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 0);
        assert_eq!(report.head, AuditHead::genesis());
        assert!(report.events_by_kind.is_empty());

        let err = verify(dir.path().join("nope.jsonl")).unwrap_err();
        assert!(matches!(err, AuditError::Io { ref path, .. } if path.ends_with("nope.jsonl")));
    }

    #[test]
    fn audit_deleted_middle_line_is_missing_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let mut lines = read_lines(&path);
        lines.remove(3); // seq 3, line 4
        write_lines(&path, &lines);
        match verify(&path).unwrap_err() {
            AuditError::Missing {
                path: p,
                line,
                seq,
                found,
            } => {
                assert_eq!(p, path);
                assert_eq!((line, seq, found), (4, 3, 4));
            }
            e => panic!("expected Missing, got {e}"),
        }
        let err = verify(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 4") && err.contains("entry seq 3 missing"),
            "{err}"
        );

        // Two deleted: a range.
        lines.remove(3); // now seqs 0,1,2,5
        write_lines(&path, &lines);
        let err = verify(&path).unwrap_err();
        assert!(matches!(
            err,
            AuditError::Missing {
                line: 4,
                seq: 3,
                found: 5,
                ..
            }
        ));
        assert!(
            err.to_string().contains("entries seq 3 to 4 missing"),
            "{err}"
        );

        // The first line deleted.
        let (path, _) = write_log(&dir.path().join("x"));
        let mut lines = read_lines(&path);
        lines.remove(0);
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::Missing {
                line: 1,
                seq: 0,
                found: 1,
                ..
            }
        ));
    }

    #[test]
    fn audit_edited_field_is_edited_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let mut lines = read_lines(&path);
        let mut value: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(value["event"]["allowed"], Value::Bool(false));
        value["event"]["allowed"] = Value::Bool(true);
        lines[1] = serde_json::to_string(&value).unwrap(); // old hash kept
        write_lines(&path, &lines);
        match verify(&path).unwrap_err() {
            AuditError::Edited {
                line,
                seq,
                stored,
                computed,
                ..
            } => {
                assert_eq!((line, seq), (2, 1));
                assert_eq!(stored, value["hash"].as_str().unwrap());
                assert_ne!(stored, computed);
            }
            e => panic!("expected Edited, got {e}"),
        }
    }

    #[test]
    fn audit_added_key_is_edited_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let mut lines = read_lines(&path);
        let mut value: Value = serde_json::from_str(&lines[2]).unwrap();
        value["event"]["note"] = Value::String("harmless".into());
        lines[2] = serde_json::to_string(&value).unwrap();
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::Edited {
                line: 3,
                seq: 2,
                ..
            }
        ));
    }

    #[test]
    fn audit_swapped_lines_are_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let mut lines = read_lines(&path);
        lines.swap(2, 3); // seqs 2 and 3 on lines 3 and 4
        write_lines(&path, &lines);
        match verify(&path).unwrap_err() {
            AuditError::Reordered {
                line,
                seq,
                expected,
                ..
            } => assert_eq!((line, seq, expected), (3, 3, 2)),
            e => panic!("expected Reordered, got {e}"),
        }
    }

    #[test]
    fn audit_duplicated_line_is_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let mut lines = read_lines(&path);
        let copy = lines[2].clone();
        lines.insert(3, copy); // seq 2 again on line 4
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::Reordered {
                line: 4,
                seq: 2,
                expected: 3,
                ..
            }
        ));
    }

    #[test]
    fn audit_deleted_last_line_is_truncated_against_pinned_head() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = write_log(dir.path());
        let mut lines = read_lines(&path);
        lines.pop();
        write_lines(&path, &lines);
        // On its own the shorter chain is valid: this is what the pinned head is for.
        assert_eq!(verify(&path).unwrap().entries, 5);
        match verify_against(&path, &head).unwrap_err() {
            AuditError::Truncated {
                path: p,
                entries,
                pinned_entries,
            } => {
                assert_eq!(p, path);
                assert_eq!((entries, pinned_entries), (5, 6));
            }
            e => panic!("expected Truncated, got {e}"),
        }
        let msg = verify_against(&path, &head).unwrap_err().to_string();
        assert!(msg.contains("entry seq 5 missing"), "{msg}");
    }

    #[test]
    fn audit_torn_last_line_is_unparsable() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let text = std::fs::read_to_string(&path).unwrap();
        let last_start = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let cut = last_start + (text.len() - last_start) / 2;
        std::fs::write(&path, &text[..cut]).unwrap();
        match verify(&path).unwrap_err() {
            AuditError::Unparsable { line, seq, .. } => assert_eq!((line, seq), (6, None)),
            e => panic!("expected Unparsable, got {e}"),
        }

        // Cut exactly before the final newline: the JSON is whole but the write was not.
        std::fs::write(&path, &text[..text.len() - 1]).unwrap();
        match verify(&path).unwrap_err() {
            AuditError::Unparsable {
                line, seq, detail, ..
            } => {
                assert_eq!((line, seq), (6, Some(5)));
                assert!(detail.contains("incomplete last line"), "{detail}");
            }
            e => panic!("expected Unparsable, got {e}"),
        }
    }

    #[test]
    fn audit_garbage_and_blank_lines_are_unparsable() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let original = read_lines(&path);

        let mut lines = original.clone();
        lines.insert(2, String::new());
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::Unparsable {
                line: 3,
                seq: None,
                ..
            }
        ));

        let mut lines = original.clone();
        lines[4] = "not json".into();
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::Unparsable { line: 5, .. }
        ));

        // Hash valid but not an entry (unknown event kind, rehashed).
        let mut lines = original;
        let mut value: Value = serde_json::from_str(&lines[4]).unwrap();
        value["event"]["kind"] = Value::String("teleport".into());
        rehash(&mut value);
        lines[4] = serde_json::to_string(&value).unwrap();
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::Unparsable {
                line: 5,
                seq: Some(4),
                ..
            }
        ));
    }

    #[test]
    fn audit_rehashed_edit_breaks_next_link() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = write_log(dir.path());
        let original = read_lines(&path);

        let mut lines = original.clone();
        let mut value: Value = serde_json::from_str(&lines[1]).unwrap();
        value["event"]["allowed"] = Value::Bool(true);
        rehash(&mut value);
        lines[1] = serde_json::to_string(&value).unwrap();
        write_lines(&path, &lines);
        match verify(&path).unwrap_err() {
            AuditError::BrokenLink {
                line,
                seq,
                expected,
                found,
                ..
            } => {
                assert_eq!((line, seq), (3, 2));
                assert_eq!(expected, value["hash"].as_str().unwrap());
                let old: AuditEntry = serde_json::from_str(&original[1]).unwrap();
                assert_eq!(found, old.hash);
            }
            e => panic!("expected BrokenLink, got {e}"),
        }

        // The last entry edited and rehashed: only the pinned head catches it.
        let mut lines = original;
        let mut value: Value = serde_json::from_str(&lines[5]).unwrap();
        value["event"]["skipped_samples"] = Value::from(0u64);
        rehash(&mut value);
        lines[5] = serde_json::to_string(&value).unwrap();
        write_lines(&path, &lines);
        assert_eq!(verify(&path).unwrap().entries, 6);
        assert!(matches!(
            verify_against(&path, &head).unwrap_err(),
            AuditError::HeadMismatch {
                line: 6,
                seq: 5,
                ..
            }
        ));
    }

    #[test]
    fn audit_line_from_another_log_breaks_link() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(&dir.path().join("a"));
        let other = dir.path().join("b").join("r2").join(AUDIT_FILE);
        let mut log = AuditLog::open(&other).unwrap();
        for mut event in events() {
            if let AuditEvent::RunStart { run, .. } = &mut event {
                *run = "r2".into();
            }
            log.append(event).unwrap();
        }
        drop(log);
        let mut lines = read_lines(&path);
        lines[3] = read_lines(&other)[3].clone(); // a valid seq-3 entry, other chain
        write_lines(&path, &lines);
        assert!(matches!(
            verify(&path).unwrap_err(),
            AuditError::BrokenLink {
                line: 4,
                seq: 3,
                ..
            }
        ));
    }

    #[test]
    fn audit_key_order_in_file_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = write_log(dir.path());
        let mut lines = read_lines(&path);
        for i in [0, 3] {
            let value: Value = serde_json::from_str(&lines[i]).unwrap();
            let reordered = reversed_keys(&value);
            assert!(reordered.starts_with("{ \"time\""), "{reordered}");
            assert!(reordered.contains("\"sample_id\"") || i == 0);
            lines[i] = reordered;
        }
        write_lines(&path, &lines);
        let report = verify_against(&path, &head).unwrap();
        assert_eq!(report.head, head);
    }

    #[test]
    fn audit_canonical_json_sorts_keys_recursively() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":[3,{"f":"x\"y\n\u0001é","e":null}]}}"#)
                .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "a": { "c": [3, { "e": null, "f": "x\"y\n\u0001\u00e9" }], "d": 2 }, "b": 1 }"#,
        )
        .unwrap();
        let expected = r#"{"a":{"c":[3,{"e":null,"f":"x\"y\n\u0001é"}],"d":2},"b":1}"#;
        assert_eq!(canonical_json(&a), expected);
        assert_eq!(canonical_json(&b), expected);
        // The canonical form parses back to the same value.
        assert_eq!(serde_json::from_str::<Value>(expected).unwrap(), a);
    }

    #[test]
    fn audit_open_refuses_broken_log() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_log(dir.path());
        let mut lines = read_lines(&path);
        let mut value: Value = serde_json::from_str(&lines[1]).unwrap();
        value["event"]["allowed"] = Value::Bool(true);
        lines[1] = serde_json::to_string(&value).unwrap();
        write_lines(&path, &lines);
        let before = std::fs::read(&path).unwrap();

        let err = AuditLog::open(&path).unwrap_err();
        let msg = err.to_string();
        match err {
            AuditError::Refused {
                path: p,
                run,
                cause,
            } => {
                assert_eq!(p, path);
                assert_eq!(run, "r1");
                assert!(matches!(
                    *cause,
                    AuditError::Edited {
                        line: 2,
                        seq: 1,
                        ..
                    }
                ));
            }
            e => panic!("expected Refused, got {e}"),
        }
        assert!(msg.contains("percept audit verify r1"), "{msg}");
        assert!(msg.contains("do not edit"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "nothing was appended"
        );

        // A torn last line is refused too.
        let (path, _) = write_log(&dir.path().join("t"));
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 10]).unwrap();
        assert!(matches!(
            AuditLog::open(&path).unwrap_err(),
            AuditError::Refused { ref cause, .. }
                if matches!(**cause, AuditError::Unparsable { line: 6, .. })
        ));
    }

    #[test]
    fn audit_second_writer_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let mut first = AuditLog::open(&path).unwrap();
        assert!(matches!(
            AuditLog::open(&path).unwrap_err(),
            AuditError::Locked { .. }
        ));
        first.append(events().remove(0)).unwrap();
        drop(first);
        assert_eq!(AuditLog::open(&path).unwrap().head().entries, 1);
    }

    #[test]
    fn audit_event_kind_matches_serde_tag() {
        let mut all = events();
        all.push(AuditEvent::Export {
            path: "p".into(),
            hash: "h".into(),
            source: "s".into(),
        });
        all.push(AuditEvent::RunResumed {
            run: "r".into(),
            from_checkpoint: "c".into(),
            step: 1,
        });
        for event in all {
            let value = serde_json::to_value(&event).unwrap();
            assert_eq!(value["kind"], event.kind());
            let back: AuditEvent = serde_json::from_value(value).unwrap();
            assert_eq!(back, event);
        }
        let none = AuditEvent::SampleSkipped {
            dataset: "d".into(),
            shard: "s".into(),
            index: 0,
            sample_id: None,
            reason: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap()["sample_id"],
            Value::Null
        );
    }

    #[test]
    fn audit_rfc3339_formatter() {
        use std::time::Duration;
        let at = |secs: u64, millis: u64| {
            rfc3339_utc(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(at(1_234_567_890, 123), "2009-02-13T23:31:30.123Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        let now = rfc3339_utc(SystemTime::now());
        assert_eq!(now.len(), 24, "{now}");
    }

    /// Writes the six events to a log signed by `key`; returns its path.
    fn write_signed_log(dir: &Path, key: &SecretKey) -> PathBuf {
        let path = dir.join("signed").join(AUDIT_FILE);
        let signer = key.clone();
        let mut log = AuditLog::open(&path)
            .unwrap()
            .with_signer(Some(signer))
            .unwrap();
        for event in events() {
            log.append(event).unwrap();
        }
        path
    }

    /// Rewrites `lines[from..]` as an attacker would: each entry rehashed, relinked to the one
    /// before, and signed with `key` (or its signature dropped).
    fn rewrite_from(lines: &mut [String], from: usize, key: Option<&SecretKey>) {
        let mut prev = if from == 0 {
            GENESIS_HASH.to_string()
        } else {
            serde_json::from_str::<Value>(&lines[from - 1]).unwrap()["hash"]
                .as_str()
                .unwrap()
                .to_string()
        };
        for line in lines[from..].iter_mut() {
            let mut value: Value = serde_json::from_str(line).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("sig");
            object.insert("prev".into(), Value::String(prev.clone()));
            if let Some(site_key) = object["event"].get_mut("site_key") {
                match key {
                    Some(k) => *site_key = Value::String(k.public().to_hex()),
                    None => {
                        object["event"].as_object_mut().unwrap().remove("site_key");
                    }
                }
            }
            rehash(&mut value);
            let hash = value["hash"].as_str().unwrap().to_string();
            if let Some(k) = key {
                value.as_object_mut().unwrap().insert(
                    "sig".into(),
                    serde_json::to_value(EntrySignature {
                        key: k.public().fingerprint(),
                        signature: k.sign(SignatureDomain::AuditEntry, hash.as_bytes()),
                    })
                    .unwrap(),
                );
            }
            prev = hash;
            *line = serde_json::to_string(&value).unwrap();
        }
    }

    #[test]
    fn signed_log_verifies_and_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let site = SecretKey::generate("site").unwrap();
        let path = write_signed_log(dir.path(), &site);
        let report = verify_signed_by(&path, &site.public()).unwrap();
        assert_eq!(report.entries, 6);
        assert_eq!(report.signed_by, Some(site.public().fingerprint()));
        let first: AuditEntry = serde_json::from_str(&read_lines(&path)[0]).unwrap();
        assert!(matches!(
            first.event,
            AuditEvent::RunStart { site_key: Some(ref k), .. } if *k == site.public().to_hex()
        ));
        // Reopened, the same key continues it; no key, or another, is refused before a write.
        let other = SecretKey::generate("other").unwrap();
        let err = AuditLog::open(&path)
            .unwrap()
            .with_signer(Some(other.clone()))
            .unwrap_err();
        assert!(matches!(err, AuditError::SignerMismatch { .. }), "{err}");
        let mut unsigned = AuditLog::open(&path).unwrap();
        let err = unsigned.append(events().pop().unwrap()).unwrap_err();
        assert!(err.to_string().contains("give the run's site key"), "{err}");
        drop(unsigned);
        let mut log = AuditLog::open(&path)
            .unwrap()
            .with_signer(Some(site.clone()))
            .unwrap();
        log.append(events().pop().unwrap()).unwrap();
        assert_eq!(verify_signed_by(&path, &site.public()).unwrap().entries, 7);
        // An unsigned log is unsigned for `verify_signed_by`.
        let (plain, _) = write_log(dir.path());
        assert_eq!(verify(&plain).unwrap().signed_by, None);
        assert!(matches!(
            verify_signed_by(&plain, &site.public()).unwrap_err(),
            AuditError::WrongKey { found: None, .. }
        ));
    }

    #[test]
    fn signed_log_rewritten_without_the_site_key_fails_at_the_first_rewritten_entry() {
        let dir = tempfile::tempdir().unwrap();
        let site = SecretKey::generate("site").unwrap();
        let path = write_signed_log(dir.path(), &site);
        let original = read_lines(&path);

        // Entry seq 3 edited, it and the rest rehashed and relinked, signatures kept: the hashes
        // and links hold, the signature of seq 3 does not.
        let mut lines = original.clone();
        let mut value: Value = serde_json::from_str(&lines[3]).unwrap();
        value["event"]["reason"] = Value::from("nothing happened");
        let sig = value["sig"].clone();
        lines[3] = serde_json::to_string(&value).unwrap();
        rewrite_from(&mut lines, 3, None);
        for line in lines[3..].iter_mut() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().insert("sig".into(), sig.clone());
            *line = serde_json::to_string(&v).unwrap();
        }
        write_lines(&path, &lines);
        let err = verify(&path).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::BadSignature {
                    line: 4,
                    seq: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("does not verify"), "{err}");

        // The signatures dropped from seq 3 on.
        let mut lines = original.clone();
        rewrite_from(&mut lines, 3, None);
        write_lines(&path, &lines);
        let err = verify(&path).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::BadSignature {
                    line: 4,
                    seq: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not signed"), "{err}");

        // The whole chain rewritten unsigned: it holds by itself, but not as the site's.
        let mut lines = original.clone();
        rewrite_from(&mut lines, 0, None);
        write_lines(&path, &lines);
        assert_eq!(verify(&path).unwrap().signed_by, None);
        let err = verify_signed_by(&path, &site.public()).unwrap_err();
        assert!(
            err.to_string().contains("is unsigned, not by the site key"),
            "{err}"
        );

        // ... or re-signed with the attacker's own key.
        let attacker = SecretKey::generate("attacker").unwrap();
        let mut lines = original;
        rewrite_from(&mut lines, 0, Some(&attacker));
        write_lines(&path, &lines);
        assert_eq!(
            verify(&path).unwrap().signed_by,
            Some(attacker.public().fingerprint())
        );
        let err = verify_signed_by(&path, &site.public()).unwrap_err();
        assert!(
            matches!(err, AuditError::WrongKey { found: Some(ref k), .. } if *k == attacker.public().fingerprint()),
            "{err}"
        );
    }

    #[test]
    fn signed_head_anchors_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let site = SecretKey::generate("site").unwrap();
        let path = write_signed_log(dir.path(), &site);
        let head = signed_head(&path).unwrap();
        assert_eq!(
            (head.entries, head.key.clone()),
            (6, site.public().fingerprint())
        );
        let head_file = dir.path().join("head.json");
        std::fs::write(&head_file, serde_json::to_vec(&head).unwrap()).unwrap();
        let (loaded, key) = SignedHead::load(&head_file).unwrap();
        assert_eq!((loaded.clone(), key), (head.clone(), site.public()));
        verify_against(&path, &loaded.head()).unwrap();

        // A head whose entry count or hash was changed no longer verifies.
        let mut edited = head.clone();
        edited.hash = "0".repeat(63) + "1";
        std::fs::write(&head_file, serde_json::to_vec(&edited).unwrap()).unwrap();
        let err = SignedHead::load(&head_file).unwrap_err().to_string();
        assert!(
            err.contains("head.json") && err.contains("the head was edited"),
            "{err}"
        );

        // An unsigned log has no signed head.
        let (plain, _) = write_log(dir.path());
        assert!(matches!(
            signed_head(&plain).unwrap_err(),
            AuditError::Unsigned { .. }
        ));
        // A signed log must start with run_start.
        let mut log = AuditLog::open(dir.path().join("x").join(AUDIT_FILE))
            .unwrap()
            .with_signer(Some(site.clone()))
            .unwrap();
        let err = log.append(events().pop().unwrap()).unwrap_err();
        assert!(err.to_string().contains("starts with a run_start"), "{err}");
    }
}
