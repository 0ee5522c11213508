//! Checkpoints: three files per checkpoint in `runs/<name>/checkpoints/`, each written
//! atomically (temp file, fsync, rename, fsync of the directory):
//!
//! - `<name>.safetensors`: the model file (EMA weights when the run keeps an EMA), which
//!   `percept eval`, `export` and `predict` read;
//! - `<name>.train.safetensors`: what only training needs: the raw weights and each parameter
//!   group's optimiser state, as burn records at full precision (u8 tensors `model` and
//!   `optimizer/<group>`);
//! - `<name>.state.json`: the [`RunState`] (step, schedule, sampler, counters, EMA updates) with
//!   the blake3 of both files. It is written last, so it is the commit record: a checkpoint
//!   whose state file is missing, unreadable or names hashes the files do not have is partial
//!   or corrupt, and resuming passes over it to the previous one with a warning.
//!
//! Retention: periodic checkpoints are `step-NNNNNN`, the `keep_last` newest kept; the best by
//! validation are `best-NNNNNN`, the `keep_best` best kept; `final` is never removed, nor is a
//! checkpoint the caller names (the last one known to be whole). Removing deletes the state
//! file first, so an interrupted removal leaves no half checkpoint that looks whole.
//!
//! Only regular files count: a temporary file of a killed write
//! ([`percept_data::atomic_file::is_temporary`]) or a directory is never taken for a checkpoint.
//!
//! Resuming: a checkpoint is usable when both hashes match and it was written with the run's
//! config, or with one that differs only in [`RESUME_MUTABLE_KEYS`] (settings that cannot alter
//! the weights); each such change is reported so it can be recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::record::{BurnRecord, FullPrecisionSettings, Record};
use burn::tensor::backend::Backend;
use percept_data::{AuditHead, SamplerState};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::schedule::ScheduleState;
use crate::TrainError;
use percept_data::atomic_file::{is_temporary, write_atomic};

/// Config keys whose change does not stop a run from resuming: they decide what is logged,
/// shown or how fast data is read, never a weight (every data RNG is seeded per sample, so the
/// number of loader threads does not change a batch). A change to any other key makes the
/// checkpoints unusable. Each allowed change is recorded in the audit log on resume.
pub const RESUME_MUTABLE_KEYS: &[&str] = &[
    "logging.every",
    "logging.line_seconds",
    "logging.progress",
    "data.workers",
    "data.prefetch_batches",
    "checkpoint.on_error",
];

/// A config key whose value differs between a checkpoint's config and the run's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Dotted key path, e.g. `logging.every`.
    pub key: String,
    /// The value in the checkpoint's config (TOML), `(unset)` when absent.
    pub old: String,
    /// The value in the run's config now.
    pub new: String,
}

/// The text a config is hashed by (and that a checkpoint records): the resolved TOML without
/// machine settings.
pub fn config_text(config: &RunConfig) -> String {
    RunConfig {
        kernel_cache: None,
        ..config.clone()
    }
    .to_toml()
}

/// Every leaf key whose value differs between `old` and `new` (as resolved TOML), sorted.
pub fn config_changes(old: &RunConfig, new: &RunConfig) -> Vec<ConfigChange> {
    fn leaves(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let flat = |c: &RunConfig| {
        let mut out = BTreeMap::new();
        let value = toml::Value::try_from(RunConfig {
            kernel_cache: None,
            ..c.clone()
        })
        .expect("a run config serialises");
        leaves("", &value, &mut out);
        out
    };
    let (old, new) = (flat(old), flat(new));
    let unset = || "(unset)".to_string();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| ConfigChange {
            key: k.clone(),
            old: old.get(k).cloned().unwrap_or_else(unset),
            new: new.get(k).cloned().unwrap_or_else(unset),
        })
        .collect()
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// Every `checkpoint.every` steps, or on Ctrl-C.
    Periodic,
    /// Among the best by validation.
    Best,
    /// After the last step.
    Final,
}

/// Counts of skipped (non-finite) steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonfiniteSteps {
    pub total: usize,
    pub in_a_row: usize,
}

