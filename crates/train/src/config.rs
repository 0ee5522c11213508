//! Run configs: one TOML file drives a run. Unknown keys and wrong types are errors that name
//! the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use percept_data::{AugmentConfig, IntegrityPolicy};
use percept_model::{check_input_size, DecodeOptions, LossWeights, ModelSize, Tasks};
use serde::{Deserialize, Serialize};

use crate::eval::MetricResolution;
use crate::TrainError;

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: the run directory is `<runs_dir>/<name>/`.
    pub name: String,
    /// Parent of run directories.
    #[serde(default = "default_runs_dir")]
    pub runs_dir: PathBuf,
    pub site: SiteConfig,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
    /// Training-time augmentation (evaluation never augments).
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub loss: LossWeights,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// `[eval]`: the exported model's operating point (post-processing) and how evaluation
/// measures. Every key has a default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Minimum class score of a kept detection (the operating point).
    pub score_threshold: f32,
    /// Class-aware NMS IoU threshold.
    pub iou_threshold: f32,
    /// Candidates per image entering NMS, best first.
    pub pre_nms_top_k: usize,
    /// Detections per image after NMS.
    pub max_detections: usize,
    /// Where metrics are computed: `original` (the image's own resolution, predictions mapped
    /// out of the letterbox) or `network` (letterboxed input and labels).
    pub resolution: MetricResolution,
}

impl Default for EvalConfig {
    fn default() -> Self {
        let d = DecodeOptions::default();
        EvalConfig {
            score_threshold: d.score_threshold,
            iou_threshold: d.iou_threshold,
            pre_nms_top_k: d.pre_nms_top_k,
            max_detections: d.max_detections,
            resolution: MetricResolution::default(),
        }
    }
}

impl EvalConfig {
    /// The post-processing settings.
    pub fn decode(&self) -> DecodeOptions {
        DecodeOptions {
            score_threshold: self.score_threshold,
            iou_threshold: self.iou_threshold,
            pre_nms_top_k: self.pre_nms_top_k,
            max_detections: self.max_detections,
        }
    }
}

fn default_runs_dir() -> PathBuf {
    PathBuf::from("runs")
}

/// Where the run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// ISO 3166-1 alpha-2 code of the site's country.
    pub region: String,
    /// Human-readable site name (recorded in provenance).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSize {
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub size: ModelSize,
    pub input: InputSize,
    #[serde(default)]
    pub tasks: Tasks,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset directories (each with a `manifest.json`), relative to the working directory.
    pub datasets: Vec<PathBuf>,
    /// Share of each region (by the manifests' `region`) in every epoch, e.g.
    /// `{ CN = 0.7, DE = 0.3 }`; normalised. Empty: every sample equally likely.
    #[serde(default)]
    pub region_weights: BTreeMap<String, f64>,
    /// What a sample or shard that fails verification or decoding does: `fail` stops the run,
    /// `skip` skips it, counts it and records it in the audit log.
    #[serde(default)]
    pub integrity: IntegrityPolicy,
    /// Batches decoded ahead of the training step.
    #[serde(default = "default_prefetch_batches")]
    pub prefetch_batches: usize,
    /// Decode/augment threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
}

fn default_prefetch_batches() -> usize {
    4
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    pub batch_size: usize,
    /// Seeds weight init and data order.
    pub seed: u64,
    /// A metrics line (and, off a terminal, a log line) every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Write a checkpoint (weights + run state) every this many steps; 0: only at the end.
    #[serde(default)]
    pub checkpoint_every: usize,
}

fn default_log_every() -> usize {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate (AdamW).
    pub lr: f64,
    pub weight_decay: f32,
    /// Linear warm-up steps from `lr / 100` to `lr`.
    pub warmup_steps: usize,
    /// Cosine decay ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Clip the gradient norm of each parameter to this (none when absent).
    #[serde(default)]
    pub grad_clip: Option<f32>,
}

