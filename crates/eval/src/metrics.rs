//! Evaluation metrics: COCO-style detection AP and binary segmentation scores.
//!
//! Both evaluators are streaming: they are fed one image at a time and keep only what the final
//! numbers need: 12 bytes per detection (detection) or four counters (segmentation). No
//! image, box or mask is kept.
//!
//! Neither evaluator depends on the training backend; they work on plain Rust values.

use std::collections::BTreeMap;

use percept_data::{BoxLabel, IgnoreRegion};
use serde::{Deserialize, Serialize};

/// Where metrics are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricResolution {
    /// At the original image resolution: boxes and masks are mapped back out of the letterbox,
    /// and compared with the labels as stored.
    #[default]
    Original,
    /// At network resolution, on the letterboxed input and letterboxed labels.
    Network,
}

/// The IoU thresholds of COCO's AP@[.50:.95]: 0.50, 0.55, ..., 0.95.
pub const COCO_IOU_THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

/// Number of recall points COCO samples the precision envelope at (0, 0.01, ..., 1.0).
const RECALL_POINTS: usize = 101;

/// One predicted box, in pixel coordinates of the image it was predicted on.
///
/// Coordinates follow [`BoxLabel`]'s convention: `x1,y1` is the top-left and `x2,y2` the
/// bottom-right corner, both continuous.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Class index (into the dataset's class list).
    pub class: u16,
    /// Confidence in `[0, 1]` (any finite value is accepted; only the order matters).
    pub score: f32,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl Detection {
    /// A detection of `class` with `score` at `[x1, y1, x2, y2]`.
    pub fn new(class: usize, score: f32, [x1, y1, x2, y2]: [f32; 4]) -> Self {
        Detection {
            class: class as u16,
            score,
            x1,
            y1,
            x2,
            y2,
        }
    }

    /// The box as `[x1, y1, x2, y2]`.
    pub fn bbox(&self) -> [f32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes in continuous coordinates.
///
/// Areas are `width * height` (no `+1`); boxes with a negative extent are treated as empty.
/// Returns a value in `[0, 1]`; `0` when the union is empty or any input is not finite.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    iou_f64(a, b) as f32
}

/// `(intersection, area of a, area of b)` of two boxes in `f64`; `None` when any coordinate
/// is not finite. Negative extents count as empty.
fn overlap_areas(a: [f32; 4], b: [f32; 4]) -> Option<(f64, f64, f64)> {
    if a.iter().chain(b.iter()).any(|v| !v.is_finite()) {
        return None;
    }
    let [ax1, ay1, ax2, ay2] = a.map(f64::from);
    let [bx1, by1, bx2, by2] = b.map(f64::from);
    let area_a = (ax2 - ax1).max(0.0) * (ay2 - ay1).max(0.0);
    let area_b = (bx2 - bx1).max(0.0) * (by2 - by1).max(0.0);
    let iw = (ax2.min(bx2) - ax1.max(bx1)).max(0.0);
    let ih = (ay2.min(by2) - ay1.max(by1)).max(0.0);
    Some((iw * ih, area_a, area_b))
}

/// [`box_iou`] computed in `f64`, as pycocotools does.
fn iou_f64(a: [f32; 4], b: [f32; 4]) -> f64 {
    let Some((inter, area_a, area_b)) = overlap_areas(a, b) else {
        return 0.0;
    };
    let union = area_a + area_b - inter;
    if union > 0.0 && union.is_finite() {
        (inter / union).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Intersection of a detection with a region over the detection's own area (pycocotools'
/// IoU against a crowd box); `0` for an empty or non-finite detection.
fn overlap_of_detection(det: [f32; 4], region: [f32; 4]) -> f64 {
    match overlap_areas(det, region) {
        Some((inter, area, _)) if area > 0.0 => (inter / area).clamp(0.0, 1.0),
        _ => 0.0,
    }
}

/// Per-class detection results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    /// Class index.
    pub class: u16,
    /// AP at IoU 0.5 (101-point interpolated); `None` when the class has no ground truth.
    pub ap50: Option<f64>,
    /// Mean AP over the evaluator's IoU thresholds (AP@[.50:.95] with
    /// [`COCO_IOU_THRESHOLDS`]); `None` when the class has no ground truth.
    pub ap50_95: Option<f64>,
    /// Ground-truth boxes of this class seen.
    pub num_gt: u64,
    /// Detections of this class seen.
    pub num_det: u64,
    /// Fraction of ground-truth boxes matched at IoU 0.5 by the detections passed in (the
    /// caller applies any score threshold); `None` when the class has no ground truth.
    pub recall50: Option<f64>,
    /// The interpolated precision-recall curve at IoU 0.5: precision at recall
    /// `0, 0.01, ..., 1.0` (101 points, pycocotools' `eval['precision']`; `0` past the highest
    /// recall reached). Empty when the class has no ground truth.
    pub precision50: Vec<f64>,
}

/// Result of [`DetectionEvaluator::finish`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    /// One entry per class, in class order.
    pub per_class: Vec<ClassAp>,
    /// Mean of `ap50` over classes with ground truth; `0.0` when no class has any.
    pub map50: f64,
    /// Mean of `ap50_95` over classes with ground truth; `0.0` when no class has any.
    pub map50_95: f64,
}

/// Most IoU thresholds one evaluator matches at (a detection's outcomes are two bit sets).
pub const MAX_IOU_THRESHOLDS: usize = 16;

/// One detection's matching result at every threshold: 12 bytes, the only thing kept per
/// detection.
#[derive(Debug, Clone, Copy)]
struct Record {
    score: f32,
    /// Index of the image, in the order images were added.
    image: u32,
    /// Bit `t` set: a true positive at threshold `t`.
    true_positive: u16,
    /// Bit `t` set: matched nothing at threshold `t` but lies in an ignore region there.
    ignored: u16,
}

/// Matching results of one class, over all images seen so far.
#[derive(Debug, Clone, Default)]
struct ClassAccumulator {
    num_gt: u64,
    /// Every detection, images in order, each image's detections by descending score.
    records: Vec<Record>,
}

/// Streaming COCO-style detection evaluator.
///
/// For every image and class, detections are sorted by descending score and greedily matched,
/// at each IoU threshold independently, to the still unmatched ground-truth box of the same
/// class with the highest IoU `>=` the threshold (pycocotools' rule). A detection that matches
/// nothing, including a duplicate of an already matched box, is a false positive.
///
/// AP is COCO's 101-point interpolated AP: detections of all images are ranked by score, the
/// precision curve is made monotone from the right, and it is sampled at recall
/// `0, 0.01, ..., 1.0` (the first rank whose recall reaches each point; `0` past the highest
/// recall reached). Unlike pycocotools there is no per-image detection cap (`maxDets`), no
/// area ranges: the caller decides which detections to pass in.
///
/// Ignore regions (KITTI's `DontCare`, BDD100K's `other vehicle`) are pycocotools' crowd
/// regions of every class: a detection that matches no ground-truth box at a threshold but
/// overlaps an ignore region by at least the threshold, measured as intersection over the
/// detection's own area, is ignored there (neither true nor false positive). A region may
/// absorb any number of detections.
///
/// # Memory
///
/// Images, boxes and masks are never kept. What is kept per detection is its score, its
/// image's index and two bit sets: 12 bytes (1.2 KB per image at 100 detections per image).
/// Per image, the evaluator keeps one tag per slice key (2 bytes each). The records of one
/// image serve every slice the image belongs to ([`finish_slice`](Self::finish_slice)), so
/// slicing costs no copy.
#[derive(Debug, Clone)]
pub struct DetectionEvaluator {
    /// IoU thresholds matched at: the configured ones first, then 0.5 if it was not among them.
    thresholds: Vec<f64>,
    /// How many of `thresholds` were configured (and are averaged into `ap50_95`).
    configured: usize,
    /// Index of the 0.5 threshold in `thresholds`.
    idx50: usize,
    /// Detections scoring below do not count for `recall50`.
    operating_threshold: f32,
    classes: Vec<ClassAccumulator>,
    ignored: u64,
    /// Slice keys every image is tagged with (see [`add_tagged`](Self::add_tagged)).
    tag_keys: usize,
    /// `tags[image * tag_keys + key]`: the image's value of each key.
    tags: Vec<u16>,
    /// Ground-truth boxes per class of every `(key, value)` slice.
    slice_gt: BTreeMap<(usize, u16), Vec<u64>>,
    images: u32,
}

impl DetectionEvaluator {
    /// An evaluator for classes `0..num_classes` matching at `iou_thresholds`.
    ///
    /// `ap50_95` is the mean AP over `iou_thresholds` (pass [`COCO_IOU_THRESHOLDS`] for COCO's
    /// AP@[.50:.95]); `ap50`, `precision50` and `recall50` always use IoU 0.5, whether or not
    /// it is listed. Thresholds that are not finite or lie outside `[0, 1]` are dropped, and
    /// only the first [`MAX_IOU_THRESHOLDS`] (less one when 0.5 is not among them) are kept;
    /// if none remain, the COCO thresholds are used. A threshold of exactly 1 behaves as
    /// `1 - 1e-10`, as in pycocotools.
    pub fn new(num_classes: usize, iou_thresholds: Vec<f32>) -> Self {
        let mut thresholds: Vec<f64> = iou_thresholds
            .into_iter()
            .filter(|t| t.is_finite() && (0.0..=1.0).contains(t))
            .map(widen)
            .collect();
        if thresholds.is_empty() {
            thresholds = COCO_IOU_THRESHOLDS.into_iter().map(widen).collect();
        }
        thresholds.truncate(MAX_IOU_THRESHOLDS);
        if !thresholds.contains(&0.5) {
            thresholds.truncate(MAX_IOU_THRESHOLDS - 1);
        }
        let configured = thresholds.len();
        let idx50 = match thresholds.iter().position(|&t| t == 0.5) {
            Some(i) => i,
            None => {
                thresholds.push(0.5);
                thresholds.len() - 1
            }
        };
        Self {
            thresholds,
            configured,
            idx50,
            operating_threshold: f32::NEG_INFINITY,
            classes: vec![ClassAccumulator::default(); num_classes],
            ignored: 0,
            tag_keys: 0,
            tags: Vec::new(),
            slice_gt: BTreeMap::new(),
            images: 0,
        }
    }

    /// An evaluator using [`COCO_IOU_THRESHOLDS`].
    pub fn coco(num_classes: usize) -> Self {
        Self::new(num_classes, COCO_IOU_THRESHOLDS.to_vec())
    }

    /// Counts only detections scoring `>= threshold` for `recall50` (the recall at the model's
    /// operating point). AP always ranks every detection. The default counts all of them.
    ///
    /// Greedy matching visits detections by descending score, so the detections above the
    /// threshold match exactly as they would if the others had never been passed in.
    pub fn with_operating_threshold(mut self, threshold: f32) -> Self {
        self.operating_threshold = threshold;
        self
    }

    /// Makes every image carry `keys` slice tags (see [`add_tagged`](Self::add_tagged)).
    /// Call before adding any image.
    pub fn with_slice_keys(mut self, keys: usize) -> Self {
        self.tag_keys = keys;
        self
    }

    /// The IoU thresholds averaged into `ap50_95`, after validation.
    pub fn iou_thresholds(&self) -> Vec<f32> {
        self.thresholds[..self.configured]
            .iter()
            .map(|&t| t as f32)
            .collect()
    }

    /// Detections and ground-truth boxes skipped so far because their class was out of range,
    /// or (detections) because their score was NaN.
    pub fn num_ignored(&self) -> u64 {
        self.ignored
    }

    /// Adds one image's detections and ground truth, without ignore regions.
    pub fn add_image(&mut self, detections: &[Detection], ground_truth: &[BoxLabel]) {
        self.add_image_with_ignore(detections, ground_truth, &[]);
    }

    /// Adds one image's detections, ground truth and ignore regions.
    ///
    /// Entries whose class is `>= num_classes` and detections with a NaN score are ignored
    /// (counted by [`num_ignored`](Self::num_ignored)). Detections with non-finite coordinates
    /// match nothing. An evaluator made [`with_slice_keys`](Self::with_slice_keys) tags the
    /// image with value 0 of every key.
    pub fn add_image_with_ignore(
        &mut self,
        detections: &[Detection],
        ground_truth: &[BoxLabel],
        ignore: &[IgnoreRegion],
    ) {
        let tags = vec![0; self.tag_keys];
        self.add_tagged(detections, ground_truth, ignore, &tags);
    }

    /// Adds one image as [`add_image_with_ignore`](Self::add_image_with_ignore) does, tagged
    /// with its value of each slice key: `tags[key]` (for example weather = 2, scene = 0).
    /// [`finish_slice`](Self::finish_slice) then evaluates the images with one value.
    ///
    /// # Panics
    ///
    /// When `tags` does not have one value per key of
    /// [`with_slice_keys`](Self::with_slice_keys), or after `u32::MAX` images.
    pub fn add_tagged(
        &mut self,
        detections: &[Detection],
        ground_truth: &[BoxLabel],
        ignore: &[IgnoreRegion],
        tags: &[u16],
    ) {
        assert_eq!(tags.len(), self.tag_keys, "one tag per slice key");
        let image = self.images;
        self.images = image.checked_add(1).expect("at most u32::MAX images");
        self.tags.extend_from_slice(tags);
        let num_classes = self.classes.len();
        let mut dets_by_class: Vec<Vec<&Detection>> = vec![Vec::new(); num_classes];
        let mut gts_by_class: Vec<Vec<[f32; 4]>> = vec![Vec::new(); num_classes];
        for det in detections {
            match dets_by_class.get_mut(usize::from(det.class)) {
                Some(list) if !det.score.is_nan() => list.push(det),
                _ => self.ignored += 1,
            }
        }
        for gt in ground_truth {
            match gts_by_class.get_mut(usize::from(gt.class)) {
                Some(list) => list.push([gt.x1, gt.y1, gt.x2, gt.y2]),
                None => self.ignored += 1,
            }
        }
        for (key, &value) in tags.iter().enumerate() {
            let counts = self
                .slice_gt
                .entry((key, value))
                .or_insert_with(|| vec![0; num_classes]);
            for (count, gts) in counts.iter_mut().zip(&gts_by_class) {
                *count += gts.len() as u64;
            }
        }

        for ((acc, mut dets), gts) in self.classes.iter_mut().zip(dets_by_class).zip(gts_by_class) {
            acc.num_gt += gts.len() as u64;
            // Stable sort, so equal scores keep their input order (pycocotools' mergesort).
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            let mut records: Vec<Record> = dets
                .iter()
                .map(|d| Record {
                    score: d.score,
                    image,
                    true_positive: 0,
                    ignored: 0,
                })
                .collect();
            let ious: Vec<Vec<f64>> = dets
                .iter()
                .map(|d| gts.iter().map(|&g| iou_f64(d.bbox(), g)).collect())
                .collect();
            // Each detection's largest overlap with an ignore region, over its own area.
            let ignore_overlap: Vec<f64> = dets
                .iter()
                .map(|d| {
                    ignore
                        .iter()
                        .map(|r| overlap_of_detection(d.bbox(), [r.x1, r.y1, r.x2, r.y2]))
                        .fold(0.0, f64::max)
                })
                .collect();
            for (t, &threshold) in self.thresholds.iter().enumerate() {
                let bit = 1u16 << t;
                let mut matched = vec![false; gts.len()];
                let floor = threshold.min(1.0 - 1e-10);
                for ((record, det_ious), &overlap) in
                    records.iter_mut().zip(&ious).zip(&ignore_overlap)
                {
                    let mut best_iou = floor;
                    let mut best = None;
                    for (g, &iou) in det_ious.iter().enumerate() {
                        if matched[g] || iou < best_iou {
                            continue;
                        }
                        best_iou = iou;
                        best = Some(g);
                    }
                    if let Some(g) = best {
                        matched[g] = true;
                        record.true_positive |= bit;
                    } else if overlap >= floor {
                        record.ignored |= bit;
                    }
                }
            }
            acc.records.append(&mut records);
        }
    }

    /// Number of images added so far.
    pub fn num_images(&self) -> usize {
        self.images as usize
    }

    /// Computes AP and recall per class and their means over classes with ground truth.
    pub fn finish(&self) -> DetectionMetrics {
        self.metrics(|_| true, |class| self.classes[class].num_gt)
    }

    /// [`finish`](Self::finish) over the images tagged with `value` of slice key `key` only.
    /// A slice no image was tagged with has no ground truth (every AP is `None`).
    pub fn finish_slice(&self, key: usize, value: u16) -> DetectionMetrics {
        let keys = self.tag_keys;
        let gt = self.slice_gt.get(&(key, value));
        self.metrics(
            |r| key < keys && self.tags[r.image as usize * keys + key] == value,
            |class| gt.map_or(0, |counts| counts[class]),
        )
    }

    fn metrics(
        &self,
        include: impl Fn(&Record) -> bool,
        num_gt: impl Fn(usize) -> u64,
    ) -> DetectionMetrics {
        let per_class: Vec<ClassAp> = self
            .classes
            .iter()
            .enumerate()
            .map(|(class, acc)| {
                let records: Vec<Record> =
                    acc.records.iter().copied().filter(|r| include(r)).collect();
                self.class_ap(class, records, num_gt(class))
            })
            .collect();
        let mean = |values: Vec<f64>| {
            if values.is_empty() {
                0.0
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            }
        };
        DetectionMetrics {
            map50: mean(per_class.iter().filter_map(|c| c.ap50).collect()),
            map50_95: mean(per_class.iter().filter_map(|c| c.ap50_95).collect()),
            per_class,
        }
    }

    fn class_ap(&self, class: usize, mut records: Vec<Record>, num_gt: u64) -> ClassAp {
        let num_det = records.len() as u64;
        let class = u16::try_from(class).unwrap_or(u16::MAX);
        if num_gt == 0 {
            return ClassAp {
                class,
                ap50: None,
                ap50_95: None,
                num_gt: 0,
                num_det,
                recall50: None,
                precision50: Vec::new(),
            };
        }
        // Rank all detections of the class by descending score; the sort is stable so ties
        // keep image order, as pycocotools' mergesort does.
        records.sort_by(|a, b| b.score.total_cmp(&a.score));
        let curves: Vec<Vec<f64>> = (0..self.thresholds.len())
            .map(|t| {
                let bit = 1u16 << t;
                let ranked = records
                    .iter()
                    .filter(|r| r.ignored & bit == 0)
                    .map(|r| r.true_positive & bit != 0);
                interpolated_precision(ranked, num_gt)
            })
            .collect();
        let ap = |curve: &[f64]| curve.iter().sum::<f64>() / RECALL_POINTS as f64;
        let ap50_95 =
            curves[..self.configured].iter().map(|c| ap(c)).sum::<f64>() / self.configured as f64;
        let bit50 = 1u16 << self.idx50;
        let tp50 = records
            .iter()
            .filter(|r| r.score >= self.operating_threshold && r.true_positive & bit50 != 0)
            .count();
        ClassAp {
            class,
            ap50: Some(ap(&curves[self.idx50])),
            ap50_95: Some(ap50_95),
            num_gt,
            num_det,
            recall50: Some(tp50 as f64 / num_gt as f64),
            precision50: curves[self.idx50].clone(),
        }
    }
}

/// Widens an `f32` threshold through its shortest decimal form, so `0.55f32` compares as the
/// `f64` `0.55` (as pycocotools' thresholds do) rather than `0.550000011920929`.
fn widen(t: f32) -> f64 {
    t.to_string().parse().unwrap_or(f64::from(t))
}

/// COCO's interpolated precision of a ranked list of detections (`true` = true positive)
/// against `num_gt > 0` ground-truth boxes, at the 101 recall points `0, 0.01, ..., 1.0`
/// (`0` past the highest recall reached). Their mean is the 101-point AP.
fn interpolated_precision(ranked_is_tp: impl Iterator<Item = bool>, num_gt: u64) -> Vec<f64> {
    let num_gt = num_gt as f64;
    let mut recall = Vec::new();
    let mut precision = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    for is_tp in ranked_is_tp {
        if is_tp {
            tp += 1;
        } else {
            fp += 1;
        }
        // tp + fp >= 1, so no epsilon is needed in the denominator.
        recall.push(tp as f64 / num_gt);
        precision.push(tp as f64 / (tp + fp) as f64);
    }
    // Precision envelope: monotone non-increasing from the right.
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    (0..RECALL_POINTS)
        .map(|k| {
            // `np.linspace(0, 1, 101)` computes `k * 0.01`; matching it keeps ties identical.
            let threshold = k as f64 * 0.01;
            // searchsorted(side = "left"): first rank whose recall reaches the threshold.
            let idx = recall.partition_point(|&r| r < threshold);
            precision.get(idx).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Error from [`SegmentationEvaluator::add`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Prediction and target masks have different pixel counts.
    #[error("segmentation mask size mismatch: prediction has {pred} pixels, target has {target}")]
    LengthMismatch { pred: usize, target: usize },
}

/// Streaming binary segmentation evaluator (one foreground class against background).
///
/// Accumulates a confusion matrix over all pixels added. A pixel value of `0` is background and
/// any non-zero value (normally `1`) is foreground. Every ratio whose denominator is zero (for
/// example the foreground IoU before any foreground pixel was predicted or labelled) is
/// reported as `0.0`, so no metric is ever NaN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentationEvaluator {
    /// `confusion[target][pred]`.
    confusion: [[u64; 2]; 2],
}

impl SegmentationEvaluator {
    /// An empty evaluator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one mask pair; `pred` and `target` are per-pixel labels in the same order.
    ///
    /// Returns [`MetricsError::LengthMismatch`] (and adds nothing) if their lengths differ.
    pub fn add(&mut self, pred: &[u8], target: &[u8]) -> Result<(), MetricsError> {
        if pred.len() != target.len() {
            return Err(MetricsError::LengthMismatch {
                pred: pred.len(),
                target: target.len(),
            });
        }
        let mut counts = [[0u64; 2]; 2];
        for (&p, &t) in pred.iter().zip(target) {
            counts[usize::from(t != 0)][usize::from(p != 0)] += 1;
        }
        for (row, add) in self.confusion.iter_mut().zip(counts) {
            for (cell, n) in row.iter_mut().zip(add) {
                *cell += n;
            }
        }
        Ok(())
    }

    /// Adds another evaluator's counts (for evaluating shards in parallel).
    pub fn merge(&mut self, other: &SegmentationEvaluator) {
        for (row, add) in self.confusion.iter_mut().zip(other.confusion) {
            for (cell, n) in row.iter_mut().zip(add) {
                *cell += n;
            }
        }
    }

    /// The confusion matrix `[[tn, fp], [fn, tp]]`, indexed `[target][pred]`.
    pub fn confusion(&self) -> [[u64; 2]; 2] {
        self.confusion
    }

    /// Total pixels added.
    pub fn num_pixels(&self) -> u64 {
        self.confusion.iter().flatten().sum()
    }

    fn tn(&self) -> u64 {
        self.confusion[0][0]
    }
    fn fp(&self) -> u64 {
        self.confusion[0][1]
    }
    fn fn_(&self) -> u64 {
        self.confusion[1][0]
    }
    fn tp(&self) -> u64 {
        self.confusion[1][1]
    }

    /// Foreground IoU `TP / (TP + FP + FN)`; `0` when there is no foreground at all.
    pub fn iou(&self) -> f64 {
        ratio(self.tp(), self.tp() + self.fp() + self.fn_())
    }

    /// Background IoU `TN / (TN + FP + FN)`; `0` when there is no background at all.
    pub fn background_iou(&self) -> f64 {
        ratio(self.tn(), self.tn() + self.fp() + self.fn_())
    }

    /// Mean of the background and foreground IoU.
    pub fn miou(&self) -> f64 {
        (self.background_iou() + self.iou()) / 2.0
    }

    /// Foreground recall (true-positive rate) `TP / (TP + FN)`; `0` without foreground targets.
    pub fn pixel_recall(&self) -> f64 {
        ratio(self.tp(), self.tp() + self.fn_())
    }

    /// Foreground precision `TP / (TP + FP)`; `0` when nothing was predicted foreground.
    pub fn pixel_precision(&self) -> f64 {
        ratio(self.tp(), self.tp() + self.fp())
    }

    /// Balanced accuracy `(TPR + TNR) / 2`, where each rate is `0` when its class has no
    /// target pixels.
    pub fn balanced_accuracy(&self) -> f64 {
        let tnr = ratio(self.tn(), self.tn() + self.fp());
        (self.pixel_recall() + tnr) / 2.0
    }
}

/// `num / den`, or `0` when `den == 0`.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class: u16, score: f32, b: [f32; 4]) -> Detection {
        Detection::new(class as usize, score, b)
    }

    fn gt(class: u16, b: [f32; 4]) -> BoxLabel {
        BoxLabel {
            class,
            x1: b[0],
            y1: b[1],
            x2: b[2],
            y2: b[3],
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn iou_of_known_boxes() {
        // Identical boxes.
        assert_eq!(box_iou([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]), 1.0);
        // Overlap 5x10 = 50; union 100 + 100 - 50 = 150.
        let iou = box_iou([0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]);
        assert!((iou - 1.0 / 3.0).abs() < 1e-6, "{iou}");
        // Overlap 2x2 = 4; areas 16 and 4 -> union 16.
        let iou = box_iou([0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]);
        assert!((iou - 0.25).abs() < 1e-6, "{iou}");
        // Touching edges: no overlap.
        assert_eq!(
            box_iou([0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]),
            0.0
        );
        // Degenerate and non-finite boxes.
        assert_eq!(box_iou([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]), 0.0);
        assert_eq!(box_iou([5.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 5.0]), 0.0);
        assert_eq!(
            box_iou([f32::NAN, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]),
            0.0
        );
        assert_eq!(
            box_iou([0.0, 0.0, f32::INFINITY, 1.0], [0.0, 0.0, 1.0, 1.0]),
            0.0
        );
    }

    #[test]
    fn hand_computed_ap() {
        // 3 GT boxes; 4 detections ranked TP, FP, TP, FP.
        // cum TP 1,1,2,2 / cum FP 0,1,1,2 -> recall 1/3,1/3,2/3,2/3, precision 1,1/2,2/3,1/2.
        // Envelope from the right: 1, 2/3, 2/3, 1/2.
        // Recall points 0.00..=0.33 (34) -> 1; 0.34..=0.66 (33) -> 2/3; 0.67..=1.00 (34) -> 0.
        // AP = (34 + 33 * 2/3) / 101 = 56/101.
        let gts = [
            gt(0, [0.0, 0.0, 10.0, 10.0]),
            gt(0, [20.0, 0.0, 30.0, 10.0]),
            gt(0, [40.0, 0.0, 50.0, 10.0]),
        ];
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.8, [60.0, 0.0, 70.0, 10.0]),
            det(0, 0.7, [20.0, 0.0, 30.0, 10.0]),
            det(0, 0.6, [80.0, 0.0, 90.0, 10.0]),
        ];
        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(&dets, &gts);
        let m = ev.finish();
        let c = &m.per_class[0];
        assert!(close(c.ap50.unwrap(), 56.0 / 101.0), "{c:?}");
        // Exact matches, so every threshold gives the same AP.
        assert!(close(c.ap50_95.unwrap(), 56.0 / 101.0), "{c:?}");
        assert!(close(c.recall50.unwrap(), 2.0 / 3.0));
        assert_eq!((c.num_gt, c.num_det), (3, 4));
        assert!(close(m.map50, 56.0 / 101.0));
    }

    #[test]
    fn ranking_spans_images() {
        // Same case as `hand_computed_ap`, split over two images in a scrambled order:
        // the ranking is global, so AP is unchanged.
        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(
            &[
                det(0, 0.6, [80.0, 0.0, 90.0, 10.0]),
                det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            ],
            &[
                gt(0, [0.0, 0.0, 10.0, 10.0]),
                gt(0, [40.0, 0.0, 50.0, 10.0]),
            ],
        );
        ev.add_image(
            &[
                det(0, 0.7, [20.0, 0.0, 30.0, 10.0]),
                det(0, 0.8, [60.0, 0.0, 70.0, 10.0]),
            ],
            &[gt(0, [20.0, 0.0, 30.0, 10.0])],
        );
        assert!(close(ev.finish().map50, 56.0 / 101.0));
    }

    #[test]
    fn perfect_detector_and_no_detections() {
        let gts = [gt(0, [0.0, 0.0, 10.0, 10.0]), gt(0, [5.0, 5.0, 25.0, 30.0])];
        let dets: Vec<Detection> = gts
            .iter()
            .map(|g| det(g.class, 0.5, [g.x1, g.y1, g.x2, g.y2]))
            .collect();
        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(&dets, &gts);
        let m = ev.finish();
        assert_eq!(m.map50, 1.0);
        assert_eq!(m.map50_95, 1.0);
        assert_eq!(m.per_class[0].recall50, Some(1.0));

        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(&[], &gts);
        let m = ev.finish();
        assert_eq!(m.per_class[0].ap50, Some(0.0));
        assert_eq!(m.per_class[0].ap50_95, Some(0.0));
        assert_eq!(m.per_class[0].recall50, Some(0.0));
        assert_eq!(m.map50, 0.0);
    }

    #[test]
    fn duplicate_detection_is_false_positive() {
        // 2 GT; ranked: A on GT1 (TP), B duplicate of GT1 (FP), C on GT2 (TP).
        // recall 1/2,1/2,1; precision 1,1/2,2/3 -> envelope 1,2/3,2/3.
        // Recall points 0.00..=0.50 (51) -> 1; 0.51..=1.00 (50) -> 2/3.
        // AP = (51 + 50 * 2/3) / 101 = 253/303.
        let gts = [
            gt(0, [0.0, 0.0, 10.0, 10.0]),
            gt(0, [20.0, 0.0, 30.0, 10.0]),
        ];
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.7, [20.0, 0.0, 30.0, 10.0]),
        ];
        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(&dets, &gts);
        let c = &ev.finish().per_class[0];
        assert!(close(c.ap50.unwrap(), 253.0 / 303.0), "{c:?}");
        assert_eq!(c.recall50, Some(1.0));
        assert_eq!(c.num_det, 3);
    }

    #[test]
    fn greedy_match_takes_highest_iou() {
        // The first detection overlaps GT 0 with IoU 0.6 and GT 1 with IoU 1: it takes GT 1
        // (not the first GT above the threshold), leaving GT 0 for the second detection, which
        // overlaps it exactly. Both are TPs at every threshold.
        let gts = [gt(0, [0.0, 0.0, 10.0, 6.0]), gt(0, [0.0, 0.0, 10.0, 10.0])];
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.8, [0.0, 0.0, 10.0, 6.0]),
        ];
        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(&dets, &gts);
        assert_eq!(ev.finish().map50_95, 1.0);
    }

    #[test]
    fn iou_thresholds_split_ap50_and_ap50_95() {
        // One GT [0,10]x[0,10], one detection [0,10]x[0,6]: IoU 0.6, a TP at thresholds
        // 0.50, 0.55, 0.60 and a FP at the 7 higher ones -> AP50 = 1, AP50:95 = 3/10.
        let mut ev = DetectionEvaluator::coco(1);
        ev.add_image(
            &[det(0, 0.9, [0.0, 0.0, 10.0, 6.0])],
            &[gt(0, [0.0, 0.0, 10.0, 10.0])],
        );
        let c = &ev.finish().per_class[0];
        assert_eq!(c.ap50, Some(1.0));
        assert!(close(c.ap50_95.unwrap(), 0.3), "{c:?}");

        // Without 0.5 in the list, AP50 is still computed but not averaged in.
        let mut ev = DetectionEvaluator::new(1, vec![0.75]);
        assert_eq!(ev.iou_thresholds(), vec![0.75]);
        ev.add_image(
            &[det(0, 0.9, [0.0, 0.0, 10.0, 6.0])],
            &[gt(0, [0.0, 0.0, 10.0, 10.0])],
        );
        let c = &ev.finish().per_class[0];
        assert_eq!((c.ap50, c.ap50_95), (Some(1.0), Some(0.0)));

        // Invalid thresholds fall back to COCO's.
        let ev = DetectionEvaluator::new(1, vec![f32::NAN, 1.5]);
        assert_eq!(ev.iou_thresholds(), COCO_IOU_THRESHOLDS.to_vec());
    }

    #[test]
    fn classes_are_separate() {
        // Class 0: perfect. Class 1: its only detection sits on a class-0 box, so it is a FP
        // and the class-1 GT is missed. Class 2: no GT, excluded from the mean.
        let gts = [
            gt(0, [0.0, 0.0, 10.0, 10.0]),
            gt(1, [50.0, 50.0, 60.0, 60.0]),
        ];
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(1, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(2, 0.9, [50.0, 50.0, 60.0, 60.0]),
            // Out-of-range class and NaN score: ignored.
            det(7, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, f32::NAN, [0.0, 0.0, 10.0, 10.0]),
        ];
        let mut ev = DetectionEvaluator::coco(3);
        ev.add_image(&dets, &gts);
        assert_eq!(ev.num_ignored(), 2);
        let m = ev.finish();
        assert_eq!(m.per_class.len(), 3);
        assert_eq!(m.per_class[0].ap50, Some(1.0));
        assert_eq!(m.per_class[1].ap50, Some(0.0));
        assert_eq!(m.per_class[1].recall50, Some(0.0));
        assert_eq!(m.per_class[2].ap50, None);
        assert_eq!(m.per_class[2].recall50, None);
        assert_eq!(m.per_class[2].num_det, 1);
        assert!(close(m.map50, 0.5));
        assert!(close(m.map50_95, 0.5));
    }

    /// The test set and pycocotools' numbers for it, from `tests/data/coco_reference.py`
    /// (the command is in that file).
    const COCO_REFERENCE: &str = include_str!("../tests/data/coco_reference.json");

    /// Runs the evaluator over the reference set; `with_ignore` passes its ignore regions.
    fn evaluate_reference(with_ignore: bool) -> (DetectionMetrics, serde_json::Value) {
        let reference: serde_json::Value = serde_json::from_str(COCO_REFERENCE).unwrap();
        let classes = reference["classes"].as_u64().unwrap() as usize;
        let mut ev = DetectionEvaluator::coco(classes);
        let numbers = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        for image in reference["images"].as_array().unwrap() {
            let gt: Vec<BoxLabel> = image["gt"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| {
                    let v = numbers(g);
                    BoxLabel {
                        class: v[0] as u16,
                        x1: v[1],
                        y1: v[2],
                        x2: v[3],
                        y2: v[4],
                    }
                })
                .collect();
            let ignore: Vec<IgnoreRegion> = image["ignore"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let v = numbers(r);
                    IgnoreRegion {
                        x1: v[0],
                        y1: v[1],
                        x2: v[2],
                        y2: v[3],
                    }
                })
                .collect();
            let dets: Vec<Detection> = image["dets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let v = numbers(d);
                    Detection::new(v[0] as usize, v[1], [v[2], v[3], v[4], v[5]])
                })
                .collect();
            let ignore = if with_ignore { ignore } else { Vec::new() };
            ev.add_image_with_ignore(&dets, &gt, &ignore);
        }
        (ev.finish(), reference["expected"].clone())
    }

    #[test]
    fn matches_pycocotools_with_crowd_regions() {
        let (got, want) = evaluate_reference(true);
        let close = |a: f64, b: &serde_json::Value, what: &str| {
            let b = b.as_f64().unwrap();
            assert!((a - b).abs() < 1e-9, "{what}: {a} vs pycocotools {b}");
        };
        close(got.map50, &want["map50"], "mAP@0.5");
        close(got.map50_95, &want["map50_95"], "mAP@[.5:.95]");
        for (c, want) in want["per_class"].as_array().unwrap().iter().enumerate() {
            let got = &got.per_class[c];
            close(
                got.ap50.unwrap(),
                &want["ap50"],
                &format!("class {c} AP@0.5"),
            );
            close(
                got.ap50_95.unwrap(),
                &want["ap50_95"],
                &format!("class {c} AP@[.5:.95]"),
            );
            close(
                got.recall50.unwrap(),
                &want["recall50"],
                &format!("class {c} recall@0.5"),
            );
            let curve = want["precision50"].as_array().unwrap();
            assert_eq!(got.precision50.len(), curve.len());
            for (k, (&p, want)) in got.precision50.iter().zip(curve).enumerate() {
                close(p, want, &format!("class {c} precision at recall {k}/100"));
            }
        }
        // Without the ignore regions, detections in them count as false positives.
        let (without, _) = evaluate_reference(false);
        assert!(
            without.map50 < got.map50 - 0.01,
            "{} vs {}",
            without.map50,
            got.map50
        );
    }

    #[test]
    fn ignore_regions_absorb_unmatched_detections_only() {
        let gt = [BoxLabel {
            class: 0,
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        }];
        let region = [IgnoreRegion {
            x1: 0.0,
            y1: 0.0,
            x2: 40.0,
            y2: 40.0,
        }];
        // By score: a duplicate of the box (TP, then the copy is ignored, not a false
        // positive), a detection half inside the region (ignored at 0.5, false positive at
        // 0.55 and above), and one outside (false positive).
        let dets = [
            Detection::new(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            Detection::new(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
            Detection::new(0, 0.7, [30.0, 0.0, 50.0, 10.0]),
            Detection::new(0, 0.6, [60.0, 60.0, 70.0, 70.0]),
        ];
        let mut ev = DetectionEvaluator::new(1, vec![0.5, 0.55]);
        ev.add_image_with_ignore(&dets, &gt, &region);
        // (true positive, ignored) bit sets; bit 0 is IoU 0.5, bit 1 is 0.55.
        let outcomes: Vec<(u16, u16)> = ev.classes[0]
            .records
            .iter()
            .map(|r| (r.true_positive, r.ignored))
            .collect();
        assert_eq!(outcomes, vec![(0b11, 0), (0, 0b11), (0, 0b01), (0, 0)]);
        // The single box is found first: AP 1 at both thresholds.
        let m = ev.finish();
        assert_eq!(m.per_class[0].ap50, Some(1.0));
        assert_eq!(m.per_class[0].recall50, Some(1.0));
    }

    #[test]
    fn recall_at_the_operating_threshold() {
        let gts = [
            gt(0, [0.0, 0.0, 10.0, 10.0]),
            gt(0, [20.0, 0.0, 30.0, 10.0]),
        ];
        // The better box is found at 0.9, the other only at 0.2.
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.5, [50.0, 50.0, 60.0, 60.0]),
            det(0, 0.2, [20.0, 0.0, 30.0, 10.0]),
        ];
        for (threshold, recall) in [(0.0, 1.0), (0.3, 0.5), (0.9, 0.5), (0.95, 0.0)] {
            let mut ev = DetectionEvaluator::coco(1).with_operating_threshold(threshold);
            ev.add_image(&dets, &gts);
            let c = &ev.finish().per_class[0];
            assert_eq!(c.recall50, Some(recall), "threshold {threshold}");
            // AP ranks every detection whatever the threshold: precision 1 up to recall 0.5,
            // then 2/3 up to recall 1.
            assert!(close(c.ap50.unwrap(), (51.0 + 50.0 * 2.0 / 3.0) / 101.0));
            assert_eq!(c.precision50.len(), 101);
            assert_eq!(c.precision50[50], 1.0);
            assert!(close(c.precision50[51], 2.0 / 3.0));
            assert!(close(c.precision50[100], 2.0 / 3.0));
        }
    }

    #[test]
    fn slices_equal_separate_evaluations() {
        // Three images tagged (weather, scene): (0, 0), (1, 0), (0, 1).
        let images = [
            (
                vec![
                    det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
                    det(1, 0.4, [0.0, 0.0, 5.0, 5.0]),
                ],
                vec![gt(0, [0.0, 0.0, 10.0, 10.0])],
                [0u16, 0u16],
            ),
            (
                vec![det(0, 0.8, [40.0, 40.0, 50.0, 50.0])],
                vec![gt(0, [0.0, 0.0, 10.0, 10.0]), gt(1, [0.0, 0.0, 5.0, 5.0])],
                [1, 0],
            ),
            (
                vec![
                    det(0, 0.7, [1.0, 0.0, 11.0, 10.0]),
                    det(1, 0.6, [0.0, 0.0, 5.0, 5.0]),
                ],
                vec![gt(0, [0.0, 0.0, 10.0, 10.0]), gt(1, [0.0, 0.0, 5.0, 5.0])],
                [0, 1],
            ),
        ];
        let mut tagged = DetectionEvaluator::coco(2).with_slice_keys(2);
        for (dets, gts, tags) in &images {
            tagged.add_tagged(dets, gts, &[], tags);
        }
        assert_eq!(tagged.num_images(), 3);
        for key in 0..2 {
            for value in 0..2u16 {
                let mut separate = DetectionEvaluator::coco(2);
                for (dets, gts, _) in images.iter().filter(|(_, _, t)| t[key] == value) {
                    separate.add_image(dets, gts);
                }
                assert_eq!(
                    tagged.finish_slice(key, value),
                    separate.finish(),
                    "key {key} value {value}"
                );
            }
        }
        // A value no image has: no ground truth, no detections.
        let empty = tagged.finish_slice(0, 7);
        assert!(empty
            .per_class
            .iter()
            .all(|c| c.ap50.is_none() && c.num_det == 0));
        // The whole evaluation is not a slice of itself, but equals an untagged one.
        let mut untagged = DetectionEvaluator::coco(2);
        for (dets, gts, _) in &images {
            untagged.add_image(dets, gts);
        }
        assert_eq!(tagged.finish(), untagged.finish());
    }

    #[test]
    fn no_ground_truth_anywhere() {
        let mut ev = DetectionEvaluator::coco(2);
        ev.add_image(&[det(0, 0.9, [0.0, 0.0, 1.0, 1.0])], &[]);
        let m = ev.finish();
        assert_eq!((m.map50, m.map50_95), (0.0, 0.0));
        assert!(m.per_class.iter().all(|c| c.ap50.is_none()));
        // Serializes without NaN.
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("NaN"), "{json}");
    }

    #[test]
    fn segmentation_scores() {
        // target: 1 1 0 0 0 0 1 1 ; pred: 1 0 0 0 1 0 1 1
        // TP = 3 (px 0, 6, 7), FN = 1 (px 1), FP = 1 (px 4), TN = 3 (px 2, 3, 5).
        let target = [1, 1, 0, 0, 0, 0, 1, 1];
        let pred = [1, 0, 0, 0, 1, 0, 1, 1];
        let mut ev = SegmentationEvaluator::new();
        ev.add(&pred, &target).unwrap();
        assert_eq!(ev.confusion(), [[3, 1], [1, 3]]);
        assert_eq!(ev.num_pixels(), 8);
        // IoU fg = 3 / 5, bg = 3 / 5 -> mIoU 3/5.
        assert!(close(ev.iou(), 0.6));
        assert!(close(ev.background_iou(), 0.6));
        assert!(close(ev.miou(), 0.6));
        // Recall 3/4, precision 3/4, TNR 3/4 -> balanced accuracy 3/4.
        assert!(close(ev.pixel_recall(), 0.75));
        assert!(close(ev.pixel_precision(), 0.75));
        assert!(close(ev.balanced_accuracy(), 0.75));

        // A second mask, all predicted background: target 1 0 0 0, pred 0 0 0 0.
        // Totals: TP 3, FN 2, FP 1, TN 6.
        ev.add(&[0, 0, 0, 0], &[1, 0, 0, 0]).unwrap();
        assert_eq!(ev.confusion(), [[6, 1], [2, 3]]);
        // fg IoU 3/6; bg IoU 6/9; mIoU (1/2 + 2/3)/2 = 7/12.
        assert!(close(ev.iou(), 0.5));
        assert!(close(ev.miou(), 7.0 / 12.0));
        // TPR 3/5, TNR 6/7 -> (3/5 + 6/7)/2 = 51/70.
        assert!(close(ev.pixel_recall(), 0.6));
        assert!(close(ev.balanced_accuracy(), 51.0 / 70.0));

        // Merging doubles every count and keeps every ratio.
        let mut doubled = ev;
        doubled.merge(&ev);
        assert_eq!(doubled.confusion(), [[12, 2], [4, 6]]);
        assert!(close(doubled.miou(), ev.miou()));
    }

    #[test]
    fn segmentation_edge_cases() {
        let mut ev = SegmentationEvaluator::new();
        let err = ev.add(&[0, 1], &[0]).unwrap_err();
        assert_eq!(err, MetricsError::LengthMismatch { pred: 2, target: 1 });
        assert!(err.to_string().contains("mismatch"));
        assert_eq!(ev.num_pixels(), 0);
        // Empty evaluator: every ratio is defined as 0.
        assert_eq!(ev.iou(), 0.0);
        assert_eq!(ev.miou(), 0.0);
        assert_eq!(ev.pixel_recall(), 0.0);
        assert_eq!(ev.balanced_accuracy(), 0.0);
        // Non-zero values other than 1 count as foreground; background only -> fg IoU 0.
        ev.add(&[255, 0], &[1, 0]).unwrap();
        assert_eq!(ev.confusion(), [[1, 0], [0, 1]]);
        let mut bg = SegmentationEvaluator::new();
        bg.add(&[0, 0], &[0, 0]).unwrap();
        assert_eq!((bg.iou(), bg.background_iou(), bg.miou()), (0.0, 1.0, 0.5));
        assert_eq!(bg.balanced_accuracy(), 0.5);
    }
}
