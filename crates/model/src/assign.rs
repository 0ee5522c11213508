//! Target assignment for the anchor-free detection head: task-aligned assignment (TOOD, Feng et
//! al., ICCV 2021), as YOLOv8 and PP-YOLOE use it. Done on the host per micro-batch, after the
//! forward pass, because it ranks anchor points by how well the network already predicts each
//! box.
//!
//! For each ground-truth box:
//! 1. Candidates are the anchor points of every level whose centre lies strictly inside the box.
//!    A box too small to hold any centre gets the nearest point of the finest level (stride 8),
//!    so traffic lights a few pixels wide still train (YOLOv8 leaves such boxes unassigned).
//! 2. Each candidate's alignment is `t = s^ALPHA * u^BETA`: `s` the predicted score of the box's
//!    class, `u` the IoU of the predicted box with it. The `TOP_K` best (ties: lower anchor
//!    index) are its positives.
//! 3. A point chosen by several boxes keeps the one its prediction overlaps most (ties: the
//!    earlier box).
//! 4. A positive's *quality* is `t / max t * max u` over its box's positives: the classification
//!    target of its class (so scores learn to rank boxes by localisation, not only by class) and
//!    the weight of its box losses.
//!
//! Everything else is a negative for every class (target 0), except points inside an ignore
//! region (unlabelled objects such as KITTI's DontCare) and every point of an image whose
//! dataset does not label detection: those get weight 0 and are neither positive nor negative.

use crate::detection_head::{anchor_points, AnchorPoint, STRIDES};

/// Positives per box, at most.
pub const TOP_K: usize = 10;
/// Exponent of the class score in the alignment metric.
pub const ALPHA: f32 = 0.5;
/// Exponent of the IoU in the alignment metric.
pub const BETA: f32 = 6.0;
const EPS: f32 = 1e-9;

/// A ground-truth box in network-input pixels, `[x1, y1, x2, y2]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetBox {
    pub class: usize,
    pub bbox: [f32; 4],
}

/// One image's detection labels in network-input pixels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageTargets {
    pub boxes: Vec<TargetBox>,
    /// Ignore regions `[x1, y1, x2, y2]`: no negatives inside them.
    pub ignore: Vec<[f32; 4]>,
    /// Whether the image's dataset labels detection; when not, the image adds no loss.
    pub labelled: bool,
}

impl ImageTargets {
    /// A detection-labelled image with these boxes and no ignore regions.
    pub fn labelled(boxes: Vec<TargetBox>) -> Self {
        ImageTargets {
            boxes,
            ignore: Vec::new(),
            labelled: true,
        }
    }
}

/// The network's current predictions, detached and on the host, that the assignment ranks.
#[derive(Debug, Clone, Copy)]
pub struct Predictions<'a> {
    /// `[batch, anchors, classes]` class scores (sigmoid).
    pub scores: &'a [f32],
    /// `[batch, anchors, 4]` predicted boxes, `[x1, y1, x2, y2]` in input pixels.
    pub boxes: &'a [f32],
}

/// Dense targets for one batch, as flat row-major arrays ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionTargets {
    pub batch: usize,
    pub anchors: usize,
    pub num_classes: usize,
    /// `[batch, anchors, classes]`: a positive's quality for its assigned class, else 0.
    pub classes: Vec<f32>,
    /// `[batch, anchors, 4]`: the assigned box of a positive, else 0.
    pub boxes: Vec<f32>,
    /// `[batch, anchors]`: 1 for a positive, else 0.
    pub positive: Vec<f32>,
    /// `[batch, anchors]`: a positive's quality (in `[0, 1]`), the weight of its box losses;
    /// 0 elsewhere.
    pub quality: Vec<f32>,
    /// `[batch, anchors]`: weight of the classification loss: 1, or 0 for a non-positive point
    /// inside an ignore region or of an unlabelled image.
    pub weight: Vec<f32>,
    pub num_positive: usize,
}

impl DetectionTargets {
    /// The loss normaliser: the sum of all qualities, at least 1 (YOLOv8's
    /// `target_scores_sum`).
    pub fn normaliser(&self) -> f32 {
        self.quality.iter().sum::<f32>().max(1.0)
    }

    /// Indices (into `batch * anchors`) of the positives, in order.
    pub fn positive_indices(&self) -> Vec<usize> {
        (0..self.positive.len())
            .filter(|&i| self.positive[i] > 0.0)
            .collect()
    }
}

/// IoU of two `[x1, y1, x2, y2]` boxes; a box with negative sides counts as empty.
pub fn box_iou(a: &[f32], b: &[f32]) -> f32 {
    let area = |r: &[f32]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / (area(a) + area(b) - inter + 1e-7)
}

