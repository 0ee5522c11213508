//! Evaluation on a held-out split: detection AP (COCO-style, 101-point), drivable-area mIoU,
//! lane-line IoU and accuracy, sliced by condition.
//!
//! Metrics are computed where [`MetricResolution`] says: at each image's original resolution
//! (boxes mapped back out of the letterbox and clipped to the image; masks cut out of the
//! letterbox and resized, nearest, to the image, exactly as `percept predict` outputs them;
//! labels as stored), or at network resolution on the letterboxed input and labels.
//!
//! Detections inside an ignore region that match no box count as neither true nor false
//! positives (pycocotools' crowd rule; see [`DetectionEvaluator`]). Ignore regions are the
//! dataset's own (KITTI's `DontCare`, ...) and ground-truth boxes under `min_box_side`
//! network pixels once letterboxed, which are too small to score (at either resolution, so
//! the two agree on what counts).

use std::borrow::Cow;
use std::fmt::Write as _;

use burn::vision::VisionBackend;
use image::{imageops, GrayImage, RgbImage};
use indicatif::ProgressBar;
use percept_data::{
    collate, AugmentParams, Batch, BoxLabel, Conditions, Dataset, IgnoreRegion, Letterbox, Sample,
};
use percept_model::{decode_detections, DecodeOptions, PerceptionModel, ScoredBox};
use serde::{Deserialize, Serialize};

use crate::image_space::{box_to_image, mask_to_image, masks, network_mask};
use crate::inputs::batch_tensors;
pub use crate::metrics::MetricResolution;
use crate::metrics::{Detection, DetectionEvaluator, DetectionMetrics, SegmentationEvaluator};
use crate::model_file::ModelCard;
use crate::overlay::draw_overlay;
use crate::EvalError;

/// Score threshold used for the AP curves (COCO keeps low-scoring detections for AP; the
/// operating threshold from the model card applies to recall).
const AP_SCORE_THRESHOLD: f32 = 0.001;

/// Metrics of one binary segmentation task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentationReport {
    /// IoU of the positive class.
    pub iou: f64,
    /// Mean of background and positive IoU.
    pub miou: f64,
    /// TP / (TP + FN), the "lane accuracy" YOLOP reports.
    pub pixel_recall: f64,
    /// (TPR + TNR) / 2, the "lane accuracy" HybridNets reports.
    pub balanced_accuracy: f64,
    /// Pixel counts `[[tn, fp], [fn, tp]]`, indexed `[target][pred]`.
    pub confusion: [[u64; 2]; 2],
}

impl SegmentationReport {
    fn from(e: &SegmentationEvaluator) -> Self {
        SegmentationReport {
            iou: e.iou(),
            miou: e.miou(),
            pixel_recall: e.pixel_recall(),
            balanced_accuracy: e.balanced_accuracy(),
            confusion: e.confusion(),
        }
    }
}

/// Detection metrics with class names and the vehicle group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectionReport {
    pub classes: Vec<String>,
    pub metrics: DetectionMetrics,
    /// Recall at IoU 0.5 over all classes at the operating score threshold.
    pub recall50_at_threshold: f64,
    pub operating_threshold: f32,
    /// Mean AP@0.5 over the vehicle classes present (car, truck, bus).
    pub vehicle_ap50: Option<f64>,
}

/// Metrics of the images that share one condition value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceReport {
    /// `region`, `weather`, `time_of_day` or `scene`.
    pub key: String,
    pub value: String,
    pub images: usize,
    /// `None` when the task is not evaluated, or (AP) no image of the slice has a box.
    pub map50: Option<f64>,
    pub map50_95: Option<f64>,
    pub drivable_miou: Option<f64>,
    pub lane_iou: Option<f64>,
}

/// The condition keys evaluation slices by. (The region slice is the whole evaluation: one
/// dataset has one region.)
const SLICE_KEYS: [&str; 3] = ["weather", "time_of_day", "scene"];

/// An example prediction drawn over its image, for the report.
#[derive(Debug, Clone)]
pub struct ExampleImage {
    /// The sample's id.
    pub id: String,
    /// The overlay (predicted masks and boxes over the image), at most
    /// [`EXAMPLE_MAX_WIDTH`] wide.
    pub overlay: RgbImage,
}

/// Widest example overlay kept for the report (larger images are scaled down).
pub const EXAMPLE_MAX_WIDTH: u32 = 640;

/// An evaluation's report and the example overlays picked along the way.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub report: EvalReport,
    pub examples: Vec<ExampleImage>,
}

