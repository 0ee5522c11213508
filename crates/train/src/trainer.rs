//! The training loop: datasets -> prefetched batches -> forward -> multi-task loss -> backward
//! -> AdamW step, with a warm-up + cosine learning rate, progress, `metrics.jsonl` and a final
//! checkpoint.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Instant;

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
use percept_data::{collate, Batch};
use percept_model::{
    assign_targets, multitask_loss, LossParts, PerceptionNet, PerceptionNetConfig,
    SegmentationTargets, TargetBox,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::BackendTask;
use crate::config::RunConfig;
use crate::data::TrainingData;
use crate::fsutil::write_atomic;
use crate::model_file::{save_model, ModelCard, Normalization, Provenance, MODEL_FORMAT};
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
}

/// Converts a batch's labels into detection targets of the model crate.
pub fn target_boxes(batch: &Batch) -> Vec<Vec<TargetBox>> {
    batch
        .boxes
        .iter()
        .map(|boxes| {
            boxes
                .iter()
                .map(|b| TargetBox {
                    class: b.class as usize,
                    bbox: [b.x1, b.y1, b.x2, b.y2],
                })
                .collect()
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
    let targets = SegmentationTargets {
        drivable: mask(&batch.drivable),
        lanes: mask(&batch.lanes),
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
    let det_targets = output
        .detection
        .as_ref()
        .map(|_| assign_targets(batch.height, batch.width, &target_boxes(batch), num_classes));
    multitask_loss(&output, det_targets.as_ref(), &seg, &config.loss)
}

/// Spawns the loader thread: it draws a seeded, epoch-shuffled order over all training samples
/// and sends collated batches ahead of the training loop (two in flight), so decoding overlaps
/// compute.
fn spawn_loader(data: TrainingData, config: &RunConfig) -> Receiver<Result<Batch, TrainError>> {
    let (tx, rx) = sync_channel(2);
    let (steps, batch_size, seed) = (
        config.train.steps,
        config.train.batch_size,
        config.train.seed,
    );
    let (w, h) = (config.model.input.width, config.model.input.height);
    std::thread::spawn(move || {
        let total = data.len();
        let mut order: Vec<usize> = Vec::new();
        let mut epoch = 0u64;
        let mut cursor = 0usize;
        for _ in 0..steps {
            let mut picks = Vec::with_capacity(batch_size);
            while picks.len() < batch_size {
                if cursor == order.len() {
                    order = (0..total).collect();
                    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (epoch << 32)));
                    epoch += 1;
                    cursor = 0;
                }
                picks.push(order[cursor]);
                cursor += 1;
            }
            let batch = data
                .load(&picks)
                .map(|samples| collate(&samples, w as u32, h as u32));
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Trains a run; the task of [`crate::backend::dispatch`].
pub struct TrainTask<'a> {
    pub config: &'a RunConfig,
    pub data: TrainingData,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<TrainSummary, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        train::<B>(self.config, self.data, &device)
    }
}

/// The learning-rate schedule: linear warm-up from 1% times a cosine decay, both burn's.
fn lr_schedule(config: &RunConfig) -> Result<impl LrScheduler, TrainError> {
    let o = &config.optimizer;
    let mut schedule = ComposedLrSchedulerConfig::new().cosine(
        CosineAnnealingLrSchedulerConfig::new(o.lr, config.train.steps)
            .with_min_lr(o.lr * o.min_lr_ratio),
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

fn train<B>(
    config: &RunConfig,
    data: TrainingData,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::Io {
        path: run_dir.clone(),
        source: e,
    })?;
    write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;

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
    let batches = spawn_loader(data, config);
    let bar = progress_bar(config.train.steps);
    let start = Instant::now();
    let mut last = LossValues::default();
    let num_classes = classes.len();
    for step in 1..=config.train.steps {
        let batch = batches
            .recv()
            .map_err(|_| TrainError::Data("the data loader stopped unexpectedly".into()))??;
        let lr = schedule.step();
        let parts = batch_loss(&net, &batch, num_classes, config, device);
        let grads = GradientsParams::from_grads(parts.total.backward(), &net);
        net = optimizer.step(lr, net, grads);

        if step % config.train.log_every == 0 || step == config.train.steps || step == 1 {
            last = LossValues::read(&parts);
            if !last.total.is_finite() {
                return Err(TrainError::Diverged {
                    step,
                    loss: last.total,
                });
            }
            let elapsed = start.elapsed().as_secs_f64();
            let ips = (step * config.train.batch_size) as f64 / elapsed.max(1e-9);
            let line = MetricsLine {
                step,
                lr,
                losses: &last,
                images_per_second: ips,
                elapsed_seconds: elapsed,
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
                    "step {step}/{} {} lr {lr:.2e} {ips:.1} img/s",
                    config.train.steps,
                    last.short()
                );
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let card = ModelCard {
        format: MODEL_FORMAT.into(),
        architecture: arch,
        classes,
        input: config.model.input.clone(),
        normalization: Normalization::default(),
        decode: config.eval,
        provenance: Provenance {
            steps: config.train.steps,
            ..provenance
        },
    };
    let checkpoint = run_dir.join("checkpoints").join("final.safetensors");
    let checkpoint_hash = save_model(&net.valid(), &card, &checkpoint)?;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        checkpoint,
        checkpoint_hash,
        steps: config.train.steps,
        parameters,
        final_losses: last,
        images_per_second: (config.train.steps * config.train.batch_size) as f64 / seconds,
        seconds,
    };
    write_atomic(
        &run_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("serialises")
            .as_bytes(),
    )?;
    Ok(summary)
}
