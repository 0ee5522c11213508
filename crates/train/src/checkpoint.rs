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
//! validation are `best-NNNNNN`, the `keep_best` best kept; `final` is never removed. Removing
//! deletes the state file first, so an interrupted removal leaves no half checkpoint that looks
//! whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use percept_data::{AuditHead, SamplerState};
use serde::{Deserialize, Serialize};

use crate::schedule::ScheduleState;
use crate::TrainError;
use percept_data::atomic_file::write_atomic;

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
        let files = self.files(name);
        write_atomic(&files.training, training)?;
        let json = serde_json::to_string_pretty(state).expect("a run state serialises");
        Ok(write_atomic(&files.state, json.as_bytes())?)
    }

    /// Every checkpoint that has a state file or a model file, newest (highest step) first;
    /// ties: `final`, then `best-`, then `step-`.
    pub fn list(&self) -> Vec<FoundCheckpoint> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
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
                Err(why) => warnings.push(format!(
                    "checkpoint {} in {} is unusable: {why}",
                    found.name,
                    self.dir.display()
                )),
            }
        }
        (None, warnings)
    }

    /// Deletes checkpoint `name`: the state file first.
    pub fn remove(&self, name: &str) -> Result<(), TrainError> {
        let files = self.files(name);
        for path in [&files.state, &files.training, &files.model] {
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
    /// intact are left for a person to look at.
    pub fn retain(&self, keep_last: usize, keep_best: usize) -> Result<Vec<String>, TrainError> {
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
                self.remove(&name)?;
                removed.push(name);
            }
        }
        // Best first; among equal scores the earlier checkpoint stays.
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, name) in best.into_iter().skip(keep_best) {
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
