//! The training loop: sampler -> prefetched, augmented batches -> forward -> multi-task loss ->
//! backward -> AdamW step, with a warm-up + cosine learning rate, progress, `metrics.jsonl`,
//! checkpoints with their run state, and every data decision in the run's audit log.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::grad_clipping::GradientClippingConfig;
use burn::lr_scheduler::composed::ComposedLrSchedulerConfig;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::LrScheduler;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use indicatif::{ProgressBar, ProgressStyle};
use percept_data::{AuditEvent, AuditHead, AuditLog, Batch, LabelledTasks, SamplerState};
use percept_model::{
    assign_targets, multitask_loss, ImageTargets, LossParts, PerceptionNet, PerceptionNetConfig,
    SegmentationTargets, TargetBox,
};
use serde::{Deserialize, Serialize};

use crate::backend::BackendTask;
use crate::config::RunConfig;
use crate::data::{audit, TrainingData};
use crate::fsutil::write_atomic;
use crate::loader::{BatchBuilder, BatchLoader, LoaderOptions};
use crate::model_file::{save_model, ModelCard, Normalization, MODEL_FORMAT};
use crate::TrainError;

/// What a finished run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub checkpoint_hash: String,
    pub steps: usize,
    pub parameters: usize,
    pub final_losses: LossValues,
    pub images_per_second: f64,
    pub seconds: f64,
    /// Share of the wall time the step waited for data (0 when prefetch keeps up).
    pub data_wait_fraction: f64,
    /// Distinct samples skipped under the `skip` integrity policy (each is in the audit log).
    pub skipped_samples: usize,
    /// The audit log's head after the run ended.
    pub audit_head: AuditHead,
}

/// What is saved beside each checkpoint (`<checkpoint>.state.json`): enough to continue the
/// data stream exactly, and the pins that tie the checkpoint to its data and audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    pub step: usize,
    /// File name of the checkpoint within `checkpoints/`.
    pub checkpoint: String,
    pub checkpoint_hash: String,
    pub config_hash: String,
    /// Sampler position after `step` steps; it pins every dataset's manifest hash.
    pub sampler: SamplerState,
    pub skipped_samples: usize,
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

/// Loss values of one step (unweighted terms), as logged.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LossValues {
    pub total: f32,
    pub classification: Option<f32>,
    pub box_iou: Option<f32>,
    pub drivable: Option<f32>,
    pub lanes: Option<f32>,
}

impl LossValues {
    /// Reads every term with one device-to-host transfer.
    fn read<B: Backend>(parts: &LossParts<B>) -> LossValues {
        let terms = [
            &parts.classification,
            &parts.box_iou,
            &parts.drivable,
            &parts.lanes,
        ];
        let mut all = vec![parts.total.clone()];
        all.extend(terms.iter().filter_map(|t| (*t).clone()));
        let values: Vec<f32> = Tensor::cat(all, 0)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 data");
        let mut it = values.into_iter();
        let total = it.next().unwrap_or(f32::NAN);
        let mut next = |t: &Option<Tensor<B, 1>>| t.as_ref().and_then(|_| it.next());
        LossValues {
            total,
            classification: next(&parts.classification),
            box_iou: next(&parts.box_iou),
            drivable: next(&parts.drivable),
            lanes: next(&parts.lanes),
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

#[derive(Serialize)]
struct MetricsLine<'a> {
    step: usize,
    lr: f64,
    #[serde(flatten)]
    losses: &'a LossValues,
    images_per_second: f64,
    elapsed_seconds: f64,
    data_wait_fraction: f64,
    skipped_samples: usize,
}

/// Converts a batch's labels into detection targets of the model crate.
pub fn detection_targets(batch: &Batch) -> Vec<ImageTargets> {
    (0..batch.batch_size)
        .map(|i| ImageTargets {
            boxes: batch.boxes[i]
                .iter()
                .map(|b| TargetBox {
                    class: b.class as usize,
                    bbox: [b.x1, b.y1, b.x2, b.y2],
                })
                .collect(),
            ignore: batch.ignore[i]
                .iter()
                .map(|r| [r.x1, r.y1, r.x2, r.y2])
                .collect(),
            labelled: batch.tasks[i].detection,
        })
        .collect()
}

/// Input and segmentation target tensors of a batch.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 4>, SegmentationTargets<B>) {
    let [b, h, w] = [batch.batch_size, batch.height, batch.width];
    let images = Tensor::<B, 1>::from_floats(batch.images.as_slice(), device).reshape([b, 3, h, w]);
    let mask = |v: &[f32]| Tensor::<B, 1>::from_floats(v, device).reshape([b, h, w]);
    let labelled = |task: fn(&LabelledTasks) -> bool| {
        let v: Vec<f32> = batch.tasks.iter().map(|t| task(t) as u8 as f32).collect();
        Tensor::<B, 1>::from_floats(v.as_slice(), device)
    };
    let targets = SegmentationTargets {
        drivable: mask(&batch.drivable),
        lanes: mask(&batch.lanes),
        drivable_labelled: labelled(|t| t.drivable),
        lanes_labelled: labelled(|t| t.lanes),
    };
    (images, targets)
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
    let output = net.forward(images);
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

/// Trains a run; the task of [`crate::backend::dispatch`].
pub struct TrainTask<'a> {
    pub config: &'a RunConfig,
    pub data: TrainingData,
    pub audit: &'a mut AuditLog,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<TrainSummary, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        train::<B>(self.config, self.data, self.audit, &device)
    }
}

