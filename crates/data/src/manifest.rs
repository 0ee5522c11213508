//! Dataset manifests: `manifest.json` in a dataset directory names the dataset, the region its
//! data was collected in, the residency policy, the class list and every shard with its hash
//! and per-sample checksums.
//!
//! ```json
//! {
//!   "format": 2,
//!   "name": "synth-de",
//!   "region": "DE",
//!   "policy": { "processing_regions": ["DE"], "export": "weights-only" },
//!   "classes": ["car", "truck"],
//!   "shards": [
//!     { "file": "train-00000.shard", "split": "train", "samples": 2,
//!       "hash": "<blake3 hex of the file>", "sample_checksums": ["<hex>", "<hex>"] }
//!   ],
//!   "seal": "<blake3 hex of the content above>",
//!   "signature": { "key": "ed25519:<fingerprint>", "steward": "de-office", "signature": "<hex>" }
//! }
//! ```
//!
//! Unknown keys are refused (a typo is an error, not a silent default). The manifest's identity
//! in provenance is [`Manifest::hash`], the blake3 of its exact bytes on disk.
//!
//! `seal` is the blake3 of the manifest's content (every field but `seal`, serialised compactly
//! in field order), written by [`Manifest::save`] and checked by [`Manifest::load`]. A shard
//! list, hash, class list or policy edited by hand after the manifest was written no longer
//! matches its seal and is refused. The seal alone is not a signature: whoever recomputes it can
//! forge an edit. `signature` (optional, [`Manifest::sign`]) is a data steward's Ed25519
//! signature over the seal; the residency guard checks it against the site's trust store
//! ([`crate::keys`]), so an edit without the steward's key is refused. A run also pins each
//! manifest's [`hash`](Manifest::hash) in its audit log and checkpoint state and refuses to
//! resume over a changed one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;
use crate::error::{DataError, Result};

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 2;
/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The only export policy: trained weights may leave the processing regions, data may not.
pub const EXPORT_WEIGHTS_ONLY: &str = "weights-only";

/// Which part of a dataset a shard belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// Both splits, train first.
    pub const ALL: [Split; 2] = [Split::Train, Split::Val];

    /// `"train"` or `"val"`, as in manifests and shard file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            other => Err(DataError::UnknownSplit(other.to_string())),
        }
    }
}

/// Where a dataset may be processed and what may leave those regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Regions (ISO 3166-1 alpha-2) whose sites may process the data. Missing or empty in
    /// the file means `[region]`: only the region of collection.
    #[serde(default)]
    pub processing_regions: Vec<String>,
    /// What may leave the processing regions; only `"weights-only"` exists. Missing means
    /// `"weights-only"`, the most restrictive policy.
    #[serde(default = "default_export")]
    pub export: String,
}

fn default_export() -> String {
    EXPORT_WEIGHTS_ONLY.to_string()
}

impl Policy {
    /// The default policy of a region: processed only there, weights-only export.
    pub fn home_only(region: &str) -> Self {
        Policy {
            processing_regions: vec![region.to_string()],
            export: default_export(),
        }
    }
}

/// Which labels a dataset provides (`tasks` in the manifest). A task a dataset does not label
/// is neither trained nor evaluated on its frames: its masks are stored empty and mean
/// "unknown", not "background".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelledTasks {
    /// Boxes: every object of the dataset's classes is boxed (or lies in an ignore region).
    pub detection: bool,
    pub drivable: bool,
    pub lanes: bool,
}

impl LabelledTasks {
    /// Every task labelled: the default, and what a manifest without `tasks` means.
    pub const ALL: LabelledTasks = LabelledTasks {
        detection: true,
        drivable: true,
        lanes: true,
    };

    /// Boxes only: no drivable-area or lane labels (KITTI, for one).
    pub const DETECTION_ONLY: LabelledTasks = LabelledTasks {
        detection: true,
        drivable: false,
        lanes: false,
    };

    fn is_all(&self) -> bool {
        *self == Self::ALL
    }

    fn all() -> Self {
        Self::ALL
    }

