//! Evaluation on a held-out split: detection AP (COCO-style, 101-point), drivable-area mIoU,
//! lane-line IoU and accuracy, computed at network resolution on letterboxed inputs.
//!
//! Detections inside an ignore region that match no box count as neither true nor false
//! positives (pycocotools' crowd rule; see [`DetectionEvaluator`]). Ignore regions are the
//! dataset's own (KITTI's `DontCare`, ...) and ground-truth boxes under
//! `augment.min_box_side` after letterboxing, which are too small to score.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use burn::prelude::*;
use burn::vision::VisionBackend;
use indicatif::ProgressBar;
use percept_data::{collate, Batch, Dataset};
use percept_model::{decode_detections, DecodeOptions, PerceptionNet};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::metrics::{Detection, DetectionEvaluator, DetectionMetrics, SegmentationEvaluator};
use crate::model_file::ModelCard;
use crate::trainer::batch_tensors;
use crate::TrainError;

/// Score threshold used for the AP curves (COCO keeps low-scoring detections for AP; the
/// operating threshold from the model card applies to recall).
const AP_SCORE_THRESHOLD: f32 = 0.001;

/// Metrics of one binary segmentation task.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

/// The evaluators of one slice.
struct SliceEvaluators {
    images: usize,
    ap: DetectionEvaluator,
    drivable: SegmentationEvaluator,
    lanes: SegmentationEvaluator,
}

/// The condition keys evaluation slices by. (The region slice is the whole evaluation: one
/// dataset has one region.)
const SLICE_KEYS: [&str; 3] = ["weather", "time_of_day", "scene"];

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
#[derive(Debug, Clone, Serialize)]
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
}

/// Binary masks (logit > 0) of `[batch, 1, h, w]` logits, flattened.
pub(crate) fn masks(logits: Tensor<impl Backend, 4>) -> Vec<u8> {
    logits
        .greater_elem(0.0)
        .int()
        .into_data()
        .convert::<u8>()
        .to_vec()
        .expect("u8 data")
}

fn targets(v: &[f32]) -> Vec<u8> {
    v.iter().map(|&x| (x > 0.5) as u8).collect()
}