/// The commit record of a checkpoint (`<name>.state.json`): with the two files it names, enough
/// to continue the run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Optimiser steps taken.
    pub step: usize,
    pub kind: CheckpointKind,
    /// File name of the model file within `checkpoints/`.
    pub checkpoint: String,
    pub checkpoint_hash: String,
    /// File name of the training state within `checkpoints/`.
    pub training_state: String,
    pub training_state_hash: String,
    pub config_hash: String,
    /// Sampler position after `step` steps; it pins every dataset's manifest hash. Data
    /// augmentation draws from RNGs seeded by each slot's seed, so this is also the state of
    /// every data RNG.
    pub sampler: SamplerState,
    pub schedule: ScheduleState,
    /// Updates folded into the EMA (absent without EMA).
    pub ema_updates: Option<usize>,
    pub nonfinite: NonfiniteSteps,
    pub skipped_samples: usize,
    /// `(dataset, index)` of samples skipped under the `skip` integrity policy: never drawn
    /// again.
    pub known_bad: Vec<(usize, usize)>,
    /// The validation score of a `best` checkpoint (higher is better).
    pub score: Option<f64>,
    /// The audit log's head right after this checkpoint's entry.
    pub audit_head: AuditHead,
    /// The config it was written with ([`config_text`], which `config_hash` is the hash of),
    /// so that a resume can tell which keys changed since (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl RunState {
    /// Reads a `*.state.json`.
    pub fn load(path: &Path) -> Result<RunState, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            message: format!("not a run state: {e}"),
        })
    }
}

/// `<dir>/<stem>.state.json`, the run state beside checkpoint `<dir>/<stem>.safetensors`.
pub fn state_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("state.json")
}

/// The three files of checkpoint `name` in `dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFiles {
    pub model: PathBuf,
    pub training: PathBuf,
    pub state: PathBuf,
}

impl CheckpointFiles {
    pub fn new(dir: &Path, name: &str) -> Self {
        CheckpointFiles {
            model: dir.join(format!("{name}.safetensors")),
            training: dir.join(format!("{name}.train.safetensors")),
            state: dir.join(format!("{name}.state.json")),
        }
    }
}

/// What only training needs from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// The raw (not averaged) weights as a burn record (with parameter ids).
    pub model: Vec<u8>,
    /// Optimiser state per parameter group.
    pub optimizer: BTreeMap<String, Vec<u8>>,
    /// The EMA weights as a burn record (the model file has them too, without parameter ids).
    pub ema: Option<Vec<u8>>,
}

const MODEL_TENSOR: &str = "model";
const EMA_TENSOR: &str = "ema";
const OPTIMIZER_PREFIX: &str = "optimizer/";
const FORMAT_KEY: &str = "percept.training_state";
const FORMAT: &str = "1";

impl TrainingState {
    /// A safetensors file of u8 tensors.
    pub fn to_bytes(&self) -> Vec<u8> {
        use safetensors::tensor::TensorView;
        let mut views = vec![(
            MODEL_TENSOR.to_string(),
            TensorView::new(safetensors::Dtype::U8, vec![self.model.len()], &self.model)
                .expect("u8 view"),
        )];
        if let Some(ema) = &self.ema {
            views.push((
                EMA_TENSOR.to_string(),
                TensorView::new(safetensors::Dtype::U8, vec![ema.len()], ema).expect("u8 view"),
            ));
        }
        for (group, bytes) in &self.optimizer {
            views.push((
                format!("{OPTIMIZER_PREFIX}{group}"),
                TensorView::new(safetensors::Dtype::U8, vec![bytes.len()], bytes).expect("u8 view"),
            ));
        }
        let meta = std::collections::HashMap::from([(FORMAT_KEY.to_string(), FORMAT.to_string())]);
        safetensors::serialize(views, Some(meta)).expect("u8 tensors serialise")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TrainingState, String> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a training state file ({e})"))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let format = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(FORMAT_KEY).cloned());
        if format.as_deref() != Some(FORMAT) {
            return Err(format!(
                "training state format {format:?}; this percept reads {FORMAT:?}"
            ));
        }
        let mut model = None;
        let mut ema = None;
        let mut optimizer = BTreeMap::new();
        for (name, view) in st.tensors() {
            if name == MODEL_TENSOR {
                model = Some(view.data().to_vec());
            } else if name == EMA_TENSOR {
                ema = Some(view.data().to_vec());
            } else if let Some(group) = name.strip_prefix(OPTIMIZER_PREFIX) {
                optimizer.insert(group.to_string(), view.data().to_vec());
            } else {
                return Err(format!("unexpected tensor {name:?}"));
            }
        }
        Ok(TrainingState {
            model: model.ok_or("no `model` tensor")?,
            optimizer,
            ema,
        })
    }
}