/// A whole evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub images: usize,
    /// Where metrics were computed.
    pub resolution: MetricResolution,
    pub input: [usize; 2],
    pub detection: Option<DetectionReport>,
    pub drivable: Option<SegmentationReport>,
    pub lanes: Option<SegmentationReport>,
    /// The same metrics by region, weather, time of day and scene (the frames' conditions),
    /// in key then value order.
    pub slices: Vec<SliceReport>,
    /// How the dataset's classes were scored against the model's, when the two lists differ
    /// (absent when they are the same list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_match: Option<ClassMatch>,
}

/// How [`ClassMatch`] paired a dataset's classes with a model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassMatchKind {
    /// Through the model's fine-tune class mapping: the dataset has the global class list the
    /// model was fine-tuned from, and its boxes are relabelled as the fine-tune relabelled its
    /// training data (merged classes become their country class; dropped ones vanish).
    FinetuneMapping,
    /// By class name.
    Name,
}

/// A model class scored against a dataset's boxes, and the dataset classes those boxes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredClass {
    /// The model's class.
    pub class: String,
    /// The dataset's classes whose boxes count as it.
    pub from: Vec<String>,
}

/// A dataset's class list matched to a model's different one: which dataset boxes are scored
/// as which model class. Made by [`ClassMatch::between`]; [`evaluate_matched`] applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMatch {
    pub how: ClassMatchKind,
    pub model_classes: Vec<String>,
    pub dataset_classes: Vec<String>,
    /// For each dataset class (by index), the model class (index) its boxes are scored as;
    /// `None`: its boxes are dropped.
    pub relabel: Vec<Option<u16>>,
    /// Model classes scored, in the model's order, with the dataset classes behind each.
    pub scored: Vec<ScoredClass>,
    /// Dataset classes whose boxes are dropped (the model has no class for them).
    pub dropped: Vec<String>,
    /// Model classes the dataset has no boxes for: reported with no AP.
    pub unscored: Vec<String>,
}

impl ClassMatch {
    /// How a model of `card`'s classes is scored on a dataset of `dataset_classes`: `None`
    /// when the lists are the same (boxes scored as they are). When the model is a fine-tune
    /// whose class mapping starts from exactly `dataset_classes`, boxes are relabelled with
    /// the mapping ([`percept_data::ClassMapping::relabel`]); otherwise classes are matched by
    /// name. An error naming both lists when no class is shared.
    pub fn between(
        card: &ModelCard,
        dataset_classes: &[String],
    ) -> Result<Option<ClassMatch>, EvalError> {
        let model = &card.classes;
        if model.as_slice() == dataset_classes {
            return Ok(None);
        }
        let mapping = card
            .provenance
            .finetune
            .as_ref()
            .map(|f| &f.class_mapping)
            .filter(|m| m.global.as_slice() == dataset_classes && m.class_names() == *model);
        let (how, relabel) = match mapping {
            Some(m) => (ClassMatchKind::FinetuneMapping, m.relabel()),
            None => (
                ClassMatchKind::Name,
                dataset_classes
                    .iter()
                    .map(|d| {
                        model
                            .iter()
                            .position(|m| m == d)
                            .and_then(|i| u16::try_from(i).ok())
                    })
                    .collect(),
            ),
        };
        let scored: Vec<ScoredClass> = model
            .iter()
            .enumerate()
            .map(|(i, class)| ScoredClass {
                class: class.clone(),
                from: dataset_classes
                    .iter()
                    .zip(&relabel)
                    .filter(|(_, r)| r.map(usize::from) == Some(i))
                    .map(|(d, _)| d.clone())
                    .collect(),
            })
            .collect();
        let (scored, unscored): (Vec<ScoredClass>, Vec<ScoredClass>) =
            scored.into_iter().partition(|c| !c.from.is_empty());
        if scored.is_empty() {
            return Err(EvalError::Data(format!(
                "the model detects [{}] and the dataset's classes are [{}]: no class is \
                 shared (by name{}), so there is nothing to score; evaluate on a dataset with \
                 some of the model's classes",
                model.join(", "),
                dataset_classes.join(", "),
                if card.provenance.finetune.is_some() {
                    ", or through the model's fine-tune class mapping"
                } else {
                    ""
                }
            )));
        }
        let dropped = dataset_classes
            .iter()
            .zip(&relabel)
            .filter(|(_, r)| r.is_none())
            .map(|(d, _)| d.clone())
            .collect();
        Ok(Some(ClassMatch {
            how,
            model_classes: model.clone(),
            dataset_classes: dataset_classes.to_vec(),
            relabel,
            scored,
            dropped,
            unscored: unscored.into_iter().map(|c| c.class).collect(),
        }))
    }

