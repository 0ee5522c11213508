//! Run configs: one TOML file drives a run. This module holds the schema and the checks of
//! values; [`crate::config_source`] reads files (`extends` chains, `--set` overrides) and
//! reports every unknown key, wrong type and invalid value at once, each with its key path and
//! the file (or `--set`) it came from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use percept_data::{AugmentConfig, IntegrityPolicy};
use percept_model::{
    check_input_size, ConvKernels, DecodeOptions, LossWeights, ModelSize, Precision, Tasks,
};
use serde::{Deserialize, Serialize};

pub use percept_eval::model_file::InputSize;
use percept_eval::MetricResolution;

/// A whole run. Sections: `[site]`, `[model]`, `[data]` (with `[data.augment]`), `[train]`,
/// `[optimizer]`, `[schedule]`, `[checkpoint]`, `[validation]`, `[logging]`, `[loss]`, `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: the run directory is `<runs_dir>/<name>/`.
    pub name: String,
    /// Parent of run directories.
    #[serde(default = "default_runs_dir")]
    pub runs_dir: PathBuf,
    /// Folder for compiled GPU kernels and autotune results (`percept warmup` fills it; see
    /// `gpu_runtime`). `PERCEPT_KERNEL_CACHE` overrides it; left out, a per-user folder
    /// (`~/.cache/percept/kernels`). A machine setting: not part of the config's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_cache: Option<PathBuf>,
    pub site: SiteConfig,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub loss: LossWeights,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `[finetune]`: this run adapts a base model to one country (`percept finetune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneConfig>,
}

/// `[finetune]`: a country fine-tune of a base model (see `percept_train::finetune`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The base model (a checkpoint or an export); `percept finetune --base` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
    /// The country profile: a built-in code (`JP`) or a profile file (TOML, see
    /// `configs/countries/`). Its class list must be the datasets' class list.
    pub profile: String,
    /// Parts whose weights stay at the base's: "none", "backbone" or "backbone+neck".
    #[serde(default)]
    pub freeze: FreezePolicy,
    /// Batch norm in the frozen parts normalises with the base's running statistics (and
    /// keeps them) instead of each batch's. Ignored when nothing is frozen.
    #[serde(default = "yes")]
    pub freeze_norm_statistics: bool,
    /// Distillation from the frozen base on the same batches; left out: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<DistillationConfig>,
    /// Weight `alpha` of the L2-SP pull towards the base weights, `alpha / 2 * |w - w0|^2`
    /// summed over every parameter the base shares (Li et al., ICML 2018); left out: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2sp: Option<f32>,
}

fn yes() -> bool {
    true
}

/// Which parts of the network a fine-tune freezes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FreezePolicy {
    #[default]
    #[serde(rename = "none")]
    Nothing,
    #[serde(rename = "backbone")]
    Backbone,
    #[serde(rename = "backbone+neck")]
    BackboneAndNeck,
}

impl FreezePolicy {
    /// The module prefixes it freezes.
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            FreezePolicy::Nothing => &[],
            FreezePolicy::Backbone => &["backbone"],
            FreezePolicy::BackboneAndNeck => &["backbone", "neck"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FreezePolicy::Nothing => "none",
            FreezePolicy::Backbone => "backbone",
            FreezePolicy::BackboneAndNeck => "backbone+neck",
        }
    }
}

/// `[finetune.distillation]`: the base model's outputs on each batch as soft targets for the
/// classes and tasks both share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillationConfig {
    /// Weight of the distillation term in the total loss. 0 computes and logs it without
    /// letting it act (a forgetting monitor); training is then bit for bit a plain fine-tune.
    pub weight: f32,
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
    /// Trust store (TOML, see `percept_data::keys`): the data stewards whose manifest
    /// signatures the site accepts, per region. Unset: signatures are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_store: Option<PathBuf>,
    /// Whether datasets with unsigned manifests may be processed (each such decision is in the
    /// audit log). Default: `true` without a trust store, `false` with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unsigned: Option<bool>,
    /// The site's secret key (`percept keys new`): signs every entry of the run's audit log.
    /// Only the path is recorded; the key never enters the run directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
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
    /// Training-time augmentation (evaluation never augments).
    #[serde(default)]
    pub augment: AugmentConfig,
}

fn default_prefetch_batches() -> usize {
    4
}

/// `[train]`: how long, on what, and how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per forward pass (a micro-batch).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimiser step: the effective batch
    /// is `batch_size * grad_accumulation`.
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    /// Seeds weight init and data order (every augmentation draw derives from it).
    pub seed: u64,
    /// Peak learning rate (reached after `schedule.warmup_steps`).
    pub lr: f64,
    /// Start from these weights (a model file: a checkpoint or an export) instead of a random
    /// init, e.g. a global model fine-tuned for one country. Tensors whose name and shape match
    /// are loaded; the others (a detection head for another class list) keep their random
    /// init. The file's provenance carries into the new run's (its hash as `base_checkpoint`,
    /// its data regions among `regions`).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Exponential moving average of the weights, used for validation and written to the
    /// checkpoints' model files. Left out: no EMA.
    #[serde(default)]
    pub ema: Option<EmaConfig>,
    /// Steps in a row with a non-finite loss or gradient (each is skipped) after which the run
    /// stops; the last checkpoint stays as it was.
    #[serde(default = "default_max_nonfinite_steps")]
    pub max_nonfinite_steps: usize,
    /// Arithmetic of the convolutions: "f32", or "bf16": bfloat16 convolutions (tensor cores)
    /// with f32 weights, batch norm, losses and optimiser (see `percept_model::precision`).
    /// bf16 is for CUDA devices: wgpu has no bfloat16, and on the CPU it is slower than f32.
    #[serde(default)]
    pub precision: Precision,
    /// Kernels of the convolutions (training step and validation): "auto" (percept's CPU
    /// kernels on the CPU, im2col + matrix product on cuda, burn's on wgpu), "burn" (burn's
    /// own, autotuned per shape on cuda and wgpu) or "im2col" (see
    /// `percept_model::conv_kernels`). The weights and
    /// model files are the same whichever runs them.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub conv: ConvKernels,
}

/// Left out of the resolved TOML at its default, so that configs written before the key
/// existed keep their hash (and their runs can be resumed).
fn is_auto(kernels: &ConvKernels) -> bool {
    *kernels == ConvKernels::Auto
}

fn one() -> usize {
    1
}

fn default_max_nonfinite_steps() -> usize {
    5
}

/// `[train.ema]`: `ema = decay * (1 - exp(-updates / warmup_steps))`, so early, still-random
/// weights are forgotten quickly (YOLOv5's ramp).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    pub decay: f64,
    #[serde(default = "default_ema_warmup")]
    pub warmup_steps: usize,
}

fn default_ema_warmup() -> usize {
    2000
}

/// Optimiser algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (burn's `AdamW`).
    #[default]
    AdamW,
    /// SGD with momentum and L2 weight decay (burn's `Sgd`).
    Sgd,
}

/// `[optimizer]`: the update rule and its parameter groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f32,
    /// AdamW's `beta_1`, `beta_2`.
    pub betas: [f32; 2],
    /// AdamW's epsilon.
    pub epsilon: f32,
    /// SGD's momentum (0: plain SGD).
    pub momentum: f64,
    /// SGD's Nesterov momentum.
    pub nesterov: bool,
    /// Clip the global gradient norm (all parameters together) to this; left out: no clipping.
    pub grad_clip: Option<f32>,
    /// Apply weight decay to 1-D parameters too (norm scales and shifts, biases); off by
    /// default, as in YOLO and most vision recipes.
    pub decay_norms_and_biases: bool,
    /// Learning-rate factor per module path prefix, e.g. `{ backbone = 0.1 }`; the longest
    /// matching prefix wins, everything else gets 1.
    pub lr_multipliers: BTreeMap<String, f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            weight_decay: 0.0005,
            betas: [0.9, 0.999],
            epsilon: 1e-8,
            momentum: 0.937,
            nesterov: true,
            grad_clip: None,
            decay_norms_and_biases: false,
            lr_multipliers: BTreeMap::new(),
        }
    }
}

/// Learning-rate decay after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine from `train.lr` to `train.lr * min_lr_ratio` at the last step.
    #[default]
    Cosine,
    /// Multiply by `gamma` every `step_every` steps.
    Step,
    /// Keep `train.lr`.
    Constant,
}

/// `[schedule]`: a linear warm-up, then a decay (burn's schedulers, composed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    /// Linear warm-up from `train.lr * warmup_start` to `train.lr` over these steps.
    pub warmup_steps: usize,
    pub warmup_start: f64,
    /// `cosine`: the final learning rate as a share of `train.lr`.
    pub min_lr_ratio: f64,
    /// `step`: steps between decays.
    pub step_every: usize,
    /// `step`: the factor of each decay.
    pub gamma: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: ScheduleKind::Cosine,
            warmup_steps: 0,
            warmup_start: 0.01,
            min_lr_ratio: 0.05,
            step_every: 1000,
            gamma: 0.1,
        }
    }
}

/// `[checkpoint]`: when checkpoints are written and which are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// A checkpoint every this many steps; 0: only the final one (and on Ctrl-C).
    pub every: usize,
    /// Periodic checkpoints kept, newest first; 0 keeps all.
    pub keep_last: usize,
    /// Checkpoints kept for the best validation `best_metric` (needs `[validation] every`).
    pub keep_best: usize,
    pub best_metric: BestMetric,
    /// What a checkpoint that cannot be written (disk full, ...) does to the run; either way
    /// its files are removed and the failure is in the audit log.
    #[serde(skip_serializing_if = "CheckpointOnError::is_default")]
    pub on_error: CheckpointOnError,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 0,
            keep_last: 3,
            keep_best: 0,
            best_metric: BestMetric::default(),
            on_error: CheckpointOnError::default(),
        }
    }
}

/// `checkpoint.on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointOnError {
    /// End the run with the error; the last checkpoint written stays intact to resume from.
    #[default]
    Stop,
    /// Train on and try again at the next checkpoint (the final one must succeed).
    Continue,
}

impl CheckpointOnError {
    /// Left out of the resolved TOML at its default, so that configs written before the key
    /// existed keep their hash (and their runs can be resumed).
    fn is_default(&self) -> bool {
        *self == CheckpointOnError::Stop
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckpointOnError::Stop => "stop",
            CheckpointOnError::Continue => "continue",
        }
    }
}

