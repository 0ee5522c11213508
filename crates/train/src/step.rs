//! One optimisation step, the only one percept has: the trainer, every data-parallel replica
//! ([`crate::data_parallel::Replica::step`]) and `percept bench train` run this code.
//!
//! A step over the micro-batches of one replica: forward and multi-task loss on each (the loss
//! divided by their number, so the gradient is their mean), backward, gradients summed; then
//! the average with the other replicas (if any), the finiteness check and global-norm clip, and
//! the update. A non-finite step leaves the weights and the batch-norm statistics as they were.
//! A [`PhaseHook`] is called at each phase boundary: the benchmark syncs the device and reads
//! the clock there; the trainer passes `()`.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::AutodiffBackend;
use percept_data::Batch;
use percept_eval::inputs::{batch_tensors, detection_targets};
use percept_eval::metrics_log::LossValues;
use percept_model::loss::distances_to_boxes;
use percept_model::{
    assign_targets, autocast, distillation_loss, freeze_norm_statistics, multitask_loss,
    use_conv_kernels, DetectionOutput, DetectionTargets, LossParts, PerceptionNet,
    PerceptionOutput, Predictions,
};

use crate::config::RunConfig;
use crate::finetune::{frozen_norms, FinetuneTerms};
use crate::optim::{GradCheck, RunOptimizer};
use crate::running_stats::RunningStats;
use crate::TrainError;

/// The phases of a step, in order; forward-and-loss and backward repeat per micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Forward pass and multi-task loss of one micro-batch.
    ForwardLoss,
    /// Backward pass of one micro-batch, its gradients added to the step's.
    Backward,
    /// The gradients and loss terms averaged over the replicas (nothing with one).
    Reduce,
    /// The finiteness check and the clip.
    Check,
    /// The optimiser update (or, after a non-finite check, the statistics restored).
    Update,
}

impl Phase {
    /// Position in [`Phase`] order.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Called at the end of each phase; an error stops the step.
pub trait PhaseHook {
    fn phase_done(&mut self, phase: Phase) -> Result<(), TrainError>;
}

/// No hook: the step runs without pauses.
impl PhaseHook for () {
    fn phase_done(&mut self, _: Phase) -> Result<(), TrainError> {
        Ok(())
    }
}

impl<F: FnMut(Phase) -> Result<(), TrainError>> PhaseHook for F {
    fn phase_done(&mut self, phase: Phase) -> Result<(), TrainError> {
        self(phase)
    }
}

/// What one optimisation step found.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The loss terms ([`loss_terms`] order), averaged over micro-batches and replicas.
    pub values: Vec<f32>,
    pub check: GradCheck,
}

/// How a step's summed gradients and loss terms become every replica's mean; `None`: a
/// single replica, nothing to average.
pub type Reduce<'a, B> = Option<
    &'a mut dyn FnMut(
        &PerceptionNet<B>,
        GradientsParams,
        Tensor<<B as AutodiffBackend>::InnerBackend, 1>,
    ) -> Result<
        (
            GradientsParams,
            Tensor<<B as AutodiffBackend>::InnerBackend, 1>,
        ),
        TrainError,
    >,
>;

/// The network, optimiser and device a step updates.
pub struct StepState<'a, B: AutodiffBackend> {
    pub net: PerceptionNet<B>,
    pub optimizer: &'a mut RunOptimizer<B>,
    pub device: &'a B::Device,
    /// The ids of the batch-norm running statistics (restored after a non-finite step).
    pub running_ids: &'a [burn::module::ParamId],
    /// A fine-tune's distillation and L2-SP terms.
    pub finetune: Option<&'a FinetuneTerms<B>>,
}

/// One optimisation step on `micro` (see the module docs); `poison` multiplies the loss by
/// NaN (fault injection for tests). Returns the updated network.
#[allow(clippy::too_many_arguments)]
pub fn optimisation_step<B: AutodiffBackend>(
    state: StepState<'_, B>,
    micro: &[Batch],
    lr: f64,
    config: &RunConfig,
    num_classes: usize,
    poison: bool,
    reduce: Reduce<'_, B>,
    hook: &mut dyn PhaseHook,
) -> Result<(PerceptionNet<B>, StepOutcome), TrainError> {
    let StepState {
        net,
        optimizer,
        device,
        running_ids,
        finetune,
    } = state;
    let running = RunningStats::snapshot(&net, running_ids);
    let mut accumulator = GradientsAccumulator::<PerceptionNet<B>>::new();
    let mut losses: Option<Tensor<B::InnerBackend, 1>> = None;
    let count = micro.len();
    for batch in micro {
        let (output, mut parts) = forward_and_loss(&net, batch, num_classes, config, device);
        if let Some((teacher, weight)) = finetune.and_then(|f| f.teacher.as_ref()) {
            let sources = &finetune.expect("terms").sources;
            let distilled = distill(&output, teacher, sources, batch, config, device);
            parts.total = parts.total + distilled.clone().mul_scalar(*weight);
            parts.distillation = Some(distilled);
        }
        drop(output);
        if poison {
            parts.total = parts.total.mul_scalar(f32::NAN);
        }
        let values = loss_terms(&parts);
        losses = Some(match losses {
            Some(l) => l + values,
            None => values,
        });
        hook.phase_done(Phase::ForwardLoss)?;
        let objective = if count > 1 {
            parts.total.div_scalar(count as f32)
        } else {
            parts.total
        };
        let grads = GradientsParams::from_grads(objective.backward(), &net);
        accumulator.accumulate(&net, grads);
        hook.phase_done(Phase::Backward)?;
    }
    let mut grads = accumulator.grads();
    let mut losses = losses.expect("at least one micro-batch");
    if count > 1 {
        losses = losses.div_scalar(count as f32);
    }
    if let Some(penalty) = finetune.and_then(|f| f.apply_l2sp(&net, &mut grads)) {
        // The penalty joins the total and is logged as the last term.
        let n = losses.dims()[0];
        let total = losses.clone().slice(0..1) + penalty.clone();
        losses = Tensor::cat(vec![total, losses.slice(1..n), penalty], 0);
    }
    if let Some(reduce) = reduce {
        (grads, losses) = reduce(&net, grads, losses)?;
    }
    hook.phase_done(Phase::Reduce)?;
    let (values, check) = optimizer.check_and_clip(&net, &mut grads, losses);
    hook.phase_done(Phase::Check)?;
    let net = if check.finite {
        optimizer.step(lr, net, grads)
    } else {
        running.restore(net)
    };
    hook.phase_done(Phase::Update)?;
    Ok((net, StepOutcome { values, check }))
}