/// Evaluates `net` on every sample of `dataset`, `batch_size` at a time. A task the network
/// lacks or the dataset does not label (its manifest's `tasks`) has no report.
pub fn evaluate<B: VisionBackend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    dataset: &Dataset,
    batch_size: usize,
    device: &B::Device,
    bar: &ProgressBar,
) -> Result<EvalReport, TrainError> {
    let (w, h) = (card.input.width, card.input.height);
    let num_classes = card.classes.len();
    let (built, labelled) = (card.architecture.tasks, dataset.manifest().tasks);
    let evaluated = (
        built.detection && labelled.detection,
        built.drivable && labelled.drivable,
        built.lanes && labelled.lanes,
    );
    let mut ap = DetectionEvaluator::coco(num_classes);
    let mut operating = DetectionEvaluator::new(num_classes, vec![0.5]);
    let mut drivable = SegmentationEvaluator::new();
    let mut lanes = SegmentationEvaluator::new();
    let mut slices: BTreeMap<(&str, String), SliceEvaluators> = BTreeMap::new();
    let decode = DecodeOptions {
        score_threshold: AP_SCORE_THRESHOLD.min(card.decode.score_threshold),
        ..card.decode
    };
    bar.set_length(dataset.len() as u64);
    for start in (0..dataset.len()).step_by(batch_size.max(1)) {
        let samples = (start..(start + batch_size).min(dataset.len()))
            .map(|i| dataset.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        let batch: Batch = collate(&samples, w as u32, h as u32);
        let (images, _) = batch_tensors::<B>(&batch, device);
        let out = net.forward(images);
        // The slices each image of the batch belongs to.
        let keys: Vec<Vec<(&str, String)>> = samples
            .iter()
            .map(|s| {
                let c = &s.conditions;
                let values = [&c.weather, &c.time_of_day, &c.scene];
                SLICE_KEYS
                    .into_iter()
                    .zip(values.map(String::clone))
                    .collect()
            })
            .collect();
        for image_keys in &keys {
            for key in image_keys {
                slices
                    .entry(key.clone())
                    .or_insert_with(|| SliceEvaluators {
                        images: 0,
                        ap: DetectionEvaluator::coco(num_classes),
                        drivable: SegmentationEvaluator::new(),
                        lanes: SegmentationEvaluator::new(),
                    })
                    .images += 1;
            }
        }
        if let (true, Some(det)) = (evaluated.0, &out.detection) {
            let per_image = decode_detections(det, h, w, &decode);
            for (j, dets) in per_image.iter().enumerate() {
                let (gt, ignore) = (&batch.boxes[j], &batch.ignore[j]);
                let dets: Vec<Detection> = dets
                    .iter()
                    .map(|d| Detection::new(d.class, d.score, d.bbox))
                    .collect();
                ap.add_image_with_ignore(&dets, gt, ignore);
                for key in &keys[j] {
                    let slice = slices.get_mut(key).expect("every key was added");
                    slice.ap.add_image_with_ignore(&dets, gt, ignore);
                }
                let kept: Vec<Detection> = dets
                    .into_iter()
                    .filter(|d| d.score >= card.decode.score_threshold)
                    .collect();
                operating.add_image_with_ignore(&kept, gt, ignore);
            }
        }
        let pixels = h * w;
        let mut seg =
            |logits: Option<Tensor<B, 4>>,
             t: &[f32],
             overall: &mut SegmentationEvaluator,
             of_slice: fn(&mut SliceEvaluators) -> &mut SegmentationEvaluator| {
                let Some(l) = logits else {
                    return Ok(());
                };
                let (pred, target) = (masks(l), targets(t));
                let err = |e: crate::metrics::MetricsError| TrainError::Data(e.to_string());
                overall.add(&pred, &target).map_err(err)?;
                for (j, image_keys) in keys.iter().enumerate() {
                    let range = j * pixels..(j + 1) * pixels;
                    for key in image_keys {
                        let slice = slices.get_mut(key).expect("every key was added");
                        of_slice(slice)
                            .add(&pred[range.clone()], &target[range.clone()])
                            .map_err(err)?;
                    }
                }
                Ok::<(), TrainError>(())
            };
        seg(
            out.drivable.filter(|_| evaluated.1),
            &batch.drivable,
            &mut drivable,
            |s| &mut s.drivable,
        )?;
        seg(
            out.lanes.filter(|_| evaluated.2),
            &batch.lanes,
            &mut lanes,
            |s| &mut s.lanes,
        )?;
        bar.inc(samples.len() as u64);
    }
    let slice_report = |key: &str,
                        value: String,
                        images: usize,
                        ap: Option<&DetectionMetrics>,
                        drivable: &SegmentationEvaluator,
                        lanes: &SegmentationEvaluator| {
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
        dataset.len(),
        overall_ap.as_ref(),
        &drivable,
        &lanes,
    )];
    slice_reports.extend(slices.into_iter().map(|((key, value), e)| {
        let ap = evaluated.0.then(|| e.ap.finish());
        slice_report(key, value, e.images, ap.as_ref(), &e.drivable, &e.lanes)
    }));
    let detection = overall_ap.map(|metrics| {
        let op = operating.finish();
        let (matched, total) = op.per_class.iter().fold((0.0, 0u64), |(m, t), c| {
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
    Ok(EvalReport {
        images: dataset.len(),
        resolution: MetricResolution::Network,
        input: [w, h],
        detection,
        drivable: evaluated.1.then(|| SegmentationReport::from(&drivable)),
        lanes: evaluated.2.then(|| SegmentationReport::from(&lanes)),
        slices: slice_reports,
    })
}

impl EvalReport {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "evaluated {} images at network resolution {}x{}",
            self.images, self.input[0], self.input[1]
        );
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
