//! Multi-task loss.
//!
//! Detection follows YOLOv8's recipe, on targets from task-aligned assignment ([`crate::assign`]).
//! Each term is a sum divided by the batch's summed positive quality
//! ([`DetectionTargets::normaliser`]):
//! - classification: binary cross-entropy over every anchor and class against quality-aware
//!   targets (a positive's target is its quality, not 1: VarifocalNet's and TOOD's IoU-aware
//!   classification). Anchors of weight 0 (inside ignore regions, or of images whose dataset
//!   does not label detection) add nothing.
//! - box IoU: `1 - CIoU(pred, target)` (Zheng et al., AAAI 2020) over the positives, each
//!   weighted by its quality;
//! - box distribution (DFL, Li et al., NeurIPS 2020): each edge's distance, in strides, split
//!   between the two nearest bins; cross-entropy of the edge's distribution against that, mean
//!   over the four edges, weighted by quality.
//! - Drivable area and lane lines: binary cross-entropy (mean over pixels) plus soft Dice
//!   (per image), which keeps thin lane lines from drowning in background; averaged over the
//!   images whose dataset labels the task (0 when none does).
//!
//! The total is the weighted sum, weights from the run config.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use serde::{Deserialize, Serialize};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, TensorData};

use crate::assign::DetectionTargets;
use crate::detection_head::{anchor_points, DetectionOutput, REG_BINS};
use crate::network::PerceptionOutput;

const EPS: f64 = 1e-7;

/// Weight of each term in the total loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    pub classification: f64,
    pub box_iou: f64,
    /// The box distribution term (DFL).
    #[serde(default = "default_dfl")]
    pub dfl: f64,
    pub drivable: f64,
    pub lanes: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            classification: 1.0,
            box_iou: 5.0,
            dfl: default_dfl(),
            drivable: 1.0,
            lanes: 1.0,
        }
    }
}