    /// `boxes` (of the dataset's classes) as the model's classes: relabelled, those of a
    /// dropped class removed.
    pub fn apply(&self, boxes: &mut Vec<BoxLabel>) {
        boxes.retain_mut(
            |b| match self.relabel.get(usize::from(b.class)).copied().flatten() {
                Some(class) => {
                    b.class = class;
                    true
                }
                None => false,
            },
        );
    }

    /// What was scored and how, one line each: the way classes were matched, each scored
    /// class and its dataset classes, the dropped dataset classes, the unscored model classes.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![match self.how {
            ClassMatchKind::FinetuneMapping => "the model's classes differ from the dataset's; \
                 its boxes are relabelled through the model's fine-tune class mapping"
                .to_string(),
            ClassMatchKind::Name => "the model's classes differ from the dataset's; classes \
                 are matched by name"
                .to_string(),
        }];
        for c in &self.scored {
            lines.push(if c.from.len() == 1 && c.from[0] == c.class {
                format!("scored: {}", c.class)
            } else {
                format!("scored: {} <- {}", c.class, c.from.join(" + "))
            });
        }
        if !self.dropped.is_empty() {
            lines.push(format!(
                "dataset classes dropped (the model has no class for them): {}",
                self.dropped.join(", ")
            ));
        }
        if !self.unscored.is_empty() {
            lines.push(format!(
                "model classes not in the dataset (no AP): {}",
                self.unscored.join(", ")
            ));
        }
        lines
    }
}

/// Detections decoded with `decode` (NMS) and binary masks (drivable, lanes) of one batch,
/// as [`evaluate`] computes them; `wanted`: (detection, drivable, lanes).
pub type Inferred = (Option<Vec<Vec<ScoredBox>>>, [Option<Vec<u8>>; 2]);

/// `batch` through `net` (the network, or an export another runtime runs) as evaluation runs
/// it (also what `percept warmup` compiles).
pub fn infer<B: VisionBackend>(
    net: &impl PerceptionModel<B>,
    batch: &Batch,
    decode: &DecodeOptions,
    wanted: (bool, bool, bool),
    device: &B::Device,
) -> Inferred {
    let (images, _) = batch_tensors::<B>(batch, device);
    let out = net.perceive(images);
    let decoded = match (&out.detection, wanted.0) {
        (Some(det), true) => Some(decode_detections(det, batch.height, batch.width, decode)),
        _ => None,
    };
    let masks = [
        out.drivable.filter(|_| wanted.1).map(masks),
        out.lanes.filter(|_| wanted.2).map(masks),
    ];
    (decoded, masks)
}

/// How [`evaluate`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Where metrics are computed.
    pub resolution: MetricResolution,
    /// Example overlays to keep for the report, spread evenly over the split.
    pub examples: usize,
    /// Evaluate only the split's first this many images (validation during training); 0: all.
    pub max_images: usize,
}

/// The slice values seen so far and the segmentation counts of each.
struct Slices {
    /// `values[key]`: every value of [`SLICE_KEYS`]`[key]` seen, in order of first sight; a
    /// value's index is its tag in the detection evaluator.
    values: [Vec<String>; 3],
    /// `state[key][tag]`.
    state: [Vec<SliceCounts>; 3],
}

#[derive(Default)]
struct SliceCounts {
    images: usize,
    /// Indexed [`DRIVABLE`], [`LANES`].
    segmentation: [SegmentationEvaluator; 2],
}

/// Index of the drivable-area task in the per-task arrays of [`evaluate`].
const DRIVABLE: usize = 0;
/// Index of the lane-line task.
const LANES: usize = 1;

impl Slices {
    fn new() -> Self {
        Slices {
            values: Default::default(),
            state: Default::default(),
        }
    }

    /// The tags of an image with these conditions, counting the image in each slice.
    fn tag(&mut self, conditions: &Conditions) -> [u16; 3] {
        let values = [
            &conditions.weather,
            &conditions.time_of_day,
            &conditions.scene,
        ];
        let mut tags = [0u16; 3];
        for (key, value) in values.into_iter().enumerate() {
            let seen = &mut self.values[key];
            let tag = match seen.iter().position(|v| v == value) {
                Some(tag) => tag,
                None => {
                    seen.push(value.clone());
                    self.state[key].push(SliceCounts::default());
                    seen.len() - 1
                }
            };
            self.state[key][tag].images += 1;
            // Condition values are a handful of words per key; more than u16::MAX would be
            // ids, not conditions.
            tags[key] = u16::try_from(tag).unwrap_or(u16::MAX);
        }
        tags
    }