/// What "best" means for `checkpoint.keep_best`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Mean of the validation metrics the model has (mAP@0.5, drivable mIoU, lane IoU).
    #[default]
    Mean,
    /// Detection mAP@0.5.
    Map50,
    /// Detection mAP@[.5:.95].
    #[serde(rename = "map50_95")]
    Map50_95,
    DrivableMiou,
    LaneIou,
}

impl BestMetric {
    pub const ALL: [&'static str; 5] = ["mean", "map50", "map50_95", "drivable_miou", "lane_iou"];
}

/// `[validation]`: metrics on the datasets' validation split during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Validate every this many steps (and after the last); 0: never.
    pub every: usize,
    /// Images per dataset validated (the first ones of the split); 0: all.
    pub max_images: usize,
    pub batch_size: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            every: 0,
            max_images: 0,
            batch_size: 8,
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProgressStyleKind {
    /// A bar on a terminal, log lines otherwise.
    #[default]
    Auto,
    Bar,
    Lines,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A `metrics.jsonl` line (losses averaged since the last one) every this many steps.
    pub every: usize,
    /// Off a terminal (or with `progress = "lines"`), a log line every this many seconds.
    pub line_seconds: f64,
    pub progress: ProgressStyleKind,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            every: 10,
            line_seconds: 30.0,
            progress: ProgressStyleKind::Auto,
        }
    }
}

