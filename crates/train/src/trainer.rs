//! The training loop: sampler -> prefetched, augmented micro-batches -> forward -> multi-task
//! loss -> backward (gradients summed over `grad_accumulation` micro-batches) -> finiteness
//! check and global-norm clip -> one burn optimiser per parameter group -> EMA; with the
//! learning-rate schedule, validation, checkpoints that resume bit for bit, `metrics.jsonl`,
//! progress, Ctrl-C, and every data decision in the run's audit log.
//!
//! # Exact resume
//!
//! Everything a step depends on is either saved with a checkpoint or a pure function of what
//! is: the raw weights and optimiser state (burn records, full precision), the schedule's burn
//! records, the EMA weights and update count, the sampler position (every augmentation draw
//! comes from an RNG seeded by its slot), the samples known to be bad, and the non-finite step
//! counters. Nothing else in a step is random (the network has no dropout). On the CPU backend a
//! run killed at any point and resumed from its last checkpoint ends with the same bits as one
//! that was never interrupted (`tests/resume.rs` kills a child process to check it).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use indicatif::{ProgressBar, ProgressStyle};
use percept_data::{AuditEvent, AuditHead, AuditLog, Batch, Dataset, SamplerState};
use percept_model::{
    assign_targets, autocast, multitask_loss, use_conv_kernels, LossParts, PerceptionNet,
    PerceptionNetConfig,
};
use serde::{Deserialize, Serialize};

use crate::backend::BackendTask;
pub use crate::checkpoint::{state_path, RunState};
use crate::checkpoint::{CheckpointDir, CheckpointKind, NonfiniteSteps, TrainingState};
use crate::config::{BestMetric, ProgressStyleKind, RunConfig};
use crate::data::{audit, TrainingData};
use crate::data_parallel::{self, Cluster, Replica, ReplicaWorkers, StepOutcome};
use crate::ema::WeightEma;
use crate::loader::{BatchBuilder, BatchLoader, LoaderOptions};
use crate::optim::RunOptimizer;
use crate::schedule::{LearningRateSchedule, ScheduleState};
use crate::TrainError;
use percept_data::atomic_file::write_atomic;
use percept_eval::eval::{evaluate, EvalOptions};
use percept_eval::inputs::{batch_tensors, detection_targets};
use percept_eval::model_file::{
    load_matching, read_model_card, save_model, ModelCard, Normalization, MODEL_FORMAT,
};

/// What a run (or this part of it) produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    /// The last checkpoint's model file.
    pub checkpoint: PathBuf,
    pub checkpoint_hash: String,
    /// Steps done in total, and the step this process started from (0, or the checkpoint
    /// resumed from).
    pub steps: usize,
    pub start_step: usize,
    pub parameters: usize,
    pub final_losses: LossValues,
    /// Over this process's steps.
    pub images_per_second: f64,
    pub seconds: f64,
    /// Share of the wall time the step waited for data (0 when prefetch keeps up).
    pub data_wait_fraction: f64,
    /// Distinct samples skipped under the `skip` integrity policy (each is in the audit log).
    pub skipped_samples: usize,
    /// Steps skipped for a non-finite loss or gradient.
    pub nonfinite_steps: usize,
    /// Stopped by Ctrl-C: `checkpoint` holds the state to resume from.
    pub interrupted: bool,
    /// The audit log's head after the run ended.
    pub audit_head: AuditHead,
}

/// Loss values (unweighted terms), as logged; absent terms belong to tasks switched off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    pub total: f32,
    pub classification: Option<f32>,
    pub box_iou: Option<f32>,
    pub drivable: Option<f32>,
    pub lanes: Option<f32>,
}

impl LossValues {
    /// The terms as one `[n]` tensor, total first then the present terms in order, detached.
    pub(crate) fn tensor<B: AutodiffBackend>(parts: &LossParts<B>) -> Tensor<B::InnerBackend, 1> {
        let mut all = vec![parts.total.clone().inner()];
        for t in [
            &parts.classification,
            &parts.box_iou,
            &parts.drivable,
            &parts.lanes,
        ]
        .into_iter()
        .flatten()
        {
            all.push(t.clone().inner());
        }
        Tensor::cat(all, 0)
    }