/// Candidate anchor points of a box: those with their centre strictly inside it, or the nearest
/// point of the finest level when none is.
fn candidates(anchors: &[AnchorPoint], bbox: &[f32; 4], width: usize, height: usize) -> Vec<usize> {
    let [x1, y1, x2, y2] = *bbox;
    let inside: Vec<usize> = (0..anchors.len())
        .filter(|&a| {
            let p = &anchors[a];
            p.x > x1 && p.x < x2 && p.y > y1 && p.y < y2
        })
        .collect();
    if !inside.is_empty() {
        return inside;
    }
    let stride = STRIDES[0] as f32;
    let (gw, gh) = (width / STRIDES[0], height / STRIDES[0]);
    let cell = |v: f32, cells: usize| ((v / stride).floor().max(0.0) as usize).min(cells - 1);
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    vec![cell(cy, gh) * gw + cell(cx, gw)]
}

/// Assigns `targets[image]` to the anchor points of a `[height, width]` input, ranking them by
/// `predictions` (the same batch's).
pub fn assign_targets(
    height: usize,
    width: usize,
    targets: &[ImageTargets],
    num_classes: usize,
    predictions: &Predictions,
) -> DetectionTargets {
    let anchors = anchor_points(height, width);
    let n = anchors.len();
    let batch = targets.len();
    assert_eq!(predictions.scores.len(), batch * n * num_classes, "scores");
    assert_eq!(predictions.boxes.len(), batch * n * 4, "predicted boxes");

    let mut out = DetectionTargets {
        batch,
        anchors: n,
        num_classes,
        classes: vec![0.0; batch * n * num_classes],
        boxes: vec![0.0; batch * n * 4],
        positive: vec![0.0; batch * n],
        quality: vec![0.0; batch * n],
        weight: vec![1.0; batch * n],
        num_positive: 0,
    };
    // Per anchor of the current image: (IoU, box, alignment) of the box it is assigned to.
    let mut owner: Vec<Option<(f32, usize, f32)>> = vec![None; n];
    for (b, image) in targets.iter().enumerate() {
        let weights = &mut out.weight[b * n..(b + 1) * n];
        if !image.labelled {
            weights.fill(0.0);
            continue;
        }
        for (a, w) in anchors.iter().zip(weights.iter_mut()) {
            let ignored = image
                .ignore
                .iter()
                .any(|r| a.x >= r[0] && a.x <= r[2] && a.y >= r[1] && a.y <= r[3]);
            if ignored {
                *w = 0.0;
            }
        }
        owner.iter_mut().for_each(|o| *o = None);
        let scores = &predictions.scores[b * n * num_classes..(b + 1) * n * num_classes];
        let pred = &predictions.boxes[b * n * 4..(b + 1) * n * 4];
        for (g, t) in image.boxes.iter().enumerate() {
            let [x1, y1, x2, y2] = t.bbox;
            if x2 <= x1 || y2 <= y1 || t.class >= num_classes {
                continue;
            }
            let mut ranked: Vec<(usize, f32, f32)> = candidates(&anchors, &t.bbox, width, height)
                .into_iter()
                .map(|a| {
                    let iou = box_iou(&pred[a * 4..a * 4 + 4], &t.bbox);
                    let score = scores[a * num_classes + t.class];
                    (a, iou, score.powf(ALPHA) * iou.powf(BETA))
                })
                .collect();
            // Stable: equal alignments keep anchor order.
            ranked.sort_by(|p, q| q.2.total_cmp(&p.2));
            for &(a, iou, alignment) in ranked.iter().take(TOP_K) {
                if owner[a].is_none_or(|(best, _, _)| iou > best) {
                    owner[a] = Some((iou, g, alignment));
                }
            }
        }
        // Per box over its final positives: the largest alignment and IoU.
        let mut best = vec![(0.0f32, 0.0f32); image.boxes.len()];
        for &(iou, g, alignment) in owner.iter().flatten() {
            best[g].0 = best[g].0.max(alignment);
            best[g].1 = best[g].1.max(iou);
        }
        for (a, slot) in owner.iter().enumerate() {
            let Some((_, g, alignment)) = *slot else {
                continue;
            };
            let t = &image.boxes[g];
            let quality = alignment / (best[g].0 + EPS) * best[g].1;
            let i = b * n + a;
            out.positive[i] = 1.0;
            out.quality[i] = quality;
            out.weight[i] = 1.0;
            out.classes[i * num_classes + t.class] = quality;
            out.boxes[i * 4..i * 4 + 4].copy_from_slice(&t.bbox);
            out.num_positive += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64x64 input: level 0 is 8x8 points (centres 4, 12, ..., 60; anchors 0..64), level 1
    /// 4x4 (centres 8, 24, 40, 56; 64..80), level 2 2x2 (centres 16, 48; 80..84).
    const N: usize = 84;

    /// Every anchor predicting `bbox`, with class scores `score(anchor)` for every class.
    fn predictions(
        batch: usize,
        classes: usize,
        bbox: [f32; 4],
        score: impl Fn(usize) -> f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let scores = (0..batch * N)
            .flat_map(|i| vec![score(i % N); classes])
            .collect();
        let boxes = (0..batch * N).flat_map(|_| bbox).collect();
        (scores, boxes)
    }

    fn assign(
        images: &[ImageTargets],
        classes: usize,
        (scores, boxes): &(Vec<f32>, Vec<f32>),
    ) -> DetectionTargets {
        let p = Predictions { scores, boxes };
        assign_targets(64, 64, images, classes, &p)
    }

    fn positives(t: &DetectionTargets) -> Vec<usize> {
        t.positive_indices()
    }

    #[test]
    fn the_best_aligned_candidates_inside_the_box_become_positives() {
        // Box (0,0)-(32,32) holds 21 centres: level 0 at 4, 12, 20, 28 (anchors 0-3, 8-11,
        // 16-19, 24-27), level 1 at 8, 24 (64, 65, 68, 69), level 2 at 16 (80). Every point
        // predicts the box exactly (IoU 1) and anchor a scores (a + 1) / 100, so the alignment
        // ranks by anchor index and the ten highest candidates win.
        let gt = [0.0, 0.0, 32.0, 32.0];
        let p = predictions(1, 2, gt, |a| (a + 1) as f32 / 100.0);
        let t = assign(
            &[ImageTargets::labelled(vec![TargetBox {
                class: 1,
                bbox: gt,
            }])],
            2,
            &p,
        );
        assert_eq!(positives(&t), vec![19, 24, 25, 26, 27, 64, 65, 68, 69, 80]);
        assert_eq!(t.num_positive, TOP_K);
        // Quality: alignment / best alignment * best IoU = sqrt(s_a / s_80) (IoU 1).
        let q19 = (0.20f32 / 0.81).sqrt();
        assert!((t.quality[19] - q19).abs() < 1e-6, "{}", t.quality[19]);
        assert!((t.quality[80] - 1.0).abs() < 1e-6);
        assert_eq!(t.classes[19 * 2], 0.0);
        assert_eq!(t.classes[19 * 2 + 1], t.quality[19]);
        assert_eq!(&t.boxes[80 * 4..81 * 4], &gt);
        let sum: f32 = positives(&t).iter().map(|&a| t.quality[a]).sum();
        assert!((t.normaliser() - sum).abs() < 1e-6);
    }

    #[test]
    fn quality_follows_localisation_and_is_scaled_by_the_best_iou() {
        // Box (4,4)-(28,20) holds level-0 centres (12, 12) and (20, 12) (anchors 9, 10),
        // level-1 (8, 8) and (24, 8) (64, 65) and level-2 (16, 16) (80).
        let gt = [4.0, 4.0, 28.0, 20.0];
        let scores = vec![0.5f32; N];
        // Anchor 9 predicts the box exactly; anchor 10 a box of half its width (IoU 0.5).
        let mut boxes: Vec<f32> = (0..N).flat_map(|_| [0.0, 0.0, 1.0, 1.0]).collect();
        boxes[9 * 4..10 * 4].copy_from_slice(&gt);
        boxes[10 * 4..11 * 4].copy_from_slice(&[4.0, 4.0, 16.0, 20.0]);
        let t = assign(
            &[ImageTargets::labelled(vec![TargetBox {
                class: 0,
                bbox: gt,
            }])],
            1,
            &(scores, boxes),
        );
        // Fewer than TOP_K candidates: all are positives, those whose prediction misses the
        // box with alignment and quality 0 (a negative for the classifier).
        assert_eq!(positives(&t), vec![9, 10, 64, 65, 80]);
        // Alignments sqrt(0.5) * 1 and sqrt(0.5) * 0.5^6: quality 1 and 1/64.
        assert!((t.quality[9] - 1.0).abs() < 1e-5);
        assert!(
            (t.quality[10] - 1.0 / 64.0).abs() < 1e-5,
            "{}",
            t.quality[10]
        );
        assert_eq!((t.quality[64], t.classes[64]), (0.0, 0.0));
    }

    #[test]
    fn a_point_wanted_by_two_boxes_goes_to_the_one_its_prediction_overlaps_most() {
        // A holds centres (12, 12), (8, 8) and (16, 16) (anchors 9, 64, 80); B holds 9 and
        // 80. Every point predicts B, so the shared points go to B (IoU 1 against A's
        // 100 / 188), whatever the order; 64 stays A's.
        let a = [6.0, 6.0, 18.0, 18.0];
        let b = [8.0, 8.0, 20.0, 20.0];
        let p = predictions(1, 2, b, |_| 0.5);
        for order in [[a, b], [b, a]] {
            let t = assign(
                &[ImageTargets::labelled(vec![
                    TargetBox {
                        class: 0,
                        bbox: order[0],
                    },
                    TargetBox {
                        class: 1,
                        bbox: order[1],
                    },
                ])],
                2,
                &p,
            );
            assert_eq!(positives(&t), vec![9, 64, 80]);
            assert_eq!(&t.boxes[9 * 4..10 * 4], &b);
            assert_eq!(&t.boxes[80 * 4..81 * 4], &b);
            assert_eq!(&t.boxes[64 * 4..65 * 4], &a);
            // A's only positive: quality = its IoU, 100 / 188.
            assert!((t.quality[64] - 100.0 / 188.0).abs() < 1e-5);
            let class_b = if order[1] == b { 1 } else { 0 };
            assert!(t.classes[9 * 2 + class_b] > 0.99);
            assert_eq!(t.classes[9 * 2 + 1 - class_b], 0.0);
        }
    }

    #[test]
    fn a_box_holding_no_centre_gets_the_nearest_fine_point() {
        // A box (21, 13)-(23.5, 15.5) holds no centre: nearest level-0 cell (2, 1), anchor 10.
        let gt = [21.0, 13.0, 23.5, 15.5];
        let p = predictions(1, 3, [0.0, 0.0, 1.0, 1.0], |_| 0.1);
        let t = assign(
            &[ImageTargets::labelled(vec![TargetBox {
                class: 2,
                bbox: gt,
            }])],
            3,
            &p,
        );
        assert_eq!(positives(&t), vec![10]);
        // Its prediction misses the box: alignment 0, quality 0, but it still is the positive
        // (with zero weight on its box losses until predictions overlap).
        assert_eq!(t.quality[10], 0.0);
        assert_eq!(&t.boxes[40..44], &gt);
        assert_eq!(t.normaliser(), 1.0);
    }

    #[test]
    fn bad_boxes_are_skipped_and_images_are_independent() {
        let p = predictions(2, 2, [0.0, 0.0, 8.0, 8.0], |_| 0.5);
        let t = assign(
            &[
                ImageTargets::labelled(vec![]),
                ImageTargets::labelled(vec![
                    TargetBox {
                        class: 0,
                        bbox: [10.0, 10.0, 10.0, 20.0],
                    },
                    TargetBox {
                        class: 5,
                        bbox: [0.0, 0.0, 8.0, 8.0],
                    },
                    TargetBox {
                        class: 1,
                        bbox: [0.0, 0.0, 8.0, 8.0],
                    },
                ]),
            ],
            2,
            &p,
        );
        // Only the third box of image 1: centre (4, 4) is strictly inside it: anchor 0.
        assert_eq!(positives(&t), vec![N]);
        assert!((t.classes[N * 2 + 1] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn ignore_regions_and_unlabelled_images_get_zero_weight() {
        let boxed = TargetBox {
            class: 0,
            bbox: [19.0, 11.0, 23.0, 15.0],
        };
        let images = [
            ImageTargets {
                boxes: vec![boxed],
                // Covers the centres (4..=12, 4..=12) of level 0, and the box's own point
                // (20, 12), which stays a positive.
                ignore: vec![[0.0, 0.0, 13.0, 13.0], [18.0, 10.0, 24.0, 16.0]],
                labelled: true,
            },
            ImageTargets {
                boxes: vec![boxed],
                ignore: vec![],
                labelled: false,
            },
        ];
        let p = predictions(2, 1, boxed.bbox, |_| 0.5);
        let t = assign(&images, 1, &p);
        let zero: Vec<usize> = (0..N).filter(|&a| t.weight[a] == 0.0).collect();
        // Level 0: cells (0,0), (1,0), (0,1), (1,1). Level 1 (stride 16, centres 8, 24, ...):
        // the centre (8, 8). Level 2 (stride 32, centres 16, 48): none.
        assert_eq!(zero, vec![0, 1, 8, 9, 64]);
        assert_eq!((t.positive[10], t.weight[10]), (1.0, 1.0));
        assert!(t.weight[N..].iter().all(|&w| w == 0.0));
        assert_eq!(positives(&t), vec![10]);
    }
}
