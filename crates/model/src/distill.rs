//! Distillation from a frozen teacher: the base model of a country fine-tune, run on the same
//! batch, whose outputs are soft targets for the classes and tasks both networks share. It
//! keeps the global model's skills where replaying the global data is not allowed (a
//! residency-bound site has only its own frames; see `percept_train::finetune`).
//!
//! Every term is a KL divergence, so it is 0 when the student reproduces the teacher:
//! - classes: per anchor and shared class, the Bernoulli KL from the teacher's probability
//!   (a merged class's probability is that any of its sources is present, `1 - prod(1 - p)`),
//!   summed and divided by the teacher's summed probability (at least 1), as the detection
//!   loss divides by its targets' summed quality;
//! - boxes: the KL between the teacher's and the student's distributions over each edge's
//!   distance bins (localisation distillation, Zheng et al., CVPR 2022), averaged over the four
//!   edges and weighted per anchor by the teacher's highest shared-class probability;
//! - drivable area and lanes: the per-pixel Bernoulli KL, averaged.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use burn::tensor::Int;

use crate::detection_head::REG_BINS;
use crate::loss::bce_with_logits;
use crate::network::PerceptionOutput;

/// The terms of [`distillation_loss`] (present when both networks have the task).
#[derive(Debug, Clone)]
pub struct DistillationParts<B: Backend> {
    pub total: Tensor<B, 1>,
    pub classes: Option<Tensor<B, 1>>,
    pub boxes: Option<Tensor<B, 1>>,
    pub drivable: Option<Tensor<B, 1>>,
    pub lanes: Option<Tensor<B, 1>>,
}

/// Bernoulli KL(teacher || student) per element, from logits.
fn bernoulli_kl<B: Backend, const D: usize>(
    student: Tensor<B, D>,
    teacher_logits: Tensor<B, D>,
    teacher_p: Tensor<B, D>,
) -> Tensor<B, D> {
    // BCE(student, p) - H(p), and H(p) = BCE(teacher, p).
    bce_with_logits(student, teacher_p.clone()) - bce_with_logits(teacher_logits, teacher_p)
}