    /// Inverse of [`Self::tensor`] given which terms are present.
    fn from_values(values: &[f32], present: [bool; 4]) -> LossValues {
        let mut it = values.iter().copied();
        let total = it.next().unwrap_or(f32::NAN);
        let mut next = |p: bool| if p { it.next() } else { None };
        LossValues {
            total,
            classification: next(present[0]),
            box_iou: next(present[1]),
            drivable: next(present[2]),
            lanes: next(present[3]),
        }
    }

    fn short(&self) -> String {
        let f =
            |name: &str, v: Option<f32>| v.map(|v| format!(" {name} {v:.3}")).unwrap_or_default();
        format!(
            "loss {:.3}{}{}{}{}",
            self.total,
            f("cls", self.classification),
            f("box", self.box_iou),
            f("da", self.drivable),
            f("ll", self.lanes)
        )
    }
}

/// Sums of loss values over steps, for window and epoch means.
#[derive(Debug, Clone, Default)]
struct LossMean {
    sum: [f64; 5],
    steps: usize,
    present: [bool; 4],
}

impl LossMean {
    fn add(&mut self, v: &LossValues) {
        let terms = [v.classification, v.box_iou, v.drivable, v.lanes];
        self.sum[0] += v.total as f64;
        for (k, t) in terms.iter().enumerate() {
            self.present[k] = t.is_some();
            self.sum[k + 1] += t.unwrap_or(0.0) as f64;
        }
        self.steps += 1;
    }

    /// The mean since the last take, and a fresh start.
    fn take(&mut self) -> Option<LossValues> {
        if self.steps == 0 {
            return None;
        }
        let n = self.steps as f64;
        let m = |k: usize| (self.sum[k] / n) as f32;
        let p = self.present;
        let mean = LossValues {
            total: m(0),
            classification: p[0].then(|| m(1)),
            box_iou: p[1].then(|| m(2)),
            drivable: p[2].then(|| m(3)),
            lanes: p[3].then(|| m(4)),
        };
        *self = LossMean::default();
        Some(mean)
    }
}

/// One line of `metrics.jsonl`; see `percept plot` (crate::plot) for the reader.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum MetricsLine<'a> {
    /// Means over the steps since the previous step line.
    Step {
        step: usize,
        epoch: u64,
        lr: f64,
        loss: &'a LossValues,
        grad_norm: Option<f32>,
        images_per_second: f64,
        elapsed_seconds: f64,
        data_wait_fraction: f64,
        skipped_samples: usize,
        nonfinite_steps: usize,
    },
    /// Means over an epoch's steps (`steps` of them: fewer than the epoch when the run was
    /// resumed inside it).
    Epoch {
        step: usize,
        epoch: u64,
        steps: usize,
        loss: &'a LossValues,
    },
    Validation(&'a ValidationResult),
}

/// Validation metrics at a step.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationResult {
    pub step: usize,
    /// `ema` or `raw`.
    pub weights: &'static str,
    pub datasets: Vec<DatasetMetrics>,
    /// Each metric's mean over the datasets that have it.
    pub mean: DatasetMetrics,
    /// `checkpoint.best_metric` of `mean` (higher is better); null when the model has none.
    pub score: Option<f64>,
}

/// Metrics of one validation split (a metric is null when the task is off or unlabelled).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatasetMetrics {
    pub name: String,
    pub images: usize,
    pub map50: Option<f64>,
    pub map50_95: Option<f64>,
    pub drivable_miou: Option<f64>,
    pub lane_iou: Option<f64>,
}

impl DatasetMetrics {
    fn score(&self, metric: BestMetric) -> Option<f64> {
        match metric {
            BestMetric::Map50 => self.map50,
            BestMetric::Map50_95 => self.map50_95,
            BestMetric::DrivableMiou => self.drivable_miou,
            BestMetric::LaneIou => self.lane_iou,
            BestMetric::Mean => {
                let v: Vec<f64> = [self.map50, self.drivable_miou, self.lane_iou]
                    .into_iter()
                    .flatten()
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            }
        }
    }
}

/// One training step's loss on a batch (forward only; the caller runs backward).
pub fn batch_loss<B: Backend>(
    net: &PerceptionNet<B>,
    batch: &Batch,
    num_classes: usize,
    config: &RunConfig,
    device: &B::Device,
) -> LossParts<B> {
    let (images, seg) = batch_tensors::<B>(batch, device);
    let output = {
        // The casts are autodiff ops: backward needs no guard.
        let _autocast = autocast(config.train.precision);
        let _kernels = use_conv_kernels(config.train.conv);
        net.forward(images)
    };
    let det_targets = output.detection.as_ref().map(|_| {
        assign_targets(
            batch.height,
            batch.width,
            &detection_targets(batch),
            num_classes,
        )
    });
    multitask_loss(&output, det_targets.as_ref(), &seg, &config.loss)
}