impl RunConfig {
    /// Checks values the types cannot: every message names the key and what would be valid.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        self.check_run_and_data(&mut problems);
        self.check_training(&mut problems);
        self.check_optimizer(&mut problems);
        self.check_schedule_and_outputs(&mut problems);
        self.check_finetune(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// `[finetune]`'s weights, and that it does not also start from `train.init`.
    fn check_finetune(&self, problems: &mut Vec<String>) {
        let Some(f) = &self.finetune else {
            return;
        };
        if self.train.init.is_some() {
            problems.push(
                "train.init and [finetune] both set the starting weights: a fine-tune starts \
                 from finetune.base (percept finetune --base); remove train.init"
                    .into(),
            );
        }
        if f.profile.trim().is_empty() {
            problems.push(
                "finetune.profile is empty: give a built-in code such as \"JP\" or a profile \
                 file"
                    .into(),
            );
        }
        if let Some(d) = &f.distillation {
            if !d.weight.is_finite() || d.weight < 0.0 {
                problems.push(format!(
                    "finetune.distillation.weight = {}: give a finite weight >= 0",
                    d.weight
                ));
            }
        }
        if let Some(a) = f.l2sp {
            if !a.is_finite() || a < 0.0 {
                problems.push(format!("finetune.l2sp = {a}: give a finite weight >= 0"));
            }
        }
    }

    /// The run's name, site, input size and data.
    fn check_run_and_data(&self, problems: &mut Vec<String>) {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            problems.push(format!(
                "name = {:?}: give a non-empty name without '/' or '\\' that does not start \
                 with '.'",
                self.name
            ));
        }
        if self.site.allow_unsigned == Some(false) && self.site.trust_store.is_none() {
            problems.push(
                "site.allow_unsigned = false needs site.trust_store: name the trust store of the \
                 stewards whose signatures the site accepts"
                    .into(),
            );
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
        if let Err(e) = self.data.augment.validate() {
            problems.push(e);
        }
    }

    /// Step counts, batch sizes, the learning rate and the EMA.
    fn check_training(&self, problems: &mut Vec<String>) {
        let t = &self.train;
        for (key, v) in [
            ("train.steps", t.steps),
            ("train.batch_size", t.batch_size),
            ("train.grad_accumulation", t.grad_accumulation),
            ("train.max_nonfinite_steps", t.max_nonfinite_steps),
            ("logging.every", self.logging.every),
            ("validation.batch_size", self.validation.batch_size),
        ] {
            if v == 0 {
                problems.push(format!("{key} = 0: give at least 1"));
            }
        }
        if !(t.lr > 0.0 && t.lr <= 1.0) {
            problems.push(format!("train.lr = {}: give a value in (0, 1]", t.lr));
        }
        if let Some(ema) = &t.ema {
            if !(ema.decay > 0.0 && ema.decay < 1.0) {
                problems.push(format!(
                    "train.ema.decay = {}: give a value in (0, 1), e.g. 0.9999 (leave [train.ema] \
                     out for no EMA)",
                    ema.decay
                ));
            }
            if ema.warmup_steps == 0 {
                problems.push("train.ema.warmup_steps = 0: give at least 1".into());
            }
        }
    }

    /// The optimiser's settings.
    fn check_optimizer(&self, problems: &mut Vec<String>) {
        let o = &self.optimizer;
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            problems.push(format!(
                "optimizer.weight_decay = {}: give a value >= 0",
                o.weight_decay
            ));
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            problems.push(format!(
                "optimizer.betas = {:?}: give two values in [0, 1), e.g. [0.9, 0.999]",
                o.betas
            ));
        }
        if o.epsilon.is_nan() || o.epsilon <= 0.0 {
            problems.push(format!(
                "optimizer.epsilon = {}: give a value > 0",
                o.epsilon
            ));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            problems.push(format!(
                "optimizer.momentum = {}: give a value in [0, 1)",
                o.momentum
            ));
        }
        if o.grad_clip.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            problems.push(format!(
                "optimizer.grad_clip = {}: give a norm > 0 (or leave the key out for no clipping)",
                o.grad_clip.unwrap_or_default()
            ));
        }
        for (prefix, m) in &o.lr_multipliers {
            if !(m.is_finite() && *m >= 0.0) {
                problems.push(format!(
                    "optimizer.lr_multipliers.{prefix} = {m}: give a finite factor >= 0"
                ));
            }
        }
        // The prefixes against the network's parameters: the check training makes.
        #[cfg(feature = "flex")]
        problems.extend(crate::lr_multipliers::lr_multiplier_problems(
            self.model.size,
            self.model.tasks,
            &self.optimizer.lr_multipliers,
        ));
    }

    /// The schedule, checkpoints, logging, tasks and evaluation thresholds.
    fn check_schedule_and_outputs(&self, problems: &mut Vec<String>) {
        let s = &self.schedule;
        if !(s.warmup_start > 0.0 && s.warmup_start <= 1.0) {
            problems.push(format!(
                "schedule.warmup_start = {}: give a value in (0, 1]",
                s.warmup_start
            ));
        }
        match s.kind {
            ScheduleKind::Cosine if !(0.0..=1.0).contains(&s.min_lr_ratio) => {
                problems.push(format!(
                    "schedule.min_lr_ratio = {}: give a value in [0, 1]",
                    s.min_lr_ratio
                ))
            }
            ScheduleKind::Step if s.step_every == 0 || !(s.gamma > 0.0 && s.gamma <= 1.0) => {
                problems.push(format!(
                    "schedule.step_every = {} and schedule.gamma = {}: give step_every >= 1 and \
                     gamma in (0, 1]",
                    s.step_every, s.gamma
                ))
            }
            _ => {}
        }
        let c = &self.checkpoint;
        if c.keep_best > 0 && self.validation.every == 0 {
            problems.push(format!(
                "checkpoint.keep_best = {}: needs validation; set validation.every > 0 or \
                 keep_best = 0",
                c.keep_best
            ));
        }
        if self.logging.line_seconds.is_nan() || self.logging.line_seconds <= 0.0 {
            problems.push(format!(
                "logging.line_seconds = {}: give a value > 0",
                self.logging.line_seconds
            ));
        }
        let t = &self.model.tasks;
        if !(t.detection || t.drivable || t.lanes) {
            problems.push("model.tasks: every task is off; turn on at least one".into());
        }
        let e = &self.eval;
        if !(0.0..=1.0).contains(&e.score_threshold) || !(0.0..=1.0).contains(&e.iou_threshold) {
            problems.push("eval.score_threshold and eval.iou_threshold must be in [0, 1]".into());
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
        let machine_free = RunConfig {
            kernel_cache: None,
            ..self.clone()
        };
        blake3::hash(machine_free.to_toml().as_bytes())
            .to_hex()
            .to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    /// A minimal valid config; other modules' tests build on it.
    pub(crate) const GOOD: &str = r#"
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
lr = 0.01
[schedule]
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
        assert_eq!(c.logging.every, 10);
        assert_eq!(c.optimizer.kind, OptimizerKind::AdamW);
        assert_eq!(c.checkpoint.keep_last, 3);
        assert_eq!(c.checkpoint.on_error, CheckpointOnError::Stop);
        // At its default the key is left out, so older runs' config hashes stay the same.
        assert!(!c.to_toml().contains("on_error"), "{}", c.to_toml());
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
    fn checkpoint_on_error_takes_stop_or_continue() {
        let text = format!("{GOOD}[checkpoint]\non_error = \"continue\"\n");
        let c = RunConfig::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.checkpoint.on_error, CheckpointOnError::Continue);
        assert!(c.to_toml().contains("on_error = \"continue\""));
        let e = err(&text.replace("\"continue\"", "\"retry\""));
        assert!(
            e.contains("checkpoint.on_error = \"retry\": expected one of \"stop\", \"continue\""),
            "{e}"
        );
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