/// Decodes a burn record written by burn's `BinBytesRecorder` at full precision (raw weights,
/// EMA weights, optimiser state), or says why the bytes are not one. burn 0.21's recorder
/// unwraps its decoding error (`record/memory.rs`), so a malformed training-state file would
/// panic the run instead of being reported; this decodes the same format (bincode's standard
/// configuration over serde, the record's metadata then its item) and returns the error.
pub fn decode_record<B: Backend, R: Record<B>>(
    bytes: &[u8],
    device: &B::Device,
) -> Result<R, String> {
    // A limit, so a length prefix claiming exabytes is an error rather than an allocation
    // that aborts the process: the smallest of these at least the input's size (bincode's
    // limit is a type parameter).
    fn decode<I: serde::de::DeserializeOwned, const N: usize>(
        bytes: &[u8],
    ) -> Result<(I, usize), bincode::error::DecodeError> {
        let config = bincode::config::standard().with_limit::<N>();
        bincode::serde::decode_from_slice(bytes, config)
    }
    type Item<B, R> = BurnRecord<<R as Record<B>>::Item<FullPrecisionSettings>, B>;
    let decoded = match bytes.len() {
        n if n <= 1 << 24 => decode::<Item<B, R>, { 1 << 24 }>(bytes),
        n if n <= 1 << 28 => decode::<Item<B, R>, { 1 << 28 }>(bytes),
        n if n <= 1 << 32 => decode::<Item<B, R>, { 1 << 32 }>(bytes),
        _ => decode::<Item<B, R>, { 1 << 36 }>(bytes),
    };
    let (record, read) = decoded.map_err(|e| format!("not a burn record of this network ({e})"))?;
    if read != bytes.len() {
        return Err(format!(
            "not a burn record of this network ({read} of its {} bytes decode as one)",
            bytes.len()
        ));
    }
    Ok(R::from_item(record.item, device))
}

fn hash_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// A checkpoint found on disk, intact or not.
#[derive(Debug)]
pub struct FoundCheckpoint {
    pub name: String,
    pub files: CheckpointFiles,
    /// The state, or why it could not be read.
    pub state: Result<RunState, String>,
}