/// Test-only fault injection: these steps' losses are multiplied by NaN before backward, so
/// their gradients are non-finite too (the real path a diverging run takes).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub nonfinite_steps: BTreeSet<usize>,
}

/// Trains a run, fresh or from a checkpoint; the task of [`crate::backend::dispatch`].
pub struct TrainTask<'a> {
    pub config: &'a RunConfig,
    /// The run directory (normally `config.run_dir()`).
    pub run_dir: PathBuf,
    pub data: TrainingData,
    pub audit: &'a mut AuditLog,
    /// The checkpoint to continue from.
    pub resume: Option<RunState>,
    pub faults: Faults,
    /// This process's place in a run over several nodes.
    pub cluster: Option<Cluster>,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<TrainSummary, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        train::<B>(self, &[device])
    }

    fn run_on<B>(self, devices: Vec<B::Device>) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        train::<B>(self, &devices)
    }
}

/// On a GPU: what the first step compiled and tuned (a warm kernel cache makes it none).
fn log_first_step_kernels(took: Duration) {
    if let Some(k) = crate::gpu_runtime::counts() {
        tracing::info!(
            "first step: {:.1} s, {} kernels compiled ({} not compiled by a warm-up), {} autotune \
             keys tuned ({} candidates timed)",
            took.as_secs_f64(),
            k.compiled,
            k.not_warmed.unwrap_or(k.compiled),
            k.keys_tuned,
            k.candidates_timed
        );
    }
}

/// Validates `net` on every validation split.
fn validate<B: VisionBackend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    sets: &[Dataset],
    config: &RunConfig,
    step: usize,
    weights: &'static str,
    device: &B::Device,
) -> Result<ValidationResult, TrainError> {
    let options = EvalOptions {
        batch_size: config.validation.batch_size,
        resolution: config.eval.resolution,
        examples: 0,
        max_images: config.validation.max_images,
    };
    let _kernels = use_conv_kernels(config.train.conv);
    let mut datasets = Vec::new();
    for ds in sets {
        let r = evaluate(net, card, ds, &options, device, &ProgressBar::hidden())?.report;
        datasets.push(DatasetMetrics {
            name: ds.manifest().name.clone(),
            images: r.images,
            map50: r.detection.as_ref().map(|d| d.metrics.map50),
            map50_95: r.detection.as_ref().map(|d| d.metrics.map50_95),
            drivable_miou: r.drivable.as_ref().map(|d| d.miou),
            lane_iou: r.lanes.as_ref().map(|l| l.iou),
        });
    }
    let mean_of = |f: fn(&DatasetMetrics) -> Option<f64>| {
        let v: Vec<f64> = datasets.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mean = DatasetMetrics {
        name: "mean".into(),
        images: datasets.iter().map(|d| d.images).sum(),
        map50: mean_of(|d| d.map50),
        map50_95: mean_of(|d| d.map50_95),
        drivable_miou: mean_of(|d| d.drivable_miou),
        lane_iou: mean_of(|d| d.lane_iou),
    };
    Ok(ValidationResult {
        step,
        weights,
        score: mean.score(config.checkpoint.best_metric),
        datasets,
        mean,
    })
}

/// Progress: a bar on a terminal, plain log lines every `logging.line_seconds` otherwise.
struct Progress {
    bar: ProgressBar,
    lines: bool,
    every: Duration,
    last_line: Instant,
}

impl Progress {
    fn new(config: &RunConfig, start_step: usize) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar_wanted = match config.logging.progress {
            ProgressStyleKind::Auto => terminal,
            ProgressStyleKind::Bar => true,
            ProgressStyleKind::Lines => false,
        };
        let bar = if bar_wanted {
            let bar = ProgressBar::new(config.train.steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:24.cyan/blue} {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix("train");
            bar.set_position(start_step as u64);
            bar.reset_eta();
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            lines: !bar_wanted,
            every: Duration::from_secs_f64(config.logging.line_seconds),
            last_line: Instant::now(),
        }
    }
}

/// Everything of a run's position that a checkpoint saves besides weights and optimiser.
struct Position {
    step: usize,
    sampler: Option<SamplerState>,
    schedule: ScheduleState,
    nonfinite: NonfiniteSteps,
    skipped_samples: usize,
    known_bad: BTreeSet<(usize, usize)>,
}

/// Writes checkpoints and records them in the audit log.
struct Checkpointer<'a> {
    dir: CheckpointDir,
    card: ModelCard,
    config_hash: String,
    audit: &'a mut AuditLog,
    /// The newest checkpoint written or resumed from.
    last: Option<(PathBuf, String)>,
}