/// One micro-batch's loss (forward only; the step runs backward).
pub fn batch_loss<B: Backend>(
    net: &PerceptionNet<B>,
    batch: &Batch,
    num_classes: usize,
    config: &RunConfig,
    device: &B::Device,
) -> LossParts<B> {
    forward_and_loss(net, batch, num_classes, config, device).1
}

/// One micro-batch's forward pass (the frozen parts' batch norms on their running statistics)
/// and its loss.
fn forward_and_loss<B: Backend>(
    net: &PerceptionNet<B>,
    batch: &Batch,
    num_classes: usize,
    config: &RunConfig,
    device: &B::Device,
) -> (PerceptionOutput<B>, LossParts<B>) {
    let (images, seg) = batch_tensors::<B>(batch, device);
    let output = {
        // The casts are autodiff ops: backward needs no guard.
        let _autocast = autocast(config.train.precision);
        let _kernels = use_conv_kernels(config.train.conv);
        let _norms = freeze_norm_statistics(frozen_norms(config));
        net.forward(images)
    };
    let det_targets = output
        .detection
        .as_ref()
        .map(|out| assign_batch(out, batch, num_classes));
    let loss = multitask_loss(&output, det_targets.as_ref(), &seg, &config.loss);
    (output, loss)
}

/// The distillation term of `student` (this batch's outputs) towards the frozen `teacher` run
/// on the same images, without autodiff.
fn distill<B: AutodiffBackend>(
    student: &PerceptionOutput<B>,
    teacher: &PerceptionNet<B::InnerBackend>,
    sources: &[Vec<usize>],
    batch: &Batch,
    config: &RunConfig,
    device: &B::Device,
) -> Tensor<B, 1> {
    let (images, _) = batch_tensors::<B::InnerBackend>(batch, device);
    let taught = {
        let _autocast = autocast(config.train.precision);
        let _kernels = use_conv_kernels(config.train.conv);
        teacher.forward(images)
    };
    let lift = |t: Option<Tensor<B::InnerBackend, 4>>| t.map(Tensor::<B, 4>::from_inner);
    let teacher_output = PerceptionOutput {
        detection: taught.detection.map(|d| DetectionOutput {
            class_logits: Tensor::from_inner(d.class_logits),
            box_logits: Tensor::from_inner(d.box_logits),
            distances: Tensor::from_inner(d.distances),
        }),
        drivable: lift(taught.drivable),
        lanes: lift(taught.lanes),
    };
    distillation_loss(student, &teacher_output, sources).total
}

/// Task-aligned assignment of a batch's boxes, ranked by the forward pass's own (detached)
/// predictions; read to the host in one transfer.
pub fn assign_batch<B: Backend>(
    output: &DetectionOutput<B>,
    batch: &Batch,
    num_classes: usize,
) -> DetectionTargets {
    let scores = sigmoid(output.class_logits.clone().detach()).flatten::<1>(0, 2);
    let boxes = distances_to_boxes(output.distances.clone().detach(), batch.height, batch.width)
        .flatten::<1>(0, 2);
    let split = scores.dims()[0];
    let values: Vec<f32> = Tensor::cat(vec![scores, boxes], 0)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    let (scores, boxes) = values.split_at(split);
    assign_targets(
        batch.height,
        batch.width,
        &detection_targets(batch),
        num_classes,
        &Predictions { scores, boxes },
    )
}

/// The loss terms as one detached `[n]` tensor: total first, then the present terms in
/// [`LossValues`] order (read with the gradient norm in one transfer).
pub fn loss_terms<B: AutodiffBackend>(parts: &LossParts<B>) -> Tensor<B::InnerBackend, 1> {
    let terms = [
        Some(&parts.total),
        parts.classification.as_ref(),
        parts.box_iou.as_ref(),
        parts.dfl.as_ref(),
        parts.drivable.as_ref(),
        parts.lanes.as_ref(),
        parts.distillation.as_ref(),
    ];
    Tensor::cat(
        terms
            .into_iter()
            .flatten()
            .map(|t| t.clone().inner())
            .collect(),
        0,
    )
}

/// [`loss_terms`]' values back as [`LossValues`], given which terms are present
/// (classification, box IoU, box distribution, drivable, lanes, distillation, L2-SP).
pub fn loss_values(values: &[f32], present: [bool; 7]) -> LossValues {
    let mut it = values.iter().copied();
    let total = it.next().unwrap_or(f32::NAN);
    let mut next = |p: bool| if p { it.next() } else { None };
    LossValues {
        total,
        classification: next(present[0]),
        box_iou: next(present[1]),
        dfl: next(present[2]),
        drivable: next(present[3]),
        lanes: next(present[4]),
        distillation: next(present[5]),
        l2sp: next(present[6]),
    }
}