/// The distillation loss of `student` towards `teacher` (same batch; `teacher`'s tensors carry
/// no gradient). `sources[c]` lists the teacher classes student class `c` comes from (empty:
/// a new class, not distilled).
pub fn distillation_loss<B: Backend>(
    student: &PerceptionOutput<B>,
    teacher: &PerceptionOutput<B>,
    sources: &[Vec<usize>],
) -> DistillationParts<B> {
    let mut classes = None;
    let mut boxes = None;
    if let (Some(s), Some(t)) = (&student.detection, &teacher.detection) {
        let distilled: Vec<usize> = (0..sources.len())
            .filter(|&c| !sources[c].is_empty())
            .collect();
        if !distilled.is_empty() {
            let device = s.class_logits.device();
            let [b, a, _] = s.class_logits.dims();
            let teacher_p = sigmoid(t.class_logits.clone());
            // Per distilled class: its probability under the teacher, and a logit of it (the
            // entropy term of the KL needs one).
            let mut probs = Vec::with_capacity(distilled.len());
            for &c in &distilled {
                let p = if sources[c].len() == 1 {
                    let g = sources[c][0];
                    teacher_p.clone().slice([0..b, 0..a, g..g + 1])
                } else {
                    let mut absent = Tensor::<B, 3>::ones([b, a, 1], &device);
                    for &g in &sources[c] {
                        absent = absent
                            * teacher_p
                                .clone()
                                .slice([0..b, 0..a, g..g + 1])
                                .neg()
                                .add_scalar(1.0);
                    }
                    absent.neg().add_scalar(1.0)
                };
                probs.push(p);
            }
            let target = Tensor::cat(probs, 2);
            let eps = 1e-6;
            let clamped = target.clone().clamp(eps, 1.0 - eps);
            let teacher_logits = (clamped.clone() / clamped.neg().add_scalar(1.0)).log();
            let index = Tensor::<B, 1, Int>::from_ints(
                distilled
                    .iter()
                    .map(|&c| c as i64)
                    .collect::<Vec<_>>()
                    .as_slice(),
                &device,
            );
            let student_logits = s.class_logits.clone().select(2, index);
            let kl = bernoulli_kl(student_logits, teacher_logits, target.clone());
            let norm = target.clone().sum().clamp_min(1.0);
            classes = Some(kl.sum() / norm);
            // Boxes: where the teacher sees a shared-class object.
            let weight = target.max_dim(2).reshape([b, a]);
            let bins = |logits: Tensor<B, 3>| logits.reshape([b, a, 4, REG_BINS]);
            let teacher_bins = bins(t.box_logits.clone());
            let p = softmax(teacher_bins.clone(), 3);
            let log_p = log_softmax(teacher_bins, 3);
            let log_q = log_softmax(bins(s.box_logits.clone()), 3);
            let edge_kl = (p * (log_p - log_q)).sum_dim(3).mean_dim(2).reshape([b, a]);
            let weight_sum = weight.clone().sum().clamp_min(1.0);
            boxes = Some((edge_kl * weight).sum() / weight_sum);
        }
    }
    let segmentation = |s: &Option<Tensor<B, 4>>, t: &Option<Tensor<B, 4>>| match (s, t) {
        (Some(s), Some(t)) => {
            let p = sigmoid(t.clone());
            Some(bernoulli_kl(s.clone(), t.clone(), p).mean())
        }
        _ => None,
    };
    let drivable = segmentation(&student.drivable, &teacher.drivable);
    let lanes = segmentation(&student.lanes, &teacher.lanes);
    let total = [&classes, &boxes, &drivable, &lanes]
        .into_iter()
        .flatten()
        .cloned()
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| {
            let device = student
                .drivable
                .as_ref()
                .map(|t| t.device())
                .or_else(|| student.detection.as_ref().map(|d| d.class_logits.device()))
                .or_else(|| student.lanes.as_ref().map(|t| t.device()))
                .expect("a network has at least one task");
            Tensor::zeros([1], &device)
        });
    DistillationParts {
        total,
        classes,
        boxes,
        drivable,
        lanes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection_head::DetectionOutput;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

    fn output(
        classes: Tensor<B, 3>,
        boxes: Tensor<B, 3>,
        seg: Tensor<B, 4>,
    ) -> PerceptionOutput<B> {
        let [b, a, _] = classes.dims();
        PerceptionOutput {
            detection: Some(DetectionOutput {
                class_logits: classes,
                box_logits: boxes,
                distances: Tensor::zeros([b, a, 4], &Default::default()),
            }),
            drivable: Some(seg.clone()),
            lanes: Some(seg),
        }
    }

    fn random(seed: u64) -> PerceptionOutput<B> {
        let d = Default::default();
        B::seed(&d, seed);
        output(
            Tensor::random([2, 5, 3], Distribution::Normal(0.0, 2.0), &d),
            Tensor::random([2, 5, 4 * REG_BINS], Distribution::Normal(0.0, 1.0), &d),
            Tensor::random([2, 1, 4, 4], Distribution::Normal(0.0, 2.0), &d),
        )
    }

    fn value(t: &Tensor<B, 1>) -> f32 {
        t.clone().into_scalar()
    }

    #[test]
    fn a_student_equal_to_its_teacher_has_zero_loss() {
        let t = random(3);
        let sources = vec![vec![0], vec![1], vec![2]];
        let parts = distillation_loss(&t, &t, &sources);
        assert!(value(&parts.total).abs() < 1e-5, "{}", value(&parts.total));
        let other = random(4);
        let parts = distillation_loss(&other, &t, &sources);
        for term in [&parts.classes, &parts.boxes, &parts.drivable, &parts.lanes] {
            assert!(value(term.as_ref().unwrap()) > 1e-3);
        }
    }

    #[test]
    fn merged_and_new_classes_by_hand() {
        let d = Default::default();
        // One image, one anchor. Teacher classes a, b, c with p = 0.5, 0.25, 0.9 (logits).
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let teacher = Tensor::<B, 3>::from_data(
            TensorData::new(vec![logit(0.5), logit(0.25), logit(0.9)], [1, 1, 3]),
            &d,
        );
        // Student classes: ab (merged a + b), new (not distilled); logits 0 and 5.
        let student = Tensor::<B, 3>::from_data(TensorData::new(vec![0.0f32, 5.0], [1, 1, 2]), &d);
        let zeros_boxes = Tensor::<B, 3>::zeros([1, 1, 4 * REG_BINS], &d);
        let seg = Tensor::<B, 4>::zeros([1, 1, 2, 2], &d);
        let parts = distillation_loss(
            &output(student, zeros_boxes.clone(), seg.clone()),
            &output(teacher, zeros_boxes, seg),
            &[vec![0, 1], vec![]],
        );
        // p(ab) = 1 - 0.5 * 0.75 = 0.625; student q = 0.5.
        let (p, q) = (0.625f64, 0.5f64);
        let kl = p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        // Divided by the summed teacher probability, clamped to 1.
        let got = value(parts.classes.as_ref().unwrap()) as f64;
        assert!((got - kl).abs() < 1e-5, "{got} vs {kl}");
        // Equal (uniform) box distributions and equal masks: no loss there.
        assert!(value(parts.boxes.as_ref().unwrap()).abs() < 1e-6);
        assert!(value(parts.drivable.as_ref().unwrap()).abs() < 1e-6);
    }
}