    fn of(&mut self, tags: [u16; 3]) -> impl Iterator<Item = &mut SliceCounts> {
        self.state
            .iter_mut()
            .zip(tags)
            .map(|(state, tag)| &mut state[usize::from(tag)])
    }
}

/// Ground truth and ignore regions of `sample` in its own pixels, split as evaluation at
/// network resolution splits them: a box under `min_box_side` network pixels once
/// letterboxed is an ignore region. Everything is clipped to the image. `examples/
/// score_detections.rs` prepares another detector's ground truth with it.
pub fn original_targets(
    sample: &Sample,
    lb: &Letterbox,
    min_box_side: f32,
) -> (Vec<BoxLabel>, Vec<IgnoreRegion>) {
    let (w, h) = sample.image.dimensions();
    let clip = |x1: f32, y1: f32, x2: f32, y2: f32| {
        let (x1, x2) = (x1.clamp(0.0, w as f32), x2.clamp(0.0, w as f32));
        let (y1, y2) = (y1.clamp(0.0, h as f32), y2.clamp(0.0, h as f32));
        (x2 > x1 && y2 > y1).then_some([x1, y1, x2, y2])
    };
    let mut boxes = Vec::new();
    let mut ignore = Vec::new();
    for b in &sample.boxes {
        let Some([x1, y1, x2, y2]) = clip(b.x1, b.y1, b.x2, b.y2) else {
            continue;
        };
        if (x2 - x1) * lb.scale >= min_box_side && (y2 - y1) * lb.scale >= min_box_side {
            boxes.push(BoxLabel {
                class: b.class,
                x1,
                y1,
                x2,
                y2,
            });
        } else {
            ignore.push(IgnoreRegion { x1, y1, x2, y2 });
        }
    }
    for r in &sample.ignore {
        if let Some([x1, y1, x2, y2]) = clip(r.x1, r.y1, r.x2, r.y2) {
            ignore.push(IgnoreRegion { x1, y1, x2, y2 });
        }
    }
    (boxes, ignore)
}