impl Checkpointer<'_> {
    /// Saves checkpoint `name`: the model file (`eval_net`: the EMA weights when there are
    /// any), the training state, then the commit record.
    #[allow(clippy::too_many_arguments)]
    fn save<B: AutodiffBackend>(
        &mut self,
        name: &str,
        kind: CheckpointKind,
        net: &PerceptionNet<B>,
        ema: Option<&WeightEma<B::InnerBackend>>,
        optimizer: &RunOptimizer<B>,
        position: &Position,
        score: Option<f64>,
    ) -> Result<(PathBuf, String), TrainError> {
        let files = self.dir.files(name);
        let mut card = self.card.clone();
        card.provenance.steps = position.step;
        card.provenance.audit_head = Some(self.audit.head());
        let raw;
        let eval_net = match ema {
            Some(e) => e.weights(),
            None => {
                raw = net.valid();
                &raw
            }
        };
        let hash = save_model(eval_net, &card, &files.model)?;
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let record_err = |e: burn::record::RecorderError| TrainError::ModelFile {
            path: files.training.clone(),
            message: format!("could not serialise the training state: {e}"),
        };
        let training = TrainingState {
            model: recorder
                .record(net.clone().into_record(), ())
                .map_err(record_err)?,
            optimizer: optimizer.to_bytes()?.into_iter().collect(),
            ema: ema
                .map(|e| recorder.record(e.weights().clone().into_record(), ()))
                .transpose()
                .map_err(record_err)?,
        }
        .to_bytes();
        let training_hash = blake3::hash(&training).to_hex().to_string();
        let audit_head = audit(
            self.audit,
            AuditEvent::Checkpoint {
                path: files.model.display().to_string(),
                step: position.step as u64,
                hash: hash.clone(),
                training_state_hash: Some(training_hash.clone()),
            },
        )?;
        let state = RunState {
            step: position.step,
            kind,
            checkpoint: format!("{name}.safetensors"),
            checkpoint_hash: hash.clone(),
            training_state: format!("{name}.train.safetensors"),
            training_state_hash: training_hash,
            config_hash: self.config_hash.clone(),
            sampler: position
                .sampler
                .clone()
                .expect("a checkpoint follows at least one step"),
            schedule: position.schedule.clone(),
            ema_updates: ema.map(|e| e.updates()),
            nonfinite: position.nonfinite,
            skipped_samples: position.skipped_samples,
            known_bad: position.known_bad.iter().copied().collect(),
            score,
            audit_head,
        };
        self.dir.commit(name, &training, &state)?;
        self.last = Some((files.model.clone(), hash.clone()));
        Ok((files.model, hash))
    }

    fn last_description(&self) -> String {
        match &self.last {
            Some((path, _)) => format!("The last checkpoint, {}, is intact.", path.display()),
            None => "No checkpoint had been written yet.".into(),
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Opens `metrics.jsonl` for appending; on resume, first drops the lines after the resumed
/// step (written by the interrupted process after its last checkpoint).
fn open_metrics(path: &Path, resumed_at: Option<usize>) -> Result<File, TrainError> {
    match resumed_at {
        None => File::create(path).map_err(io_err(path)),
        Some(step) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            write_atomic(path, kept.as_bytes())?;
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io_err(path))
        }
    }
}

fn write_line(file: &mut File, path: &Path, line: &MetricsLine) -> Result<(), TrainError> {
    writeln!(file, "{}", serde_json::to_string(line).expect("serialises")).map_err(io_err(path))
}