/// The learning-rate schedule: linear warm-up from 1% times a cosine decay, both burn's.
fn lr_schedule(config: &RunConfig) -> Result<impl LrScheduler, TrainError> {
    let o = &config.schedule;
    let lr = config.train.lr;
    let mut schedule = ComposedLrSchedulerConfig::new().cosine(
        CosineAnnealingLrSchedulerConfig::new(lr, config.train.steps)
            .with_min_lr(lr * o.min_lr_ratio),
    );
    if o.warmup_steps > 0 {
        schedule = schedule.linear(LinearLrSchedulerConfig::new(0.01, 1.0, o.warmup_steps));
    }
    schedule
        .init()
        .map_err(|e| TrainError::Invalid(format!("optimizer schedule: {e}")))
}

fn progress_bar(steps: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:24.cyan/blue} {pos}/{len} {msg} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("train");
    bar
}

/// Writes a checkpoint and its run state, and records it in the audit log.
struct Checkpointer<'a> {
    dir: PathBuf,
    card: ModelCard,
    config_hash: String,
    audit: &'a mut AuditLog,
}

impl Checkpointer<'_> {
    /// Saves `net` as `<name>.safetensors` (its provenance pins the audit head before the
    /// checkpoint entry) and `<name>.state.json` (pinning the head after it).
    fn save<B: Backend>(
        &mut self,
        name: &str,
        net: &PerceptionNet<B>,
        step: usize,
        sampler: SamplerState,
        skipped_samples: usize,
    ) -> Result<(PathBuf, String), TrainError> {
        let path = self.dir.join(format!("{name}.safetensors"));
        let mut card = self.card.clone();
        card.provenance.steps = step;
        card.provenance.audit_head = Some(self.audit.head());
        let hash = save_model(net, &card, &path)?;
        let audit_head = audit(
            self.audit,
            AuditEvent::Checkpoint {
                path: path.display().to_string(),
                step: step as u64,
                hash: hash.clone(),
            },
        )?;
        let state = RunState {
            step,
            checkpoint: format!("{name}.safetensors"),
            checkpoint_hash: hash.clone(),
            config_hash: self.config_hash.clone(),
            sampler,
            skipped_samples,
            audit_head,
        };
        write_atomic(
            &state_path(&path),
            serde_json::to_string_pretty(&state)
                .expect("serialises")
                .as_bytes(),
        )?;
        Ok((path, hash))
    }
}