/// `n` sample indices spread evenly over `0..len` (all of them when `n >= len`).
fn example_indices(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

/// One image's predictions at its own resolution, for metrics and overlays.
struct ImagePrediction {
    detections: Vec<Detection>,
    /// Indexed [`DRIVABLE`], [`LANES`].
    masks: [Option<GrayImage>; 2],
}

/// Evaluates `net` on every sample of `dataset`, streaming: one batch of images is in memory
/// at a time, and the evaluators keep counts and 12 bytes per detection. A task the network
/// lacks or the dataset does not label (its manifest's `tasks`) has no report.
pub fn evaluate<B: VisionBackend>(
    net: &impl PerceptionModel<B>,
    card: &ModelCard,
    dataset: &Dataset,
    options: &EvalOptions,
    device: &B::Device,
    bar: &ProgressBar,
) -> Result<Evaluation, EvalError> {
    evaluate_matched(net, card, dataset, None, options, device, bar)
}

/// [`evaluate`] of a model whose classes differ from the dataset's: each sample's boxes are
/// scored as `class_match` says ([`ClassMatch::apply`]), and the report records it. `None`:
/// the lists are the same, as [`evaluate`].
pub fn evaluate_matched<B: VisionBackend>(
    net: &impl PerceptionModel<B>,
    card: &ModelCard,
    dataset: &Dataset,
    class_match: Option<&ClassMatch>,
    options: &EvalOptions,
    device: &B::Device,
    bar: &ProgressBar,
) -> Result<Evaluation, EvalError> {
    let (w, h) = (card.input.width, card.input.height);
    let num_classes = card.classes.len();
    let (built, labelled) = (card.architecture.tasks, dataset.manifest().tasks);
    let evaluated = (
        built.detection && labelled.detection,
        built.drivable && labelled.drivable,
        built.lanes && labelled.lanes,
    );
    let original = options.resolution == MetricResolution::Original;
    let mut ap = DetectionEvaluator::coco(num_classes)
        .with_operating_threshold(card.decode.score_threshold)
        .with_slice_keys(SLICE_KEYS.len());
    let mut segmentation = [SegmentationEvaluator::new(); 2];
    let mut slices = Slices::new();
    let images = match options.max_images {
        0 => dataset.len(),
        n => n.min(dataset.len()),
    };
    let example_at = example_indices(images, options.examples);
    let mut examples = Vec::new();
    let decode = DecodeOptions {
        score_threshold: AP_SCORE_THRESHOLD.min(card.decode.score_threshold),
        ..card.decode
    };
    let min_box_side = AugmentParams::identity().min_box_side;
    let err = |e: crate::metrics::MetricsError| EvalError::Data(e.to_string());
    bar.set_length(images as u64);
    for start in (0..images).step_by(options.batch_size.max(1)) {
        let end = (start + options.batch_size.max(1)).min(images);
        let mut samples = (start..end)
            .map(|i| dataset.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(m) = class_match {
            for sample in &mut samples {
                m.apply(&mut sample.boxes);
            }
        }
        let batch: Batch = collate(&samples, w as u32, h as u32);
        let (decoded, net_masks) = infer(net, &batch, &decode, evaluated, device);
        for (j, sample) in samples.iter().enumerate() {
            let index = start + j;
            let tags = slices.tag(&sample.conditions);
            let (iw, ih) = sample.image.dimensions();
            let lb = Letterbox::fit(iw, ih, w as u32, h as u32);
            let is_example = example_at.binary_search(&index).is_ok();
            // Predictions at the image's resolution: for the metrics (original) and overlays.
            let at_image = (original || is_example).then(|| ImagePrediction {
                detections: decoded.as_ref().map_or_else(Vec::new, |d| {
                    d[j].iter()
                        .map(|d| {
                            Detection::new(d.class, d.score, box_to_image(d.bbox, &lb, iw, ih))
                        })
                        .collect()
                }),
                masks: net_masks.each_ref().map(|m| {
                    m.as_ref()
                        .map(|m| mask_to_image(&network_mask(m, j, w, h), &lb, iw, ih))
                }),
            });
            if let Some(decoded) = &decoded {
                if let Some(p) = at_image.as_ref().filter(|_| original) {
                    let (gt, ignore) = original_targets(sample, &lb, min_box_side);
                    ap.add_tagged(&p.detections, &gt, &ignore, &tags);
                } else {
                    let dets: Vec<Detection> = decoded[j]
                        .iter()
                        .map(|d| Detection::new(d.class, d.score, d.bbox))
                        .collect();
                    ap.add_tagged(&dets, &batch.boxes[j], &batch.ignore[j], &tags);
                }
            }
            let pixels = w * h;
            let stored = [&sample.drivable, &sample.lanes];
            let letterboxed = [&batch.drivable, &batch.lanes];
            for task in [DRIVABLE, LANES] {
                let Some(m) = &net_masks[task] else {
                    continue;
                };
                let at_image = at_image.as_ref().filter(|_| original);
                let (pred, target): (&[u8], Cow<[u8]>) = match at_image {
                    Some(p) => (
                        p.masks[task].as_ref().expect("mask predicted").as_raw(),
                        Cow::Borrowed(stored[task].as_raw()),
                    ),
                    None => (
                        &m[j * pixels..(j + 1) * pixels],
                        letterboxed[task][j * pixels..(j + 1) * pixels]
                            .iter()
                            .map(|&x| u8::from(x > 0.5))
                            .collect::<Vec<u8>>()
                            .into(),
                    ),
                };
                segmentation[task].add(pred, &target).map_err(err)?;
                for s in slices.of(tags) {
                    s.segmentation[task].add(pred, &target).map_err(err)?;
                }
            }
            if let Some(p) = at_image.filter(|_| is_example) {
                examples.push(example(sample, p, card));
            }
        }
        bar.inc(samples.len() as u64);
        dataset.release_pages();
    }
    let slice_report = |key: &str,
                        value: String,
                        images: usize,
                        ap: Option<&DetectionMetrics>,
                        [drivable, lanes]: &[SegmentationEvaluator; 2]| {
        let ap = ap.filter(|m| m.per_class.iter().any(|c| c.num_gt > 0));
        SliceReport {
            key: key.to_string(),
            value,
            images,
            map50: ap.map(|m| m.map50),
            map50_95: ap.map(|m| m.map50_95),
            drivable_miou: evaluated.1.then(|| drivable.miou()),
            lane_iou: evaluated.2.then(|| lanes.iou()),
        }
    };
    let overall_ap = evaluated.0.then(|| ap.finish());
    let mut slice_reports = vec![slice_report(
        "region",
        dataset.manifest().region.clone(),
        images,
        overall_ap.as_ref(),
        &segmentation,
    )];
    for (key, name) in SLICE_KEYS.iter().enumerate() {
        let mut by_value: Vec<(usize, &String)> = slices.values[key].iter().enumerate().collect();
        by_value.sort_by(|a, b| a.1.cmp(b.1));
        for (tag, value) in by_value {
            let counts = &slices.state[key][tag];
            let metrics = evaluated
                .0
                .then(|| ap.finish_slice(key, u16::try_from(tag).unwrap_or(u16::MAX)));
            slice_reports.push(slice_report(
                name,
                value.clone(),
                counts.images,
                metrics.as_ref(),
                &counts.segmentation,
            ));
        }
    }
    let detection = overall_ap.map(|metrics| {
        let (matched, total) = metrics.per_class.iter().fold((0.0, 0u64), |(m, t), c| {
            (
                m + c.recall50.unwrap_or(0.0) * c.num_gt as f64,
                t + c.num_gt,
            )
        });
        let vehicles: Vec<f64> = metrics
            .per_class
            .iter()
            .filter(|c| {
                matches!(
                    card.classes.get(c.class as usize).map(String::as_str),
                    Some("car" | "truck" | "bus")
                )
            })
            .filter_map(|c| c.ap50)
            .collect();
        DetectionReport {
            classes: card.classes.clone(),
            metrics,
            recall50_at_threshold: if total > 0 {
                matched / total as f64
            } else {
                0.0
            },
            operating_threshold: card.decode.score_threshold,
            vehicle_ap50: (!vehicles.is_empty())
                .then(|| vehicles.iter().sum::<f64>() / vehicles.len() as f64),
        }
    });
    let report = EvalReport {
        images,
        resolution: options.resolution,
        input: [w, h],
        detection,
        drivable: evaluated
            .1
            .then(|| SegmentationReport::from(&segmentation[DRIVABLE])),
        lanes: evaluated
            .2
            .then(|| SegmentationReport::from(&segmentation[LANES])),
        slices: slice_reports,
        class_match: class_match.cloned(),
    };
    Ok(Evaluation { report, examples })
}

/// The overlay of one example: predicted masks and the boxes at the operating threshold,
/// scaled down to at most [`EXAMPLE_MAX_WIDTH`] wide.
fn example(sample: &Sample, prediction: ImagePrediction, card: &ModelCard) -> ExampleImage {
    let kept: Vec<Detection> = prediction
        .detections
        .into_iter()
        .filter(|d| d.score >= card.decode.score_threshold)
        .collect();
    let overlay = draw_overlay(
        &sample.image,
        prediction.masks[DRIVABLE].as_ref(),
        prediction.masks[LANES].as_ref(),
        &kept,
        &card.classes,
    );
    let (ow, oh) = overlay.dimensions();
    let overlay = if ow > EXAMPLE_MAX_WIDTH {
        let nh = ((oh as u64 * EXAMPLE_MAX_WIDTH as u64) / ow as u64).max(1) as u32;
        imageops::resize(
            &overlay,
            EXAMPLE_MAX_WIDTH,
            nh,
            imageops::FilterType::Triangle,
        )
    } else {
        overlay
    };
    ExampleImage {
        id: sample.id.clone(),
        overlay,
    }
}

impl EvalReport {
    /// Where the metrics were computed, in words.
    pub fn resolution_note(&self) -> String {
        match self.resolution {
            MetricResolution::Original => "metrics at each image's original resolution \
                 (predictions mapped back out of the letterbox)"
                .to_string(),
            MetricResolution::Network => format!(
                "metrics at network resolution {}x{} (letterboxed images and labels)",
                self.input[0], self.input[1]
            ),
        }
    }

    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "evaluated {} images; {}",
            self.images,
            self.resolution_note()
        );
        if let Some(m) = &self.class_match {
            for line in m.describe() {
                let _ = writeln!(s, "  {line}");
            }
        }
        if let Some(d) = &self.detection {
            let _ = writeln!(s, "\ndetection            AP@0.5  AP@.5:.95     GT    det");
            for c in &d.metrics.per_class {
                let name = d
                    .classes
                    .get(c.class as usize)
                    .map(String::as_str)
                    .unwrap_or("?");
                let f = |v: Option<f64>| v.map(|v| format!("{v:6.3}")).unwrap_or("     -".into());
                let _ = writeln!(
                    s,
                    "  {name:<18} {}     {}  {:5}  {:5}",
                    f(c.ap50),
                    f(c.ap50_95),
                    c.num_gt,
                    c.num_det
                );
            }
            let _ = writeln!(
                s,
                "  {:<18} {:6.3}     {:6.3}",
                "mean (mAP)", d.metrics.map50, d.metrics.map50_95
            );
            if let Some(v) = d.vehicle_ap50 {
                let _ = writeln!(s, "  {:<18} {v:6.3}", "vehicles (car/truck/bus)");
            }
            let _ = writeln!(
                s,
                "  recall@0.5 at score >= {:.2}: {:.3}",
                d.operating_threshold, d.recall50_at_threshold
            );
        }
        let seg = |s: &mut String, name: &str, r: &Option<SegmentationReport>| {
            if let Some(r) = r {
                let _ = writeln!(
                    s,
                    "\n{name:<20} IoU {:.3}  mIoU {:.3}  pixel recall {:.3}  balanced acc {:.3}",
                    r.iou, r.miou, r.pixel_recall, r.balanced_accuracy
                );
            }
        };
        seg(&mut s, "drivable area", &self.drivable);
        seg(&mut s, "lane lines", &self.lanes);
        if !self.slices.is_empty() {
            let _ = writeln!(
                s,
                "\nby condition                    images  mAP@0.5  AP@.5:.95  drivable mIoU  lane IoU"
            );
            let f = |v: Option<f64>, width: usize| {
                v.map_or(format!("{:>width$}", "-"), |v| format!("{v:>width$.3}"))
            };
            for r in &self.slices {
                let name = format!("{} = {}", r.key, r.value);
                let _ = writeln!(
                    s,
                    "  {name:<30} {:>6}  {}  {}  {}  {}",
                    r.images,
                    f(r.map50, 7),
                    f(r.map50_95, 9),
                    f(r.drivable_miou, 13),
                    f(r.lane_iou, 8),
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;
    use percept_data::TrafficSide;

    fn sample(w: u32, h: u32, boxes: Vec<BoxLabel>, ignore: Vec<IgnoreRegion>) -> Sample {
        Sample {
            id: "s".into(),
            image: RgbImage::new(w, h),
            boxes,
            ignore,
            drivable: GrayImage::new(w, h),
            lanes: GrayImage::new(w, h),
            conditions: Conditions::new("clear", "daytime", "highway"),
            traffic_side: TrafficSide::Right,
        }
    }

    #[test]
    fn original_targets_split_small_boxes_as_network_resolution_does() {
        // A 200x100 frame into 100x100: scale 1/2, 25 px borders above and below.
        let s = sample(
            200,
            100,
            vec![
                BoxLabel::new(1, [10.0, 10.0, 20.0, 20.0]), // 5x5 network px: a box
                BoxLabel::new(2, [50.0, 50.0, 53.0, 80.0]), // 1.5 px wide: an ignore region
                BoxLabel::new(3, [-10.0, 90.0, 30.0, 130.0]), // clipped to [0, 90, 30, 100]
                BoxLabel::new(4, [210.0, 10.0, 230.0, 20.0]), // outside: dropped
            ],
            vec![IgnoreRegion {
                x1: 190.0,
                y1: -5.0,
                x2: 250.0,
                y2: 5.0,
            }],
        );
        let lb = Letterbox::fit(200, 100, 100, 100);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.5, 0.0, 25.0));
        let (boxes, ignore) = original_targets(&s, &lb, 2.0);
        assert_eq!(
            boxes,
            vec![
                BoxLabel::new(1, [10.0, 10.0, 20.0, 20.0]),
                BoxLabel::new(3, [0.0, 90.0, 30.0, 100.0])
            ]
        );
        let corners: Vec<[f32; 4]> = ignore.iter().map(|r| [r.x1, r.y1, r.x2, r.y2]).collect();
        assert_eq!(
            corners,
            vec![[50.0, 50.0, 53.0, 80.0], [190.0, 0.0, 200.0, 5.0]]
        );
        // Network resolution keeps and drops the same boxes.
        let batch = collate(&[s], 100, 100);
        assert_eq!(batch.boxes[0].len(), boxes.len());
        assert_eq!(batch.ignore[0].len(), ignore.len());
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A nano card of `classes`, a fine-tune with `mapping` when given.
    fn card(classes: &[&str], mapping: Option<percept_data::ClassMapping>) -> ModelCard {
        let mut card: ModelCard = serde_json::from_value(serde_json::json!({
            "format": crate::model_file::MODEL_FORMAT,
            "architecture": percept_model::PerceptionNetConfig::new(
                percept_model::ModelSize::Nano, classes.len()),
            "classes": classes,
            "input": { "width": 64, "height": 64 },
            "normalization": crate::model_file::Normalization::default(),
            "decode": DecodeOptions::default(),
            "provenance": {
                "site_region": "JP", "site_name": "lab", "datasets": [], "regions": ["JP"],
                "config_hash": "0".repeat(64), "base_checkpoint": null, "steps": 0,
                "percept_version": "test",
            },
        }))
        .unwrap();
        card.provenance.finetune = mapping.map(|class_mapping| crate::model_file::FinetuneRecord {
            profile: "JP".into(),
            profile_hash: "0".repeat(64),
            class_mapping,
            freeze: "none".into(),
            freeze_norm_statistics: false,
            distillation: None,
            l2sp: None,
        });
        card
    }

    fn boxes(classes: &[u16]) -> Vec<BoxLabel> {
        classes
            .iter()
            .map(|&c| BoxLabel::new(c, [0.0, 0.0, 10.0, 10.0]))
            .collect()
    }

    fn classes_of(boxes: &[BoxLabel]) -> Vec<u16> {
        boxes.iter().map(|b| b.class).collect()
    }

    #[test]
    fn the_same_class_list_needs_no_match() {
        let global = ["car", "truck", "bus"];
        assert_eq!(
            ClassMatch::between(&card(&global, None), &names(&global)).unwrap(),
            None
        );
    }

    #[test]
    fn a_finetune_is_scored_on_global_data_through_its_class_mapping() {
        use percept_data::{ClassMapping, ClassOrigin};
        let global = names(&["car", "truck", "bus", "cyclist"]);
        let mapping = ClassMapping {
            global: global.clone(),
            classes: vec![
                ("car".into(), ClassOrigin::Kept(0)),
                ("heavy vehicle".into(), ClassOrigin::Merged(vec![1, 2])),
                ("auto-rickshaw".into(), ClassOrigin::New),
            ],
            dropped: names(&["cyclist"]),
        };
        let card = card(&["car", "heavy vehicle", "auto-rickshaw"], Some(mapping));
        let m = ClassMatch::between(&card, &global).unwrap().unwrap();
        assert_eq!(m.how, ClassMatchKind::FinetuneMapping);
        assert_eq!(m.relabel, vec![Some(0), Some(1), Some(1), None]);
        assert_eq!(
            m.scored,
            vec![
                ScoredClass {
                    class: "car".into(),
                    from: names(&["car"])
                },
                ScoredClass {
                    class: "heavy vehicle".into(),
                    from: names(&["truck", "bus"])
                },
            ]
        );
        assert_eq!(m.dropped, names(&["cyclist"]));
        assert_eq!(m.unscored, names(&["auto-rickshaw"]));
        // Merged boxes become their country class; dropped ones vanish.
        let mut b = boxes(&[0, 1, 2, 3, 2, 0]);
        m.apply(&mut b);
        assert_eq!(classes_of(&b), vec![0, 1, 1, 1, 0]);
        assert_eq!(
            m.describe(),
            vec![
                "the model's classes differ from the dataset's; its boxes are relabelled \
                 through the model's fine-tune class mapping",
                "scored: car",
                "scored: heavy vehicle <- truck + bus",
                "dataset classes dropped (the model has no class for them): cyclist",
                "model classes not in the dataset (no AP): auto-rickshaw",
            ]
        );
        // Recorded in eval.json, and read back.
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["how"], "finetune_mapping");
        assert_eq!(serde_json::from_value::<ClassMatch>(json).unwrap(), m);
    }

    #[test]
    fn other_lists_are_matched_by_name() {
        // A fine-tune evaluated on data of another list than its mapping's global one: names.
        let mapping = percept_data::ClassMapping::identity(&names(&["car", "bus"]));
        let finetuned = card(&["car", "bus"], Some(mapping));
        let dataset = names(&["pedestrian", "bus", "car", "truck"]);
        let m = ClassMatch::between(&finetuned, &dataset).unwrap().unwrap();
        assert_eq!(m.how, ClassMatchKind::Name);
        assert_eq!(m.relabel, vec![None, Some(1), Some(0), None]);
        assert_eq!(m.dropped, names(&["pedestrian", "truck"]));
        assert!(m.unscored.is_empty());
        let mut b = boxes(&[0, 1, 2, 3]);
        m.apply(&mut b);
        assert_eq!(classes_of(&b), vec![1, 0]);
        // A model class the dataset lacks is unscored.
        let m = ClassMatch::between(&card(&["car", "tram"], None), &dataset)
            .unwrap()
            .unwrap();
        assert_eq!(m.unscored, names(&["tram"]));
        assert_eq!(m.relabel, vec![None, None, Some(0), None]);
    }

    #[test]
    fn no_shared_class_is_refused_naming_both_lists() {
        let err = ClassMatch::between(&card(&["tram", "rickshaw"], None), &names(&["car", "bus"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "data: the model detects [tram, rickshaw] and the dataset's classes are [car, bus]: \
             no class is shared (by name), so there is nothing to score; evaluate on a dataset \
             with some of the model's classes"
        );
    }

    #[test]
    fn examples_are_spread_over_the_split() {
        assert_eq!(example_indices(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(example_indices(3, 12), vec![0, 1, 2]);
        assert!(example_indices(5, 0).is_empty());
    }
}