/// The checkpoints directory of a run.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    pub fn new(dir: PathBuf) -> Self {
        CheckpointDir { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self, name: &str) -> CheckpointFiles {
        CheckpointFiles::new(&self.dir, name)
    }

    /// Writes the training state, then the commit record (`state` names the training state's
    /// file and hash); the model file must already be written.
    pub fn commit(&self, name: &str, training: &[u8], state: &RunState) -> Result<(), TrainError> {
        self.write_training(name, training)?;
        self.write_state(name, state)
    }

    /// Writes checkpoint `name`'s training state.
    pub fn write_training(&self, name: &str, training: &[u8]) -> Result<(), TrainError> {
        Ok(write_atomic(&self.files(name).training, training)?)
    }

    /// Writes checkpoint `name`'s commit record, which must come last.
    pub fn write_state(&self, name: &str, state: &RunState) -> Result<(), TrainError> {
        let json = serde_json::to_string_pretty(state).expect("a run state serialises");
        Ok(write_atomic(&self.files(name).state, json.as_bytes())?)
    }

    /// Every checkpoint that has a state file or a model file, newest (highest step) first;
    /// ties: `final`, then `best-`, then `step-`.
    pub fn list(&self) -> Vec<FoundCheckpoint> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            // A directory (or anything else) in the way of a file name is not a checkpoint.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !is_temporary(n) && !n.starts_with('.'))
            .filter_map(|n| {
                n.strip_suffix(".state.json")
                    .or_else(|| n.strip_suffix(".train.safetensors"))
                    .or_else(|| n.strip_suffix(".safetensors"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names.dedup();
        let mut found: Vec<FoundCheckpoint> = names
            .into_iter()
            .map(|name| {
                let files = self.files(&name);
                let state = if files.state.exists() {
                    RunState::load(&files.state).map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "{} is missing (the checkpoint was not finished)",
                        files.state.display()
                    ))
                };
                FoundCheckpoint { name, files, state }
            })
            .collect();
        let rank = |f: &FoundCheckpoint| {
            let step = f
                .state
                .as_ref()
                .map(|s| s.step)
                .ok()
                .or_else(|| f.name.rsplit('-').next().and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            let kind = match f.name.split('-').next() {
                Some("final") => 2,
                Some("best") => 1,
                _ => 0,
            };
            (step, kind)
        };
        found.sort_by_key(|f| std::cmp::Reverse(rank(f)));
        found
    }

    /// Checks that a checkpoint's files are whole: both hashes match and the config is the
    /// run's.
    pub fn verify(&self, found: &FoundCheckpoint, config_hash: &str) -> Result<RunState, String> {
        let state = found.state.clone()?;
        if state.config_hash != config_hash {
            return Err(format!(
                "it was written with another config (hash {}, this run's is {config_hash})",
                state.config_hash
            ));
        }
        for (file, want) in [
            (&state.checkpoint, &state.checkpoint_hash),
            (&state.training_state, &state.training_state_hash),
        ] {
            let got = hash_file(&self.dir.join(file))?;
            if &got != want {
                return Err(format!(
                    "{} has blake3 {got}, its state file records {want} (torn or modified)",
                    self.dir.join(file).display()
                ));
            }
        }
        Ok(state)
    }

    /// The newest intact checkpoint, and why each newer one was passed over.
    pub fn latest_intact(&self, config_hash: &str) -> (Option<RunState>, Vec<String>) {
        let mut warnings = Vec::new();
        for found in self.list() {
            match self.verify(&found, config_hash) {
                Ok(state) => return (Some(state), warnings),
                Err(why) => warnings.push(self.unusable(&found, &why)),
            }
        }
        (None, warnings)
    }

    fn unusable(&self, found: &FoundCheckpoint, why: &str) -> String {
        format!(
            "checkpoint {} in {} is unusable: {why}",
            found.name,
            self.dir.display()
        )
    }

    /// Checks that a checkpoint's files are whole and that it was written with `config` or
    /// with one that differs only in [`RESUME_MUTABLE_KEYS`]; returns its state and those
    /// changes. A refusal names every other key that changed.
    pub fn verify_for(
        &self,
        found: &FoundCheckpoint,
        config: &RunConfig,
    ) -> Result<(RunState, Vec<ConfigChange>), String> {
        let state = found.state.clone()?;
        let hash = config.hash();
        if state.config_hash == hash {
            return Ok((self.verify(found, &hash)?, Vec::new()));
        }
        let Some(text) = &state.config else {
            return self.verify(found, &hash).map(|s| (s, Vec::new()));
        };
        if blake3::hash(text.as_bytes()).to_hex().as_str() != state.config_hash {
            return Err(format!(
                "{} records a config whose hash is not its config_hash {} (modified)",
                found.files.state.display(),
                state.config_hash
            ));
        }
        let old = RunConfig::parse(text, &found.files.state)
            .map_err(|e| format!("its recorded config cannot be read: {e}"))?;
        let changes = config_changes(&old, config);
        let refused: Vec<String> = changes
            .iter()
            .filter(|c| !RESUME_MUTABLE_KEYS.contains(&c.key.as_str()))
            .map(|c| format!("{} = {} (the checkpoint's: {})", c.key, c.new, c.old))
            .collect();
        if !refused.is_empty() {
            return Err(format!(
                "it was written with another config: {} changed since; only {} may change \
                 on resume",
                refused.join(", "),
                RESUME_MUTABLE_KEYS.join(", ")
            ));
        }
        // The files are checked against the hashes the state records; the config hash it
        // records is its own.
        let state = self.verify(found, &state.config_hash)?;
        Ok((state, changes))
    }

    /// The newest checkpoint usable by a run with `config` ([`verify_for`](Self::verify_for))
    /// with the config changes it would accept, and why each newer one was passed over.
    pub fn latest_usable(
        &self,
        config: &RunConfig,
    ) -> (Option<(RunState, Vec<ConfigChange>)>, Vec<String>) {
        let mut warnings = Vec::new();
        for found in self.list() {
            match self.verify_for(&found, config) {
                Ok(usable) => return (Some(usable), warnings),
                Err(why) => warnings.push(self.unusable(&found, &why)),
            }
        }
        (None, warnings)
    }

    /// Moves the files of the checkpoints named into `unusable/` (a directory [`list`]
    /// does not look into), so that a run resumed from an older checkpoint neither overwrites
    /// nor prunes them; returns the directory. A file already there is not replaced: the
    /// moved one gets a `.N` suffix.
    ///
    /// [`list`]: Self::list
    pub fn set_aside(&self, names: &[String]) -> Result<PathBuf, TrainError> {
        let aside = self.dir.join("unusable");
        let io = |path: &Path, source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        for name in names {
            let files = self.files(name);
            for path in [&files.model, &files.training, &files.state] {
                if !path.is_file() {
                    continue;
                }
                std::fs::create_dir_all(&aside).map_err(|e| io(&aside, e))?;
                let file_name = path.file_name().expect("a checkpoint file has a name");
                let mut target = aside.join(file_name);
                let mut n = 1;
                while target.exists() {
                    target = aside.join(format!("{}.{n}", file_name.to_string_lossy()));
                    n += 1;
                }
                std::fs::rename(path, &target).map_err(|e| io(path, e))?;
            }
        }
        Ok(aside)
    }

    /// Deletes checkpoint `name`: the state file first.
    pub fn remove(&self, name: &str) -> Result<(), TrainError> {
        let files = self.files(name);
        for path in [&files.state, &files.training, &files.model] {
            // Something else in the way of a file name (a directory) is not the checkpoint's.
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(TrainError::Io {
                        path: path.clone(),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Applies the retention policy; returns the names removed. Checkpoints that are not
    /// intact are left for a person to look at, and so are those in `keep` (the last
    /// checkpoint known to be whole, which must survive whatever else is found).
    pub fn retain(
        &self,
        keep_last: usize,
        keep_best: usize,
        keep: &[String],
    ) -> Result<Vec<String>, TrainError> {
        let mut periodic = Vec::new();
        let mut best = Vec::new();
        for f in self.list() {
            let Ok(state) = &f.state else { continue };
            match state.kind {
                CheckpointKind::Periodic => periodic.push((state.step, f.name.clone())),
                CheckpointKind::Best => best.push((
                    state.score.unwrap_or(f64::NEG_INFINITY),
                    state.step,
                    f.name.clone(),
                )),
                CheckpointKind::Final => {}
            }
        }
        let mut removed = Vec::new();
        if keep_last > 0 {
            periodic.sort_by_key(|p| std::cmp::Reverse(p.0));
            for (_, name) in periodic.into_iter().skip(keep_last) {
                if keep.contains(&name) {
                    continue;
                }
                self.remove(&name)?;
                removed.push(name);
            }
        }
        // Best first; among equal scores the earlier checkpoint stays.
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, name) in best.into_iter().skip(keep_best) {
            if keep.contains(&name) {
                continue;
            }
            self.remove(&name)?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// Whether a validation `score` would be kept among the `keep_best` best.
    pub fn is_among_best(&self, score: f64, keep_best: usize) -> bool {
        if keep_best == 0 || !score.is_finite() {
            return false;
        }
        let mut scores: Vec<f64> = self
            .list()
            .into_iter()
            .filter_map(|f| f.state.ok())
            .filter(|s| s.kind == CheckpointKind::Best)
            .filter_map(|s| s.score)
            .collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        scores.len() < keep_best || scores.get(keep_best - 1).is_some_and(|s| score > *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;
    use burn::record::{BinBytesRecorder, Recorder};
    use percept_model::{ModelSize, PerceptionNet, PerceptionNetConfig};

    type B = Flex;
    type NetRecord = <PerceptionNet<B> as Module<B>>::Record;

    #[test]
    fn records_decode_as_burns_recorder_wrote_them_and_malformed_bytes_are_errors() {
        let device = Default::default();
        let config = PerceptionNetConfig::new(ModelSize::Nano, 3);
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let record = |net: PerceptionNet<B>| recorder.record(net.into_record(), ()).unwrap();
        let bytes = record(config.init_seeded::<B>(7, &device));
        let decoded: NetRecord = decode_record::<B, _>(&bytes, &device).unwrap();
        let reloaded = config.init_seeded::<B>(8, &device).load_record(decoded);
        assert_eq!(record(reloaded), bytes);

        // Where burn's recorder panics (it unwraps the decoding error): an error instead.
        for cut in [0, 1, 9, 1000, bytes.len() / 2] {
            let Err(err) = decode_record::<B, NetRecord>(&bytes[..cut], &device) else {
                panic!("{cut} bytes decoded");
            };
            assert!(err.contains("not a burn record"), "{err}");
        }
        // A length prefix claiming exabytes (bincode's varint: 0xfd, then a u64) is refused
        // before anything is allocated.
        let mut claim = vec![0xfd];
        claim.extend_from_slice(&(5u64 << 60).to_le_bytes());
        claim.extend_from_slice(&[0u8; 32]);
        let Err(err) = decode_record::<B, NetRecord>(&claim, &device) else {
            panic!("an exabyte claim decoded");
        };
        assert!(err.contains("not a burn record"), "{err}");
        let mut garbage = bytes.clone();
        garbage[..64].fill(0xff);
        assert!(decode_record::<B, NetRecord>(&garbage, &device).is_err());
    }
}