impl RunConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<RunConfig, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<RunConfig, TrainError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| TrainError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks values the types cannot: every message names the key and what would be valid.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            problems.push(format!(
                "name = {:?}: give a non-empty name without '/' or '\\' that does not start \
                 with '.'",
                self.name
            ));
        }
        let region = &self.site.region;
        if region.len() != 2 || !region.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(format!(
                "site.region = {region:?}: give an ISO 3166-1 alpha-2 code such as \"DE\" or \"CN\""
            ));
        }
        if let Err(e) = check_input_size(self.model.input.height, self.model.input.width) {
            problems.push(format!("model.input: {e}"));
        }
        if self.data.datasets.is_empty() {
            problems.push("data.datasets is empty: list at least one dataset directory".into());
        }
        for (region, w) in &self.data.region_weights {
            if !w.is_finite() || *w < 0.0 {
                problems.push(format!(
                    "data.region_weights.{region} = {w}: give a finite weight >= 0"
                ));
            }
        }
        if self.data.prefetch_batches == 0 {
            problems.push("data.prefetch_batches = 0: give at least 1".into());
        }
        if let Err(e) = self.augment.validate() {
            problems.push(e);
        }
        if self.train.steps == 0 {
            problems.push("train.steps = 0: give at least 1".into());
        }
        if self.train.batch_size == 0 {
            problems.push("train.batch_size = 0: give at least 1".into());
        }
        if self.train.log_every == 0 {
            problems.push("train.log_every = 0: give at least 1".into());
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr <= 1.0) {
            problems.push(format!("optimizer.lr = {}: give a value in (0, 1]", o.lr));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            problems.push(format!(
                "optimizer.min_lr_ratio = {}: give a value in [0, 1]",
                o.min_lr_ratio
            ));
        }
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            problems.push(format!(
                "optimizer.weight_decay = {}: give a value >= 0",
                o.weight_decay
            ));
        }
        if o.grad_clip.is_some_and(|c| c.is_nan() || c <= 0.0) {
            problems.push("optimizer.grad_clip must be > 0 (or left out)".into());
        }
        let t = &self.model.tasks;
        if !(t.detection || t.drivable || t.lanes) {
            problems.push("model.tasks: every task is off; turn on at least one".into());
        }
        let e = &self.eval;
        if !(0.0..=1.0).contains(&e.score_threshold) || !(0.0..=1.0).contains(&e.iou_threshold) {
            problems.push("eval.score_threshold and eval.iou_threshold must be in [0, 1]".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.runs_dir.join(&self.name)
    }

    /// The config as TOML, as resolved (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a run config serialises")
    }

    /// blake3 of the resolved TOML: identifies the config in provenance.
    pub fn hash(&self) -> String {
        blake3::hash(self.to_toml().as_bytes()).to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
[site]
region = "DE"
name = "lab"
[model]
size = "nano"
input = { width = 64, height = 64 }
[data]
datasets = ["d"]
[train]
steps = 3
batch_size = 2
seed = 1
[optimizer]
lr = 0.01
weight_decay = 0.0
warmup_steps = 1
min_lr_ratio = 0.1
"#;

    fn err(text: &str) -> String {
        RunConfig::parse(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = RunConfig::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.train.log_every, 10);
        assert_eq!(c.loss, LossWeights::default());
        assert_eq!(c.run_dir(), PathBuf::from("runs/t"));
        // The resolved TOML round-trips.
        assert_eq!(RunConfig::parse(&c.to_toml(), Path::new("y")).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&GOOD.replace("seed = 1", "seed = 1\nsteps_per_epoch = 4"));
        assert!(e.contains("x.toml"), "{e}");
        assert!(e.contains("steps_per_epoch"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(&GOOD.replace("batch_size = 2", "batch_size = \"two\""));
        assert!(e.contains("batch_size"), "{e}");
        assert!(e.contains("x.toml"), "{e}");
    }

    #[test]
    fn bad_values_all_reported() {
        let e = err(&GOOD
            .replace("width = 64", "width = 65")
            .replace("region = \"DE\"", "region = \"Germany\""));
        assert!(e.contains("model.input"), "{e}");
        assert!(e.contains("site.region"), "{e}");
        let e = err(&GOOD.replace("size = \"nano\"", "size = \"huge\""));
        assert!(e.contains("nano") && e.contains("medium"), "{e}");
    }
}