fn train<B>(
    config: &RunConfig,
    data: TrainingData,
    audit_log: &mut AuditLog,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let run_dir = config.run_dir();
    let classes = data.classes().to_vec();
    let provenance = data.provenance(config);
    let arch = PerceptionNetConfig {
        size: config.model.size,
        num_classes: classes.len(),
        tasks: config.model.tasks,
    };
    arch.validate()
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    B::seed(device, config.train.seed);
    let mut net: PerceptionNet<B> = arch.init(device);
    let parameters = net.num_params();
    tracing::info!(
        "model {} with {} classes: {:.2} M parameters, {:.2} GFLOPs per {}x{} image; {} training samples",
        config.model.size.name(),
        classes.len(),
        parameters as f64 / 1e6,
        arch.gflops(config.model.input.height, config.model.input.width),
        config.model.input.width,
        config.model.input.height,
        data.len()
    );

    let o = &config.optimizer;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(o.weight_decay)
        .with_grad_clipping(o.grad_clip.map(GradientClippingConfig::Norm))
        .init::<B, PerceptionNet<B>>();
    let mut schedule = lr_schedule(config)?;

    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = File::create(&metrics_path).map_err(|e| TrainError::Io {
        path: metrics_path.clone(),
        source: e,
    })?;
    let data = Arc::new(data);
    let sampler = data.sampler(config)?;
    let builder = BatchBuilder::new(
        data.clone(),
        sampler,
        LoaderOptions {
            batch_size: config.train.batch_size,
            width: config.model.input.width as u32,
            height: config.model.input.height as u32,
            augment: config.data.augment.clone(),
            prefetch_batches: config.data.prefetch_batches,
            workers: config.data.workers,
        },
    )?;
    let batches = BatchLoader::spawn(builder, config.train.steps);
    let mut checkpointer = Checkpointer {
        dir: run_dir.join("checkpoints"),
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
    };
    let bar = progress_bar(config.train.steps);
    let start = Instant::now();
    let mut waited = Duration::ZERO;
    let mut skipped_samples = 0usize;
    let mut last = LossValues::default();
    let mut sampler_state = None;
    let num_classes = checkpointer.card.classes.len();
    for step in 1..=config.train.steps {
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
        skipped_samples += loaded.skipped.len();
        let lr = schedule.step();
        let parts = batch_loss(&net, &loaded.batch, num_classes, config, device);
        let grads = GradientsParams::from_grads(parts.total.backward(), &net);
        net = optimizer.step(lr, net, grads);

        let every = config.checkpoint.every;
        if every > 0 && step % every == 0 && step < config.train.steps {
            checkpointer.save(
                &format!("step-{step:06}"),
                &net.valid(),
                step,
                loaded.sampler_state.clone(),
                skipped_samples,
            )?;
        }
        if step % config.logging.every == 0 || step == config.train.steps || step == 1 {
            last = LossValues::read(&parts);
            if !last.total.is_finite() {
                return Err(TrainError::Diverged {
                    step,
                    loss: last.total,
                });
            }
            let elapsed = start.elapsed().as_secs_f64();
            let ips = (step * config.train.batch_size) as f64 / elapsed.max(1e-9);
            let data_wait_fraction = waited.as_secs_f64() / elapsed.max(1e-9);
            let line = MetricsLine {
                step,
                lr,
                losses: &last,
                images_per_second: ips,
                elapsed_seconds: elapsed,
                data_wait_fraction,
                skipped_samples,
            };
            writeln!(
                metrics,
                "{}",
                serde_json::to_string(&line).expect("serialises")
            )
            .map_err(|e| TrainError::Io {
                path: metrics_path.clone(),
                source: e,
            })?;
            bar.set_message(format!("{} lr {lr:.2e} {ips:.1} img/s", last.short()));
            if bar.is_hidden() {
                tracing::info!(
                    "step {step}/{} {} lr {lr:.2e} {ips:.1} img/s, data wait {:.0}%",
                    config.train.steps,
                    last.short(),
                    100.0 * data_wait_fraction
                );
            }
        }
        sampler_state = Some(loaded.sampler_state);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let (checkpoint, checkpoint_hash) = checkpointer.save(
        "final",
        &net.valid(),
        config.train.steps,
        sampler_state.expect("at least one step"),
        skipped_samples,
    )?;
    let audit_head = audit(
        checkpointer.audit,
        AuditEvent::RunEnd {
            steps: config.train.steps as u64,
            skipped_samples: skipped_samples as u64,
            status: "completed".into(),
        },
    )?;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        checkpoint,
        checkpoint_hash,
        steps: config.train.steps,
        parameters,
        final_losses: last,
        images_per_second: (config.train.steps * config.train.batch_size) as f64 / seconds,
        seconds,
        data_wait_fraction: waited.as_secs_f64() / seconds.max(1e-9),
        skipped_samples,
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
