//! Target assignment for the anchor-free detection head, done on the host per batch.
//!
//! Rule (FCOS-style centre sampling with a fixed scale per level, documented in the crate docs):
//! 1. A ground-truth box goes to one level by its longer side: up to `5 * 8 = 40` px to stride
//!    8, up to `5 * 16 = 80` px to stride 16, longer to stride 32. Small inputs therefore use
//!    the fine level most, as they should.
//! 2. On that level, an anchor point is positive for the box when it lies inside the box and
//!    within `2.5 * stride` of the box centre; the point nearest the centre is always positive,
//!    so boxes smaller than a cell still get one.
//! 3. A point claimed by several boxes takes the smallest one (the larger boxes keep others).
//!
//! Positives get a one-hot class target and the box as regression target; everything else is
//! a negative for every class, except points inside an ignore region (unlabelled objects such
//! as KITTI's DontCare) and every point of an image whose dataset does not label detection:
//! those get weight 0 and are neither positive nor negative.

use crate::detection_head::{anchor_points, STRIDES};

/// Centre-sampling radius in strides.
const CENTRE_RADIUS: f32 = 2.5;
/// A box goes to the first level whose `SCALE_PER_STRIDE * stride` covers its longer side.
const SCALE_PER_STRIDE: f32 = 5.0;

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

/// Dense targets for one batch, as flat row-major arrays ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionTargets {
    pub batch: usize,
    pub anchors: usize,
    pub num_classes: usize,
    /// `[batch, anchors, classes]`: 1 for the assigned class of a positive, else 0.
    pub classes: Vec<f32>,
    /// `[batch, anchors, 4]`: the assigned box of a positive, else 0.
    pub boxes: Vec<f32>,
    /// `[batch, anchors]`: 1 for a positive, else 0.
    pub positive: Vec<f32>,
    /// `[batch, anchors]`: weight of the classification loss: 1, or 0 for a non-positive point
    /// inside an ignore region or of an unlabelled image.
    pub weight: Vec<f32>,
    pub num_positive: usize,
}

/// The level a box of this size is assigned to.
pub fn level_for(bbox: &[f32; 4]) -> usize {
    let side = (bbox[2] - bbox[0]).max(bbox[3] - bbox[1]);
    STRIDES
        .iter()
        .position(|&s| side <= SCALE_PER_STRIDE * s as f32)
        .unwrap_or(STRIDES.len() - 1)
}