    /// The labelled tasks' names, e.g. `detection, drivable`.
    pub fn names(&self) -> String {
        let names: Vec<&str> = [
            (self.detection, "detection"),
            (self.drivable, "drivable"),
            (self.lanes, "lanes"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        names.join(", ")
    }
}

/// How some of a dataset's shards were made by `percept import`, kept in the manifest (under
/// its seal) so a dataset's lineage travels with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// The importer, e.g. `percept-import 0.1.0 bdd100k`.
    pub tool: String,
    /// The splits this import wrote.
    pub splits: Vec<Split>,
    /// blake3 of the class map's TOML.
    pub class_map: String,
    /// blake3 over every source record's labels as read (see `percept_import::pipeline`).
    pub labels: String,
    /// Source records read, frames imported, records skipped.
    pub records: usize,
    pub imported: usize,
    pub skipped: usize,
}

/// One shard of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name relative to the dataset directory (no directories, no `..`).
    pub file: String,
    pub split: Split,
    /// Number of records in the shard.
    pub samples: usize,
    /// blake3 of the whole shard file, lowercase hex.
    pub hash: String,
    /// blake3 of each record, lowercase hex, in record order (`samples` entries).
    pub sample_checksums: Vec<String>,
}

/// A data steward's Ed25519 signature over a manifest's `seal` (see [`crate::keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// Fingerprint of the signing key (`ed25519:…`), looked up in a site's trust store.
    pub key: String,
    /// The key's name when it signed (for people; the trust store's name is authoritative).
    pub steward: String,
    /// 128 hex digits: the signature of `seal` in [`SignatureDomain::ManifestSeal`].
    pub signature: String,
}

/// A dataset manifest (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; always [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Dataset name (appears in guard decisions and audit events).
    pub name: String,
    /// Region of collection, ISO 3166-1 alpha-2 (two uppercase ASCII letters).
    pub region: String,
    pub policy: Policy,
    /// Class names; a box's `class` indexes this list.
    pub classes: Vec<String>,
    /// Which tasks the dataset labels. Omitted from the file when all are (so manifests
    /// written before the key existed keep their seal).
    #[serde(
        default = "LabelledTasks::all",
        skip_serializing_if = "LabelledTasks::is_all"
    )]
    pub tasks: LabelledTasks,
    /// How the shards were imported, one entry per `percept import`; absent for data made
    /// otherwise (synthetic scenes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<ImportRecord>,
    pub shards: Vec<ShardEntry>,
    /// blake3 hex of the content (see the module docs); set by [`save`](Self::save).
    #[serde(default)]
    pub seal: String,
    /// A data steward's signature over `seal` ([`sign`](Self::sign)); absent when unsigned.
    /// Not part of the seal, so signing does not change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
    /// blake3 hex of the bytes last loaded from or saved to disk.
    #[serde(skip)]
    disk_hash: Option<String>,
}

impl PartialEq for Manifest {
    /// Compares content; where the manifest was loaded from does not matter.
    fn eq(&self, other: &Self) -> bool {
        self.format == other.format
            && self.name == other.name
            && self.region == other.region
            && self.policy == other.policy
            && self.classes == other.classes
            && self.tasks == other.tasks
            && self.imports == other.imports
            && self.shards == other.shards
    }
}

