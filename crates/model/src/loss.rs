//! Multi-task loss.
//!
//! - Detection classification: sigmoid focal loss (alpha 0.25, gamma 2) over every anchor and
//!   class, summed and divided by the number of positives. Anchors of weight 0 (inside ignore
//!   regions, or of images whose dataset does not label detection) add nothing.
//! - Detection boxes: GIoU loss `1 - GIoU(pred, target)` over the positives, divided by their
//!   number.
//! - Drivable area and lane lines: binary cross-entropy (mean over pixels) plus soft Dice
//!   (per image), which keeps thin lane lines from drowning in background; averaged over the
//!   images whose dataset labels the task (0 when none does).
//!
//! The total is the weighted sum, weights from the run config.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use serde::{Deserialize, Serialize};

use crate::assign::DetectionTargets;
use crate::detection_head::{anchor_points, DetectionOutput};
use crate::network::PerceptionOutput;

const FOCAL_ALPHA: f64 = 0.25;
const EPS: f64 = 1e-7;

/// Weight of each term in the total loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    pub classification: f64,
    pub box_iou: f64,
    pub drivable: f64,
    pub lanes: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            classification: 1.0,
            box_iou: 2.5,
            drivable: 1.0,
            lanes: 1.0,
        }
    }
}

/// Segmentation targets, `[batch, height, width]` with values 0/1, and per image whether its
/// dataset labels the task (`[batch]`, 1 or 0).
#[derive(Debug, Clone)]
pub struct SegmentationTargets<B: Backend> {
    pub drivable: Tensor<B, 3>,
    pub lanes: Tensor<B, 3>,
    pub drivable_labelled: Tensor<B, 1>,
    pub lanes_labelled: Tensor<B, 1>,
}

/// The total and each term (unweighted), each a one-element tensor. A term is `None` when its
/// task is off.
#[derive(Debug, Clone)]
pub struct LossParts<B: Backend> {
    pub total: Tensor<B, 1>,
    pub classification: Option<Tensor<B, 1>>,
    pub box_iou: Option<Tensor<B, 1>>,
    pub drivable: Option<Tensor<B, 1>>,
    pub lanes: Option<Tensor<B, 1>>,
}

/// Numerically stable binary cross-entropy with logits, element-wise.
pub fn bce_with_logits<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    targets: Tensor<B, D>,
) -> Tensor<B, D> {
    // max(x, 0) - x * t + log(1 + exp(-|x|))
    logits.clone().clamp_min(0.0) - logits.clone() * targets
        + logits.abs().neg().exp().add_scalar(1.0).log()
}

/// Sigmoid focal loss, element-wise.
pub fn focal_loss<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    targets: Tensor<B, D>,
) -> Tensor<B, D> {
    let p = sigmoid(logits.clone());
    let ce = bce_with_logits(logits, targets.clone());
    // 1 - p_t = p + t - 2 p t
    let one_minus_pt = p.clone() + targets.clone() - p * targets.clone() * 2.0;
    let alpha = targets
        .mul_scalar(2.0 * FOCAL_ALPHA - 1.0)
        .add_scalar(1.0 - FOCAL_ALPHA);
    alpha * one_minus_pt.powi_scalar(2) * ce
}

/// Boxes from anchor points and distances: `[batch, anchors, 4]` xyxy in input pixels.
pub fn distances_to_boxes<B: Backend>(
    distances: Tensor<B, 3>,
    height: usize,
    width: usize,
) -> Tensor<B, 3> {
    let device = distances.device();
    let anchors = anchor_points(height, width);
    let n = anchors.len();
    let centres: Vec<f32> = anchors.iter().flat_map(|a| [a.x, a.y, a.x, a.y]).collect();
    let signs = Tensor::<B, 1>::from_floats([-1.0, -1.0, 1.0, 1.0], &device).reshape([1, 1, 4]);
    let centres = Tensor::<B, 1>::from_floats(centres.as_slice(), &device).reshape([1, n, 4]);
    centres + distances * signs
}