/// Assigns `targets[image]` to the anchor points of a `[height, width]` input.
pub fn assign_targets(
    height: usize,
    width: usize,
    targets: &[ImageTargets],
    num_classes: usize,
) -> DetectionTargets {
    let anchors = anchor_points(height, width);
    let n = anchors.len();
    let batch = targets.len();
    let mut level_start = [0usize; 3];
    for l in 1..3 {
        let prev = STRIDES[l - 1];
        level_start[l] = level_start[l - 1] + (height / prev) * (width / prev);
    }

    let mut out = DetectionTargets {
        batch,
        anchors: n,
        num_classes,
        classes: vec![0.0; batch * n * num_classes],
        boxes: vec![0.0; batch * n * 4],
        positive: vec![0.0; batch * n],
        weight: vec![1.0; batch * n],
        num_positive: 0,
    };
    let mut owner: Vec<Option<(f32, usize)>> = vec![None; n];
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
        let boxes = &image.boxes;
        owner.iter_mut().for_each(|o| *o = None);
        for (g, t) in boxes.iter().enumerate() {
            let [x1, y1, x2, y2] = t.bbox;
            if x2 <= x1 || y2 <= y1 || t.class >= num_classes {
                continue;
            }
            let level = level_for(&t.bbox);
            let stride = STRIDES[level] as f32;
            let (gw, gh) = (width / STRIDES[level], height / STRIDES[level]);
            let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
            let radius = CENTRE_RADIUS * stride;
            let cell =
                |v: f32, cells: usize| ((v / stride).floor().max(0.0) as usize).min(cells - 1);
            let nearest = (cell(cx, gw), cell(cy, gh));
            let area = (x2 - x1) * (y2 - y1);
            for gy in cell(cy - radius, gh)..=cell(cy + radius, gh) {
                for gx in cell(cx - radius, gw)..=cell(cx + radius, gw) {
                    let a = &anchors[level_start[level] + gy * gw + gx];
                    let inside = a.x > x1 && a.x < x2 && a.y > y1 && a.y < y2;
                    let central = (a.x - cx).abs() < radius && (a.y - cy).abs() < radius;
                    if !((inside && central) || (gx, gy) == nearest) {
                        continue;
                    }
                    let slot = &mut owner[level_start[level] + gy * gw + gx];
                    if slot.is_none_or(|(best, _)| area < best) {
                        *slot = Some((area, g));
                    }
                }
            }
        }
        for (a, slot) in owner.iter().enumerate() {
            if let Some((_, g)) = slot {
                let t = &boxes[*g];
                let i = b * n + a;
                out.positive[i] = 1.0;
                out.weight[i] = 1.0;
                out.classes[i * num_classes + t.class] = 1.0;
                out.boxes[i * 4..i * 4 + 4].copy_from_slice(&t.bbox);
                out.num_positive += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_box_size() {
        assert_eq!(level_for(&[0.0, 0.0, 40.0, 10.0]), 0);
        assert_eq!(level_for(&[0.0, 0.0, 41.0, 10.0]), 1);
        assert_eq!(level_for(&[0.0, 0.0, 10.0, 80.0]), 1);
        assert_eq!(level_for(&[0.0, 0.0, 300.0, 10.0]), 2);
    }

    #[test]
    fn small_box_gets_nearest_point_and_class() {
        // 64x64 input: level 0 is an 8x8 grid. A 4x4 box centred at (21, 13) lies in cell
        // (2, 1) whose centre (20, 12) is inside the box.
        let t = assign_targets(
            64,
            64,
            &[ImageTargets::labelled(vec![TargetBox {
                class: 2,
                bbox: [19.0, 11.0, 23.0, 15.0],
            }])],
            3,
        );
        assert_eq!(t.anchors, 64 + 16 + 4);
        assert_eq!(t.num_positive, 1);
        let a = 8 + 2;
        assert_eq!(t.positive[a], 1.0);
        assert_eq!(&t.classes[a * 3..a * 3 + 3], &[0.0, 0.0, 1.0]);
        assert_eq!(&t.boxes[a * 4..a * 4 + 4], &[19.0, 11.0, 23.0, 15.0]);
    }

    #[test]
    fn centre_region_and_overlap_prefers_smaller_box() {
        // A 32x32 box at (0,0)-(32,32) on level 0: the 4x4 cells whose centres are inside and
        // within 20 px of the centre (16,16): all 16 cells of the box.
        let big = TargetBox {
            class: 0,
            bbox: [0.0, 0.0, 32.0, 32.0],
        };
        let t = assign_targets(64, 64, &[ImageTargets::labelled(vec![big])], 2);
        assert_eq!(t.num_positive, 16);
        // A smaller box over cell (1,1) takes that point.
        let small = TargetBox {
            class: 1,
            bbox: [8.0, 8.0, 16.0, 16.0],
        };
        let t = assign_targets(64, 64, &[ImageTargets::labelled(vec![big, small])], 2);
        assert_eq!(t.num_positive, 16);
        let a = 8 + 1;
        assert_eq!(&t.classes[a * 2..a * 2 + 2], &[0.0, 1.0]);
        assert_eq!(&t.classes[0..2], &[1.0, 0.0]);
    }

    #[test]
    fn batches_are_independent_and_bad_boxes_ignored() {
        let t = assign_targets(
            64,
            64,
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
                ]),
            ],
            2,
        );
        assert_eq!(t.num_positive, 0);
        assert_eq!(t.positive.len(), 2 * 84);
    }

    #[test]
    fn ignore_regions_and_unlabelled_images_get_zero_weight() {
        // 64x64: level 0 is 8x8 cells of 8 px with centres at 4, 12, ..., 60.
        let boxed = TargetBox {
            class: 0,
            bbox: [19.0, 11.0, 23.0, 15.0],
        };
        let images = [
            ImageTargets {
                boxes: vec![boxed],
                // Covers the centres (4..=12, 4..=12) of level 0, and the box's own cell
                // (20, 12), which stays a positive.
                ignore: vec![[0.0, 0.0, 13.0, 13.0], [18.0, 10.0, 24.0, 16.0]],
                labelled: true,
            },
            ImageTargets {
                boxes: vec![],
                ignore: vec![],
                labelled: false,
            },
        ];
        let t = assign_targets(64, 64, &images, 1);
        let n = t.anchors;
        let zero: Vec<usize> = (0..n).filter(|&a| t.weight[a] == 0.0).collect();
        // Level 0: cells (0,0), (1,0), (0,1), (1,1). Level 1 (stride 16, centres 8, 24, ...):
        // the centre (8, 8). Level 2 (stride 32, centres 16, 48): none.
        assert_eq!(zero, vec![0, 1, 8, 9, 64]);
        let positive = 8 + 2;
        assert_eq!((t.positive[positive], t.weight[positive]), (1.0, 1.0));
        assert!(t.weight[n..].iter().all(|&w| w == 0.0));
        assert_eq!(t.num_positive, 1);
    }
}