/// Whether `s` has the shape of an ISO 3166-1 alpha-2 code: two uppercase ASCII letters.
pub fn is_region_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// A new manifest without shards, with the home-only policy of `region`.
    pub fn new(name: &str, region: &str, classes: Vec<String>) -> Result<Self> {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            region: region.to_string(),
            policy: Policy::home_only(region),
            classes,
            tasks: LabelledTasks::ALL,
            imports: Vec::new(),
            shards: Vec::new(),
            seal: String::new(),
            signature: None,
            disk_hash: None,
        };
        m.validate().map_err(|reason| DataError::BadManifest {
            path: PathBuf::from("<new manifest>"),
            reason,
        })?;
        Ok(m)
    }

    /// Loads and validates `manifest.json` (or any manifest file). Errors name the file and the
    /// key at fault.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let bad = |reason: String| DataError::BadManifest {
            path: path.to_path_buf(),
            reason,
        };
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        let mut m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            if key == "." {
                bad(e.inner().to_string())
            } else {
                bad(format!("at `{key}`: {}", e.inner()))
            }
        })?;
        if m.policy.processing_regions.is_empty() {
            m.policy.processing_regions = vec![m.region.clone()];
        }
        m.validate().map_err(bad)?;
        let content = m.content_seal();
        if m.seal != content {
            return Err(bad(if m.seal.is_empty() {
                "`seal` is missing; manifests are written with a seal over their content. \
                 Re-create the dataset with the tool that wrote it"
                    .into()
            } else {
                format!(
                    "the content hashes to {content} but `seal` says {}: the manifest was \
                     edited after it was written (shard lists, hashes, classes and policy \
                     cannot be edited by hand). Restore the original or re-create the dataset",
                    m.seal
                )
            }));
        }
        m.disk_hash = Some(blake3::hash(&bytes).to_hex().to_string());
        Ok(m)
    }

    /// Loads `<dir>/manifest.json`.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load(dir.as_ref().join(MANIFEST_FILE))
    }

    /// Validates and writes the manifest atomically ([`write_atomic`]: temp file, fsync,
    /// rename, directory fsync). Afterwards [`hash`](Self::hash) is the hash of the written
    /// bytes.
    pub fn save(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bad = |reason: String| DataError::BadManifest {
            path: path.to_path_buf(),
            reason,
        };
        self.validate().map_err(bad)?;
        self.seal = self.content_seal();
        let bytes = self.to_json_bytes().map_err(bad)?;
        if path.file_name().is_none() {
            return Err(bad("the path has no file name".into()));
        }
        write_atomic(path, &bytes)?;
        self.disk_hash = Some(blake3::hash(&bytes).to_hex().to_string());
        Ok(())
    }

    /// Identity of the manifest for provenance: blake3 hex of the exact bytes it was last
    /// loaded from or saved as. A manifest never loaded or saved hashes the bytes
    /// [`save`](Self::save) would write.
    ///
    /// Editing fields after a load does not change this until the next save.
    pub fn hash(&self) -> String {
        match &self.disk_hash {
            Some(h) => h.clone(),
            None => blake3::hash(&self.to_json_bytes().unwrap_or_default())
                .to_hex()
                .to_string(),
        }
    }

    /// blake3 hex of every field but `seal`, serialised compactly in field order (independent
    /// of how the file is formatted).
    pub fn content_seal(&self) -> String {
        let unsealed = Manifest {
            seal: String::new(),
            signature: None,
            disk_hash: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&unsealed).expect("a manifest always serialises");
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// The bytes [`save`](Self::save) writes: pretty JSON, sealed, and a final newline.
    pub fn to_json_bytes(&self) -> std::result::Result<Vec<u8>, String> {
        let sealed = Manifest {
            seal: self.content_seal(),
            ..self.clone()
        };
        let mut bytes =
            serde_json::to_vec_pretty(&sealed).map_err(|e| format!("cannot serialise: {e}"))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Shards of one split, in manifest order.
    pub fn shards_of(&self, split: Split) -> impl Iterator<Item = &ShardEntry> {
        self.shards.iter().filter(move |s| s.split == split)
    }

    /// Number of samples in one split.
    pub fn samples_of(&self, split: Split) -> usize {
        self.shards_of(split).map(|s| s.samples).sum()
    }

    /// Checks every invariant; the error names the key at fault and what would be valid.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "`format` is {}; this build reads format {MANIFEST_FORMAT}",
                self.format
            ));
        }
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        if !is_region_code(&self.region) {
            return Err(format!(
                "`region` is `{}`; expected an ISO 3166-1 alpha-2 code: two uppercase letters \
                 such as `DE`",
                self.region
            ));
        }
        if self.policy.processing_regions.is_empty() {
            return Err("`policy.processing_regions` is empty".into());
        }
        for (i, r) in self.policy.processing_regions.iter().enumerate() {
            if !is_region_code(r) {
                return Err(format!(
                    "`policy.processing_regions[{i}]` is `{r}`; expected an ISO 3166-1 alpha-2 \
                     code: two uppercase letters such as `DE`"
                ));
            }
        }
        if self.policy.export != EXPORT_WEIGHTS_ONLY {
            return Err(format!(
                "`policy.export` is `{}`; the only export policy is `{EXPORT_WEIGHTS_ONLY}`",
                self.policy.export
            ));
        }
        if self.classes.is_empty() {
            return Err("`classes` is empty".into());
        }
        if !(self.tasks.detection || self.tasks.drivable || self.tasks.lanes) {
            return Err(
                "`tasks` labels nothing; at least one of detection, drivable, lanes must be true"
                    .into(),
            );
        }
        if self.classes.len() > u16::MAX as usize + 1 {
            return Err(format!(
                "`classes` has {} entries; box class indices are u16 (at most 65536 classes)",
                self.classes.len()
            ));
        }
        for (i, c) in self.classes.iter().enumerate() {
            if c.trim().is_empty() {
                return Err(format!("`classes[{i}]` is empty"));
            }
            if self.classes[..i].contains(c) {
                return Err(format!("`classes[{i}]` `{c}` appears twice"));
            }
        }
        for (i, s) in self.shards.iter().enumerate() {
            let plain = !s.file.is_empty()
                && s.file != "."
                && s.file != ".."
                && !s.file.contains(['/', '\\', '\0']);
            if !plain {
                return Err(format!(
                    "`shards[{i}].file` is `{}`; expected a plain file name inside the dataset \
                     directory",
                    s.file
                ));
            }
            if self.shards[..i].iter().any(|o| o.file == s.file) {
                return Err(format!("`shards[{i}].file` `{}` appears twice", s.file));
            }
            if !is_hex64(&s.hash) {
                return Err(format!(
                    "`shards[{i}].hash` is not a blake3 hash (64 lowercase hex digits)"
                ));
            }
            if s.sample_checksums.len() != s.samples {
                return Err(format!(
                    "`shards[{i}].samples` is {} but `sample_checksums` has {} entries",
                    s.samples,
                    s.sample_checksums.len()
                ));
            }
            if let Some(k) = s.sample_checksums.iter().position(|c| !is_hex64(c)) {
                return Err(format!(
                    "`shards[{i}].sample_checksums[{k}]` is not a blake3 hash (64 lowercase \
                     hex digits)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Manifest {
        let mut m = Manifest::new("test-set", "DE", vec!["car".into(), "bus".into()]).unwrap();
        m.shards.push(ShardEntry {
            file: "train-00000.shard".into(),
            split: Split::Train,
            samples: 2,
            hash: "ab".repeat(32),
            sample_checksums: vec!["01".repeat(32), "02".repeat(32)],
        });
        m.shards.push(ShardEntry {
            file: "val-00000.shard".into(),
            split: Split::Val,
            samples: 1,
            hash: "cd".repeat(32),
            sample_checksums: vec!["03".repeat(32)],
        });
        m
    }

    #[test]
    fn save_load_round_trip_and_hash_of_disk_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let mut m = example();
        let unsaved_hash = m.hash();
        m.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let disk_hash = blake3::hash(&bytes).to_hex().to_string();
        assert_eq!(m.hash(), disk_hash);
        assert_eq!(unsaved_hash, disk_hash);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| crate::atomic_file::is_temporary(n)),
            "temporary file left: {names:?}"
        );

        let loaded = Manifest::load(&path).unwrap();
        assert_eq!(loaded, m);
        assert_eq!(loaded.hash(), disk_hash);
        assert_eq!(loaded.samples_of(Split::Train), 2);
        assert_eq!(loaded.samples_of(Split::Val), 1);
        assert_eq!(loaded.policy.processing_regions, vec!["DE".to_string()]);

        // Same content, different bytes on disk (compact JSON): a different identity.
        let compact = serde_json::to_vec(&m).unwrap();
        std::fs::write(&path, &compact).unwrap();
        let reloaded = Manifest::load(&path).unwrap();
        assert_eq!(reloaded, m);
        assert_eq!(reloaded.hash(), blake3::hash(&compact).to_hex().to_string());
        assert_ne!(reloaded.hash(), disk_hash);
    }

    fn load_str(json: &str) -> Result<Manifest> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, json).unwrap();
        Manifest::load(&path)
    }

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value =
            serde_json::from_slice(&example().to_json_bytes().unwrap()).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key_and_file() {
        let err = load_str(&with(|v| v["colour"] = 3.into())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `colour`"), "{msg}");
        assert!(msg.contains("manifest.json"), "{msg}");

        let err = load_str(&with(|v| v["policy"]["exprt"] = "x".into())).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("at `policy.exprt`: unknown field `exprt`"),
            "{msg}"
        );

        let err = load_str(&with(|v| v["shards"][1]["splt"] = "x".into())).unwrap_err();
        assert!(err.to_string().contains("shards[1]"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused_naming_the_key() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| v["region"] = "de".into()), "`region` is `de`"),
            (
                Box::new(|v| v["region"] = "DEU".into()),
                "`region` is `DEU`",
            ),
            (Box::new(|v| v["format"] = 1.into()), "`format` is 1"),
            (Box::new(|v| v["format"] = "1".into()), "at `format`"),
            (
                Box::new(|v| v["policy"]["export"] = "everything".into()),
                "`policy.export`",
            ),
            (
                Box::new(|v| v["policy"]["processing_regions"] = vec!["CN", "x1"].into()),
                "`policy.processing_regions[1]`",
            ),
            (
                Box::new(|v| v["shards"][0]["split"] = "test".into()),
                "shards[0].split",
            ),
            (
                Box::new(|v| v["shards"][0]["file"] = "../etc/passwd".into()),
                "`shards[0].file`",
            ),
            (
                Box::new(|v| v["shards"][1]["samples"] = 5.into()),
                "`shards[1].samples` is 5",
            ),
            (
                Box::new(|v| v["classes"] = vec!["car", "car"].into()),
                "`classes[1]`",
            ),
            (
                Box::new(|v| v.as_object_mut().unwrap().remove("name").map(drop).unwrap()),
                "missing field `name`",
            ),
        ];
        for (edit, want) in cases {
            let err = load_str(&with(edit)).unwrap_err();
            assert!(
                matches!(err, DataError::BadManifest { .. }) && err.to_string().contains(want),
                "expected `{want}` in: {err}"
            );
        }
    }

    #[test]
    fn edits_after_writing_break_the_seal() {
        // Untouched, the sealed bytes load.
        let m = load_str(&with(|_| {})).unwrap();
        assert_eq!(m, example());
        assert_eq!(m.seal, example().content_seal());
        // Formatting does not matter, content does.
        let compact = serde_json::to_string(&m).unwrap();
        assert_eq!(load_str(&compact).unwrap(), m);

        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let edits: Vec<Edit> = vec![
            Box::new(|v| v["shards"][0]["hash"] = "ef".repeat(32).into()),
            Box::new(|v| {
                v["shards"].as_array_mut().unwrap().remove(1);
            }),
            Box::new(|v| v["policy"]["processing_regions"] = vec!["DE", "CN"].into()),
            Box::new(|v| v["shards"][0]["sample_checksums"][1] = "09".repeat(32).into()),
        ];
        for edit in edits {
            let err = load_str(&with(edit)).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, DataError::BadManifest { .. })
                    && msg.contains("edited after it was written")
                    && msg.contains("manifest.json"),
                "{msg}"
            );
        }
        let err = load_str(&with(|v| {
            v.as_object_mut().unwrap().remove("seal");
        }))
        .unwrap_err();
        assert!(err.to_string().contains("`seal` is missing"), "{err}");
    }

    #[test]
    fn policy_defaults_to_home_region_and_weights_only() {
        let m = load_str(&with(|v| v["policy"] = serde_json::json!({}))).unwrap();
        assert_eq!(m.policy, Policy::home_only("DE"));
    }

    #[test]
    fn split_parses_and_displays() {
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
        assert_eq!(Split::Val.to_string(), "val");
        let err = "test".parse::<Split>().unwrap_err();
        assert!(err.to_string().contains("unknown split `test`"));
    }
}