/// GIoU of paired boxes `[batch, anchors, 4]` -> `[batch, anchors]`.
pub fn generalized_iou<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 2> {
    let coord = |t: &Tensor<B, 3>, i: usize| t.clone().narrow(2, i, 1).squeeze_dim::<2>(2);
    let [ax1, ay1, ax2, ay2] = [0, 1, 2, 3].map(|i| coord(&a, i));
    let [bx1, by1, bx2, by2] = [0, 1, 2, 3].map(|i| coord(&b, i));
    let area_a =
        (ax2.clone() - ax1.clone()).clamp_min(0.0) * (ay2.clone() - ay1.clone()).clamp_min(0.0);
    let area_b =
        (bx2.clone() - bx1.clone()).clamp_min(0.0) * (by2.clone() - by1.clone()).clamp_min(0.0);
    let iw = (ax2.clone().min_pair(bx2.clone()) - ax1.clone().max_pair(bx1.clone())).clamp_min(0.0);
    let ih = (ay2.clone().min_pair(by2.clone()) - ay1.clone().max_pair(by1.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = area_a + area_b - inter.clone();
    let ew = ax2.max_pair(bx2) - ax1.min_pair(bx1);
    let eh = ay2.max_pair(by2) - ay1.min_pair(by1);
    let enclosing = ew * eh;
    inter / (union.clone() + EPS) - (enclosing.clone() - union) / (enclosing + EPS)
}

/// Detection loss terms `(classification, box)`.
pub fn detection_loss<B: Backend>(
    output: &DetectionOutput<B>,
    targets: &DetectionTargets,
    height: usize,
    width: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let device = output.class_logits.device();
    let [b, n, c] = [targets.batch, targets.anchors, targets.num_classes];
    let tensor3 =
        |v: &[f32], shape: [usize; 3]| Tensor::<B, 1>::from_floats(v, &device).reshape(shape);
    let class_targets = tensor3(&targets.classes, [b, n, c]);
    let box_targets = tensor3(&targets.boxes, [b, n, 4]);
    let positive =
        Tensor::<B, 1>::from_floats(targets.positive.as_slice(), &device).reshape([b, n]);
    let weight = tensor3(&targets.weight, [b, n, 1]);
    let norm = targets.num_positive.max(1) as f64;

    let classification =
        (focal_loss(output.class_logits.clone(), class_targets) * weight).sum() / norm;
    let boxes = distances_to_boxes(output.distances.clone(), height, width);
    let giou = generalized_iou(boxes, box_targets);
    let box_loss = ((giou.neg() + 1.0) * positive).sum() / norm;
    (classification, box_loss)
}

/// BCE + soft Dice for one binary segmentation task, averaged over the labelled images.
/// `logits: [batch, 1, h, w]`, `targets: [batch, h, w]`, `labelled: [batch]` (1 or 0).
pub fn segmentation_loss<B: Backend>(
    logits: Tensor<B, 4>,
    targets: Tensor<B, 3>,
    labelled: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let [b, _, h, w] = logits.dims();
    let logits = logits.reshape([b, h * w]);
    let targets = targets.reshape([b, h * w]);
    let bce = bce_with_logits(logits.clone(), targets.clone()).mean_dim(1);
    let p = sigmoid(logits);
    let inter = (p.clone() * targets.clone()).sum_dim(1);
    let denom = p.sum_dim(1) + targets.sum_dim(1);
    let dice = (inter * 2.0 + 1.0) / (denom + 1.0);
    let per_image = (bce - dice + 1.0).reshape([b]);
    let count = labelled.clone().sum().clamp_min(1.0);
    (per_image * labelled).sum() / count
}

/// The weighted multi-task loss of a forward pass. `detection` holds the assigned targets of
/// the batch and is required when the detection task is on.
pub fn multitask_loss<B: Backend>(
    output: &PerceptionOutput<B>,
    detection: Option<&DetectionTargets>,
    segmentation: &SegmentationTargets<B>,
    weights: &LossWeights,
) -> LossParts<B> {
    let [_, h, w] = segmentation.drivable.dims();
    let (classification, box_iou) = match (&output.detection, detection) {
        (Some(out), Some(t)) => {
            let (c, b) = detection_loss(out, t, h, w);
            (Some(c), Some(b))
        }
        _ => (None, None),
    };
    let drivable = output.drivable.clone().map(|l| {
        segmentation_loss(
            l,
            segmentation.drivable.clone(),
            segmentation.drivable_labelled.clone(),
        )
    });
    let lanes = output.lanes.clone().map(|l| {
        segmentation_loss(
            l,
            segmentation.lanes.clone(),
            segmentation.lanes_labelled.clone(),
        )
    });
    let terms = [
        (&classification, weights.classification),
        (&box_iou, weights.box_iou),
        (&drivable, weights.drivable),
        (&lanes, weights.lanes),
    ];
    let total = terms
        .iter()
        .filter_map(|(t, wt)| t.as_ref().map(|t| t.clone() * *wt))
        .reduce(|a, b| a + b)
        .expect("a validated network has at least one task");
    LossParts {
        total,
        classification,
        box_iou,
        drivable,
        lanes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn bce_matches_reference_values() {
        let d = Default::default();
        let x = Tensor::<B, 1>::from_floats([0.0, 2.0, -3.0, 50.0], &d);
        let t = Tensor::<B, 1>::from_floats([1.0, 0.0, 0.0, 1.0], &d);
        let v: Vec<f32> = bce_with_logits(x, t).into_data().to_vec().unwrap();
        // -ln(sigmoid(0)) = ln 2; -ln(1 - sigmoid(2)) = ln(1 + e^2); ln(1 + e^-3); ~0.
        let want = [
            2f32.ln(),
            (1.0 + 2f32.exp()).ln(),
            (1.0 + (-3f32).exp()).ln(),
            0.0,
        ];
        for (a, b) in v.iter().zip(want) {
            assert!(close(*a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn focal_loss_hand_computed() {
        let d = Default::default();
        let x = Tensor::<B, 1>::from_floats([0.0, 0.0], &d);
        let t = Tensor::<B, 1>::from_floats([1.0, 0.0], &d);
        let v: Vec<f32> = focal_loss(x, t).into_data().to_vec().unwrap();
        // p = 0.5: positive 0.25 * 0.25 * ln2, negative 0.75 * 0.25 * ln2.
        assert!(close(v[0], 0.25 * 0.25 * 2f32.ln()));
        assert!(close(v[1], 0.75 * 0.25 * 2f32.ln()));
    }

    #[test]
    fn giou_hand_computed() {
        let d = Default::default();
        let a = Tensor::<B, 1>::from_floats([0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 1.0, 1.0], &d)
            .reshape([1, 2, 4]);
        let b = Tensor::<B, 1>::from_floats([1.0, 1.0, 3.0, 3.0, 0.0, 0.0, 1.0, 1.0], &d)
            .reshape([1, 2, 4]);
        let v: Vec<f32> = generalized_iou(a, b).into_data().to_vec().unwrap();
        // inter 1, union 7, enclosing 9: 1/7 - 2/9.
        assert!(close(v[0], 1.0 / 7.0 - 2.0 / 9.0), "{}", v[0]);
        assert!(close(v[1], 1.0));
    }

    #[test]
    fn boxes_from_distances() {
        let d = Default::default();
        // 32x32 input: 16 + 4 + 1 anchors; first anchor at (4, 4).
        let dist = Tensor::<B, 3>::ones([1, 21, 4], &d);
        let v: Vec<f32> = distances_to_boxes(dist, 32, 32)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(&v[0..4], &[3.0, 3.0, 5.0, 5.0]);
        // Last anchor: level 2 (stride 32) centre (16, 16).
        assert_eq!(&v[80..84], &[15.0, 15.0, 17.0, 17.0]);
    }

    #[test]
    fn perfect_segmentation_has_low_loss() {
        let d = Default::default();
        let t = Tensor::<B, 3>::from_floats([[[1.0, 0.0], [0.0, 1.0]]], &d);
        let good = t
            .clone()
            .mul_scalar(40.0)
            .sub_scalar(20.0)
            .reshape([1, 1, 2, 2]);
        let bad = good.clone().neg();
        let one = || Tensor::<B, 1>::ones([1], &d);
        let lg: f32 = segmentation_loss(good, t.clone(), one()).into_scalar();
        let lb: f32 = segmentation_loss(bad, t, one()).into_scalar();
        assert!(lg < 0.2, "{lg}");
        assert!(lb > 10.0, "{lb}");
    }

    #[test]
    fn unlabelled_images_add_no_segmentation_loss() {
        let d = Default::default();
        let t = Tensor::<B, 3>::from_floats([[[1.0, 0.0], [0.0, 1.0]]], &d);
        let logits = Tensor::<B, 4>::from_floats([[[[0.5, -1.0], [2.0, 0.0]]]], &d);
        let alone: f32 =
            segmentation_loss(logits.clone(), t.clone(), Tensor::ones([1], &d)).into_scalar();
        // Hand-computed: BCE of (0.5,1), (-1,0), (2,0), (0,1) averaged, plus 1 - Dice.
        let bce = |x: f32, y: f32| x.max(0.0) - x * y + (1.0 + (-x.abs()).exp()).ln();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let mean_bce = (bce(0.5, 1.0) + bce(-1.0, 0.0) + bce(2.0, 0.0) + bce(0.0, 1.0)) / 4.0;
        let (p, inter) = (
            sig(0.5) + sig(-1.0) + sig(2.0) + sig(0.0),
            sig(0.5) + sig(0.0),
        );
        let want = mean_bce + 1.0 - (2.0 * inter + 1.0) / (p + 2.0 + 1.0);
        assert!(close(alone, want), "{alone} vs {want}");

        // A second, unlabelled image with a wrong target changes nothing.
        let targets = Tensor::cat(vec![t.clone(), t.clone().neg().add_scalar(1.0)], 0);
        let both = Tensor::cat(vec![logits.clone(), logits.clone()], 0);
        let labelled = Tensor::<B, 1>::from_floats([1.0, 0.0], &d);
        let l: f32 = segmentation_loss(both.clone(), targets.clone(), labelled).into_scalar();
        assert!(close(l, alone), "{l} vs {alone}");
        let none: f32 = segmentation_loss(both, targets, Tensor::zeros([2], &d)).into_scalar();
        assert_eq!(none, 0.0);
    }
}