fn default_dfl() -> f64 {
    1.0
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
    pub dfl: Option<Tensor<B, 1>>,
    pub drivable: Option<Tensor<B, 1>>,
    pub lanes: Option<Tensor<B, 1>>,
    /// A fine-tune's distillation term (unweighted; the caller adds it to `total`).
    pub distillation: Option<Tensor<B, 1>>,
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

/// CIoU of paired boxes `[n, 4]` -> `[n]` (Zheng et al., AAAI 2020): IoU minus the squared
/// centre distance over the enclosing box's squared diagonal, minus `alpha * v` for the
/// aspect-ratio mismatch `v`. `alpha` is a constant of the gradient, as in the paper.
pub fn complete_iou<B: Backend>(pred: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    let coord = |t: &Tensor<B, 2>, i: usize| t.clone().narrow(1, i, 1).squeeze_dim::<1>(1);
    let [px1, py1, px2, py2] = [0, 1, 2, 3].map(|i| coord(&pred, i));
    let [tx1, ty1, tx2, ty2] = [0, 1, 2, 3].map(|i| coord(&target, i));
    let (pw, ph) = (
        (px2.clone() - px1.clone()).clamp_min(0.0),
        (py2.clone() - py1.clone()).clamp_min(0.0),
    );
    let (tw, th) = (tx2.clone() - tx1.clone(), ty2.clone() - ty1.clone());
    let iw = (px2.clone().min_pair(tx2.clone()) - px1.clone().max_pair(tx1.clone())).clamp_min(0.0);
    let ih = (py2.clone().min_pair(ty2.clone()) - py1.clone().max_pair(ty1.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = pw.clone() * ph.clone() + tw.clone() * th.clone() - inter.clone() + EPS;
    let iou = inter / union;
    let cw = px2.clone().max_pair(tx2.clone()) - px1.clone().min_pair(tx1.clone());
    let ch = py2.clone().max_pair(ty2.clone()) - py1.clone().min_pair(ty1.clone());
    let diagonal = cw.powi_scalar(2) + ch.powi_scalar(2) + EPS;
    let centre_distance = ((px1 + px2) - (tx1 + tx2)).powi_scalar(2) / 4.0
        + ((py1 + py2) - (ty1 + ty2)).powi_scalar(2) / 4.0;
    let v = ((tw / (th + EPS)).atan() - (pw / (ph + EPS)).atan())
        .powi_scalar(2)
        .mul_scalar(4.0 / (std::f64::consts::PI * std::f64::consts::PI));
    let alpha = (v.clone() / (iou.clone().neg() + v.clone() + (1.0 + EPS))).detach();
    iou - centre_distance / diagonal - alpha * v
}

/// The DFL target of one edge distance in strides: its weight on each of the [`REG_BINS`] bins
/// (two neighbours, linear; clamped into the bins' range).
pub fn distance_bins(distance: f32) -> [f32; REG_BINS] {
    let t = distance.clamp(0.0, REG_BINS as f32 - 1.01);
    let left = t.floor() as usize;
    let mut bins = [0.0; REG_BINS];
    bins[left] = (left + 1) as f32 - t;
    bins[left + 1] = t - left as f32;
    bins
}

/// Distribution focal loss of edge logits `[n, 4 * REG_BINS]` against bin weights of the same
/// shape ([`distance_bins`] per edge): cross-entropy per edge, mean over the edges -> `[n]`.
pub fn distribution_focal_loss<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let log_p = log_softmax(logits.reshape([n, 4, REG_BINS]), 2);
    (log_p * targets.reshape([n, 4, REG_BINS]))
        .sum_dim(2)
        .mean_dim(1)
        .reshape([n])
        .neg()
}

/// Detection loss terms `(classification, box IoU, box distribution)`.
pub fn detection_loss<B: Backend>(
    output: &DetectionOutput<B>,
    targets: &DetectionTargets,
    height: usize,
    width: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let device = output.class_logits.device();
    let [b, n, c] = [targets.batch, targets.anchors, targets.num_classes];
    let class_targets =
        Tensor::<B, 1>::from_floats(targets.classes.as_slice(), &device).reshape([b, n, c]);
    let weight = Tensor::<B, 1>::from_floats(targets.weight.as_slice(), &device).reshape([b, n, 1]);
    let norm = targets.normaliser() as f64;
    let classification =
        (bce_with_logits(output.class_logits.clone(), class_targets) * weight).sum() / norm;

    let positives = targets.positive_indices();
    if positives.is_empty() {
        // Keeps the box terms in the graph (as zeros) so every step has the same terms.
        let zero = |t: &Tensor<B, 3>| t.clone().sum().mul_scalar(0.0);
        return (
            classification,
            zero(&output.distances),
            zero(&output.box_logits),
        );
    }
    let p = positives.len();
    let anchors = anchor_points(height, width);
    let mut centres = Vec::with_capacity(p * 4);
    let mut gt = Vec::with_capacity(p * 4);
    let mut bins = Vec::with_capacity(p * 4 * REG_BINS);
    let mut quality = Vec::with_capacity(p);
    for &i in &positives {
        let a = &anchors[i % n];
        let t = &targets.boxes[i * 4..i * 4 + 4];
        centres.extend([a.x, a.y, a.x, a.y]);
        gt.extend_from_slice(t);
        for edge in [a.x - t[0], a.y - t[1], t[2] - a.x, t[3] - a.y] {
            bins.extend(distance_bins(edge / a.stride));
        }
        quality.push(targets.quality[i]);
    }
    let rows = |v: &[f32], cols: usize| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [p, cols]), &device)
    };
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(positives.iter().map(|&i| i as i64).collect(), [p]),
        &device,
    );
    let pick = |t: &Tensor<B, 3>| {
        let cols = t.dims()[2];
        t.clone().reshape([b * n, cols]).select(0, index.clone())
    };
    let signs = Tensor::<B, 1>::from_floats([-1.0, -1.0, 1.0, 1.0], &device).reshape([1, 4]);
    let pred = rows(&centres, 4) + pick(&output.distances) * signs;
    let quality = Tensor::<B, 1>::from_floats(quality.as_slice(), &device);
    let ciou = complete_iou(pred, rows(&gt, 4));
    let box_iou = ((ciou.neg() + 1.0) * quality.clone()).sum() / norm;
    let dfl = (distribution_focal_loss(pick(&output.box_logits), rows(&bins, 4 * REG_BINS))
        * quality)
        .sum()
        / norm;
    (classification, box_iou, dfl)
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
    let (classification, box_iou, dfl) = match (&output.detection, detection) {
        (Some(out), Some(t)) => {
            let (c, b, d) = detection_loss(out, t, h, w);
            (Some(c), Some(b), Some(d))
        }
        _ => (None, None, None),
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
        (&dfl, weights.dfl),
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
        dfl,
        drivable,
        lanes,
        distillation: None,
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
    fn ciou_hand_computed() {
        let d = Default::default();
        let pred = Tensor::<B, 2>::from_floats([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]], &d);
        let target = Tensor::<B, 2>::from_floats([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]], &d);
        let v: Vec<f32> = complete_iou(pred, target).into_data().to_vec().unwrap();
        // Same aspect: IoU 1/7, centre distance^2 2, enclosing diagonal^2 18.
        assert!(close(v[0], 1.0 / 7.0 - 2.0 / 18.0), "{}", v[0]);
        // IoU 1/2, centre distance^2 1, diagonal^2 20, v = 4/pi^2 (atan 1 - atan 2)^2,
        // alpha = v / (1 - 1/2 + v).
        let pi = std::f32::consts::PI;
        let aspect = 4.0 / (pi * pi) * (1f32.atan() - 2f32.atan()).powi(2);
        let want = 0.5 - 1.0 / 20.0 - aspect / (0.5 + aspect) * aspect;
        assert!(close(v[1], want), "{} vs {want}", v[1]);
    }

    #[test]
    fn distance_bins_split_between_neighbours_and_clamp() {
        let b = distance_bins(2.3);
        assert!((b[2] - 0.7).abs() < 1e-6 && (b[3] - 0.3).abs() < 1e-6);
        assert_eq!(b.iter().filter(|&&w| w != 0.0).count(), 2);
        let far = distance_bins(40.0);
        assert!((far[14] - 0.01).abs() < 1e-5 && (far[15] - 0.99).abs() < 1e-5);
        assert_eq!(distance_bins(-3.0)[0], 1.0);
    }

    #[test]
    fn dfl_hand_computed() {
        let d = Default::default();
        // Edge 0: logit 2 at bin 2, 0 elsewhere, target 2.3 strides; edges 1-3 uniform.
        let mut logits = vec![0.0f32; 4 * REG_BINS];
        logits[2] = 2.0;
        let targets: Vec<f32> = [2.3, 0.0, 5.0, 15.0]
            .into_iter()
            .flat_map(distance_bins)
            .collect();
        let v: f32 = distribution_focal_loss(
            Tensor::<B, 1>::from_floats(logits.as_slice(), &d).reshape([1, 4 * REG_BINS]),
            Tensor::<B, 1>::from_floats(targets.as_slice(), &d).reshape([1, 4 * REG_BINS]),
        )
        .into_scalar();
        // Edge 0: log Z - (0.7 * 2 + 0.3 * 0), Z = 15 + e^2; uniform edges: ln 16 each.
        let z = 15.0 + 2f32.exp();
        let want = (z.ln() - 1.4 + 3.0 * 16f32.ln()) / 4.0;
        assert!(close(v, want), "{v} vs {want}");
    }

    #[test]
    fn detection_loss_hand_computed() {
        let d = Default::default();
        // 32x32 input: 21 anchors, one class. Anchor 0 (centre (4, 4), stride 8) is the only
        // positive, for the box (0,0)-(8,8), quality 0.5; it predicts 60 px to every edge and
        // uniform edge distributions; every class logit is 0.
        let n = 21;
        let mut targets = DetectionTargets {
            batch: 1,
            anchors: n,
            num_classes: 1,
            classes: vec![0.0; n],
            boxes: vec![0.0; n * 4],
            positive: vec![0.0; n],
            quality: vec![0.0; n],
            weight: vec![1.0; n],
            num_positive: 1,
        };
        targets.classes[0] = 0.5;
        targets.boxes[0..4].copy_from_slice(&[0.0, 0.0, 8.0, 8.0]);
        targets.positive[0] = 1.0;
        targets.quality[0] = 0.5;
        targets.weight[5] = 0.0;
        let output = DetectionOutput::<B> {
            class_logits: Tensor::zeros([1, n, 1], &d),
            box_logits: Tensor::zeros([1, n, 4 * REG_BINS], &d),
            distances: Tensor::full([1, n, 4], 60.0, &d),
        };
        let (c, b, f) = detection_loss(&output, &targets, 32, 32);
        let [c, b, f]: [f32; 3] = [c.into_scalar(), b.into_scalar(), f.into_scalar()];
        // Normaliser max(0.5, 1) = 1. BCE at logit 0 is ln 2 for any target; 20 weighted
        // anchors.
        assert!(close(c, 20.0 * 2f32.ln()), "{c}");
        // Predicted box (-56,-56)-(64,64) around the target: IoU 64/14400, same centre and
        // aspect: CIoU = IoU.
        assert!(close(b, 0.5 * (1.0 - 64.0 / 14400.0)), "{b}");
        // Every edge 0.5 strides away: target bins (0.5, 0.5), uniform logits: ln 16.
        assert!(close(f, 0.5 * 16f32.ln()), "{f}");

        // No positives: the box terms are zeros.
        let empty = DetectionTargets {
            positive: vec![0.0; n],
            quality: vec![0.0; n],
            classes: vec![0.0; n],
            num_positive: 0,
            ..targets
        };
        let (_, b, f) = detection_loss(&output, &empty, 32, 32);
        assert_eq!((b.into_scalar(), f.into_scalar()), (0.0, 0.0));
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