/// Trains on `devices` (more than one: data-parallel, see [`crate::data_parallel`]).
fn train<B>(task: TrainTask<'_>, devices: &[B::Device]) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let device = &devices[0];
    let TrainTask {
        config,
        run_dir,
        data,
        audit: audit_log,
        resume,
        faults,
        cluster,
    } = task;
    let classes = data.classes().to_vec();
    let provenance = data.provenance(config);
    let arch = PerceptionNetConfig {
        size: config.model.size,
        num_classes: classes.len(),
        tasks: config.model.tasks,
    };
    arch.validate()
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let mut net: PerceptionNet<B> = arch.init_seeded(config.train.seed, device);
    let mut provenance = provenance;
    match (&resume, &config.train.init) {
        // The checkpoint's provenance already includes the starting weights'.
        (Some(state), _) => {
            let model = run_dir.join("checkpoints").join(&state.checkpoint);
            let saved = read_model_card(&model)?.provenance;
            merge_provenance(&mut provenance, &saved);
            provenance.base_checkpoint = saved.base_checkpoint;
        }
        (None, Some(init)) => {
            let (loaded, report) = load_matching(net, init)?;
            net = loaded;
            tracing::info!(
                "starting from {} (blake3 {}): {} tensors loaded, {} kept at their initial values{}",
                init.display(),
                &report.hash[..12],
                report.loaded,
                report.kept.len(),
                summarize_kept(&report.kept)
            );
            merge_provenance(&mut provenance, &report.card.provenance);
            provenance.base_checkpoint = Some(report.hash);
        }
        (None, None) => {}
    }
    let parameters = net.num_params();
    let accumulation = config.train.grad_accumulation;
    tracing::info!(
        "model {} with {} classes: {:.2} M parameters, {:.2} GFLOPs per {}x{} image; {} training samples; {} images per step",
        config.model.size.name(),
        classes.len(),
        parameters as f64 / 1e6,
        arch.gflops(config.model.input.height, config.model.input.width),
        config.model.input.width,
        config.model.input.height,
        data.len(),
        config.train.batch_size * accumulation
    );

    let mut schedule = LearningRateSchedule::new(config)?;
    let checkpoints = CheckpointDir::new(run_dir.join("checkpoints"));
    let mut position = Position {
        step: 0,
        sampler: None,
        schedule: schedule.state::<B>(),
        nonfinite: NonfiniteSteps::default(),
        skipped_samples: 0,
        known_bad: BTreeSet::new(),
    };
    let mut ema = config.train.ema.map(|c| WeightEma::new(c, net.valid(), 0));
    let data = Arc::new(data);
    let mut last_checkpoint = None;
    let (optimizer, sampler) = match &resume {
        None => (
            RunOptimizer::new(&net, &config.optimizer)?,
            data.sampler(config)?,
        ),
        Some(state) => {
            let files = checkpoints.files(
                state
                    .checkpoint
                    .strip_suffix(".safetensors")
                    .unwrap_or(&state.checkpoint),
            );
            let bad = |message: String| TrainError::ModelFile {
                path: files.training.clone(),
                message,
            };
            let bytes = std::fs::read(&files.training).map_err(io_err(&files.training))?;
            let saved = TrainingState::from_bytes(&bytes).map_err(bad)?;
            let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
            net = net.load_record(
                recorder
                    .load(saved.model, device)
                    .map_err(|e| bad(format!("raw weights: {e}")))?,
            );
            let optimizer = RunOptimizer::new(&net, &config.optimizer)?
                .load_bytes(saved.optimizer, device)
                .map_err(bad)?;
            schedule = schedule.restore::<B>(&state.schedule).map_err(bad)?;
            ema = match (config.train.ema, saved.ema, state.ema_updates) {
                (Some(c), Some(weights), Some(updates)) => {
                    let weights = net.valid().load_record(
                        recorder
                            .load(weights, device)
                            .map_err(|e| bad(format!("EMA weights: {e}")))?,
                    );
                    Some(WeightEma::new(c, weights, updates))
                }
                (None, None, None) => None,
                _ => return Err(bad("the EMA state does not match train.ema".into())),
            };
            position = Position {
                step: state.step,
                sampler: Some(state.sampler.clone()),
                schedule: state.schedule.clone(),
                nonfinite: state.nonfinite,
                skipped_samples: state.skipped_samples,
                known_bad: state.known_bad.iter().copied().collect(),
            };
            last_checkpoint = Some((files.model.clone(), state.checkpoint_hash.clone()));
            let sampler = data.resume_sampler(config, state.sampler.clone())?;
            (optimizer, sampler)
        }
    };
    for g in optimizer.groups() {
        tracing::debug!(
            "parameter group {}: {} tensors, {} values, lr x{}, weight decay {}",
            g.name,
            g.params.len(),
            g.elements,
            g.lr_factor,
            g.weight_decay
        );
    }
    let start_step = position.step;
    let num_classes = classes.len();
    let mut replica = Replica::single(net, optimizer, device.clone());
    let mut workers = ReplicaWorkers::start(
        &mut replica,
        devices,
        &arch,
        config,
        cluster.as_ref(),
        start_step,
    )?;
    let world = workers.world_size();
    let (local, first_rank) = (workers.local_replicas(), workers.first_rank());
    if let Some(c) = &cluster {
        tracing::info!(
            "node {} of {}: ranks {first_rank}..{} of {world}, {} images per device per \
             micro-batch",
            c.rank,
            c.nodes,
            first_rank + local,
            config.train.batch_size
        );
    } else if world > 1 {
        tracing::info!(
            "data-parallel on {world} devices: {} images per device per micro-batch",
            config.train.batch_size
        );
    }
    let images_per_step = config.train.batch_size * accumulation * world;

    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = open_metrics(&metrics_path, resume.as_ref().map(|s| s.step))?;
    let builder = BatchBuilder::new(
        data.clone(),
        sampler,
        LoaderOptions {
            // Every replica's part of each micro-batch, in replica order.
            batch_size: config.train.batch_size * world,
            width: config.model.input.width as u32,
            height: config.model.input.height as u32,
            augment: config.data.augment.clone(),
            prefetch_batches: config.data.prefetch_batches,
            workers: config.data.workers,
        },
    )?
    .with_known_bad(position.known_bad.iter().copied())
    // Only this node's replicas' parts of each global micro-batch are read and decoded.
    .reading_only(
        first_rank * config.train.batch_size..(first_rank + local) * config.train.batch_size,
    )?;
    let remaining = config.train.steps.saturating_sub(start_step);
    let batches = BatchLoader::spawn(builder, remaining * accumulation);
    let mut checkpointer = Checkpointer {
        dir: checkpoints,
        card: ModelCard {
            format: MODEL_FORMAT.into(),
            architecture: arch,
            classes,
            input: config.model.input.clone(),
            normalization: Normalization::default(),
            decode: config.eval.decode(),
            eval_resolution: config.eval.resolution,
            provenance,
        },
        config_hash: config.hash(),
        audit: audit_log,
        last: last_checkpoint,
    };
    let present = [
        config.model.tasks.detection,
        config.model.tasks.detection,
        config.model.tasks.drivable,
        config.model.tasks.lanes,
    ];
    let mut progress = Progress::new(config, start_step);
    let start = Instant::now();
    let mut waited = Duration::ZERO;
    let mut window = LossMean::default();
    let mut line_window = LossMean::default();
    let mut epoch_mean = LossMean::default();
    let mut grad_norms = (0.0f64, 0usize);
    let mut last = LossValues::default();
    let mut epoch = position.sampler.as_ref().map_or(0, |s| s.epoch);
    let mut interrupted = false;
    for step in start_step + 1..=config.train.steps {
        let lr = schedule.step();
        let mut parts: Vec<Vec<Batch>> = vec![Vec::with_capacity(accumulation); local];
        let mut sampler_state = None;
        for _ in 0..accumulation {
            let wait = Instant::now();
            let loaded = batches.next()?;
            waited += wait.elapsed();
            for s in &loaded.skipped {
                tracing::warn!(
                    "skipped sample {} of {} in dataset {}: {}",
                    s.index,
                    s.shard,
                    s.dataset,
                    s.reason
                );
                position.known_bad.insert(s.slot);
                audit(
                    checkpointer.audit,
                    AuditEvent::SampleSkipped {
                        dataset: s.dataset.clone(),
                        shard: s.shard.clone(),
                        index: s.index as u64,
                        sample_id: None,
                        reason: s.reason.clone(),
                    },
                )?;
            }
            position.skipped_samples += loaded.skipped.len();
            // This node's ranks' parts of the global micro-batch, one per local replica.
            for (own, part) in parts.iter_mut().zip(loaded.batch.split(local)) {
                own.push(part);
            }
            sampler_state = Some(loaded.sampler_state);
        }
        let poison = faults.nonfinite_steps.contains(&step);
        let own = std::mem::take(&mut parts[0]);
        workers.send(parts, lr, poison)?;
        let outcome;
        (replica, outcome) = replica.step(&own, lr, config, num_classes, poison)?;
        if step == start_step + 1 {
            log_first_step_kernels(start.elapsed());
        }
        let StepOutcome { values, check } = outcome;
        let step_losses = LossValues::from_values(&values, present);
        position.step = step;
        position.sampler = sampler_state;
        if check.finite {
            if let Some(e) = ema.as_mut() {
                e.update(replica.net.valid());
            }
            position.nonfinite.in_a_row = 0;
            window.add(&step_losses);
            line_window.add(&step_losses);
            epoch_mean.add(&step_losses);
            grad_norms.0 += check.norm as f64;
            grad_norms.1 += 1;
            last = step_losses;
        } else {
            position.nonfinite.total += 1;
            position.nonfinite.in_a_row += 1;
            tracing::warn!(
                "step {step}: non-finite loss ({}) or gradient norm ({}); step skipped ({} in a row, {} in all)",
                step_losses.total,
                check.norm,
                position.nonfinite.in_a_row,
                position.nonfinite.total
            );
            if position.nonfinite.in_a_row >= config.train.max_nonfinite_steps {
                progress.bar.abandon();
                return Err(TrainError::NonFinite {
                    step,
                    in_a_row: position.nonfinite.in_a_row,
                    last_checkpoint: checkpointer.last_description(),
                });
            }
        }
        position.schedule = schedule.state::<B>();

        let elapsed = start.elapsed().as_secs_f64();
        let done = step - start_step;
        let ips = (done * images_per_step) as f64 / elapsed.max(1e-9);
        let data_wait_fraction = waited.as_secs_f64() / elapsed.max(1e-9);
        let new_epoch = position.sampler.as_ref().map_or(epoch, |s| s.epoch);
        if step % config.logging.every == 0 || step == config.train.steps {
            {
                // Every step since the last line skipped: log this one's (non-finite) values.
                let mean = window.take().unwrap_or(step_losses);
                let grad_norm =
                    (grad_norms.1 > 0).then(|| (grad_norms.0 / grad_norms.1 as f64) as f32);
                grad_norms = (0.0, 0);
                write_line(
                    &mut metrics,
                    &metrics_path,
                    &MetricsLine::Step {
                        step,
                        epoch,
                        lr,
                        loss: &mean,
                        grad_norm,
                        images_per_second: ips,
                        elapsed_seconds: elapsed,
                        data_wait_fraction,
                        skipped_samples: position.skipped_samples,
                        nonfinite_steps: position.nonfinite.total,
                    },
                )?;
                progress
                    .bar
                    .set_message(format!("{} lr {lr:.2e} {ips:.1} img/s", mean.short()));
            }
        }
        if new_epoch > epoch {
            let steps = epoch_mean.steps;
            if let Some(mean) = epoch_mean.take() {
                write_line(
                    &mut metrics,
                    &metrics_path,
                    &MetricsLine::Epoch {
                        step,
                        epoch,
                        steps,
                        loss: &mean,
                    },
                )?;
            }
            epoch = new_epoch;
        }
        if progress.lines
            && (progress.last_line.elapsed() >= progress.every
                || step == config.train.steps
                || step == start_step + 1)
        {
            progress.last_line = Instant::now();
            let eta = elapsed / done as f64 * (config.train.steps - step) as f64;
            if let Some(mean) = line_window.take() {
                tracing::info!(
                    "step {step}/{} {} lr {lr:.2e} {ips:.1} img/s, data wait {:.0}%, ETA {}",
                    config.train.steps,
                    mean.short(),
                    100.0 * data_wait_fraction,
                    format_duration(eta)
                );
            }
        }

        // Ctrl-C (or SIGTERM): finish this step, checkpoint it, stop.
        let stop = crate::interrupt::stop_requested() && step < config.train.steps;
        let periodic = config.checkpoint.every > 0
            && step % config.checkpoint.every == 0
            && step < config.train.steps;
        if periodic || stop {
            checkpointer.save(
                &format!("step-{step:06}"),
                CheckpointKind::Periodic,
                &replica.net,
                ema.as_ref(),
                &replica.optimizer,
                &position,
                None,
            )?;
            checkpointer
                .dir
                .retain(config.checkpoint.keep_last, config.checkpoint.keep_best)?;
        }
        let v = config.validation.every;
        if v > 0 && (step % v == 0 || step == config.train.steps) {
            let (weights, name) = match &ema {
                Some(e) => (e.weights().clone(), "ema"),
                None => (replica.net.valid(), "raw"),
            };
            let result = validate(
                &weights,
                &checkpointer.card,
                data.validation(),
                config,
                step,
                name,
                device,
            )?;
            write_line(
                &mut metrics,
                &metrics_path,
                &MetricsLine::Validation(&result),
            )?;
            let shown = |m: Option<f64>| m.map_or("-".into(), |v| format!("{v:.3}"));
            let message = format!(
                "validation at step {step} ({name} weights): mAP@0.5 {} drivable mIoU {} lane IoU {}",
                shown(result.mean.map50),
                shown(result.mean.drivable_miou),
                shown(result.mean.lane_iou)
            );
            if progress.lines {
                tracing::info!("{message}");
            } else {
                progress.bar.println(message);
            }
            let keep = config.checkpoint.keep_best;
            if let Some(score) = result.score {
                if checkpointer.dir.is_among_best(score, keep) {
                    checkpointer.save(
                        &format!("best-{step:06}"),
                        CheckpointKind::Best,
                        &replica.net,
                        ema.as_ref(),
                        &replica.optimizer,
                        &position,
                        Some(score),
                    )?;
                    checkpointer.dir.retain(config.checkpoint.keep_last, keep)?;
                }
            }
        }
        progress.bar.inc(1);
        if stop {
            interrupted = true;
            break;
        }
    }
    progress.bar.finish_and_clear();
    drop(batches);
    workers.stop()?;
    data_parallel::finish(&replica)?;
    let seconds = start.elapsed().as_secs_f64();
    let steps_done = position.step;

    let (checkpoint, checkpoint_hash) = if interrupted {
        checkpointer.last.clone().expect("saved on interrupt")
    } else {
        let saved = checkpointer.save(
            "final",
            CheckpointKind::Final,
            &replica.net,
            ema.as_ref(),
            &replica.optimizer,
            &position,
            None,
        )?;
        checkpointer
            .dir
            .retain(config.checkpoint.keep_last, config.checkpoint.keep_best)?;
        saved
    };
    let audit_head = audit(
        checkpointer.audit,
        AuditEvent::RunEnd {
            steps: steps_done as u64,
            skipped_samples: position.skipped_samples as u64,
            status: if interrupted {
                format!("interrupted at step {steps_done}; resumable")
            } else {
                "completed".into()
            },
        },
    )?;
    let done = steps_done - start_step;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        checkpoint,
        checkpoint_hash,
        steps: steps_done,
        start_step,
        parameters,
        final_losses: last,
        images_per_second: (done * images_per_step) as f64 / seconds.max(1e-9),
        seconds,
        data_wait_fraction: waited.as_secs_f64() / seconds.max(1e-9),
        skipped_samples: position.skipped_samples,
        nonfinite_steps: position.nonfinite.total,
        interrupted,
        audit_head,
    };
    write_atomic(
        &run_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("serialises")
            .as_bytes(),
    )?;
    Ok(summary)
}

/// Adds the datasets and regions of the weights a run started from to its own provenance:
/// they trained the weights too.
fn merge_provenance(
    provenance: &mut percept_eval::model_file::Provenance,
    base: &percept_eval::model_file::Provenance,
) {
    for d in &base.datasets {
        if !provenance
            .datasets
            .iter()
            .any(|x| x.manifest_hash == d.manifest_hash)
        {
            provenance.datasets.push(d.clone());
        }
    }
    provenance.regions.extend(base.regions.iter().cloned());
    provenance.regions.sort();
    provenance.regions.dedup();
}

/// `: detection_head.cls.2.weight, detection_head.cls.2.bias, ...` (at most 4 names).
fn summarize_kept(kept: &[String]) -> String {
    if kept.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = kept.iter().take(4).map(String::as_str).collect();
    let more = if kept.len() > 4 { ", ..." } else { "" };
    format!(": {}{more}", shown.join(", "))
}

/// `1h02m`, `3m05s`, `12s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
