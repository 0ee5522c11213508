//! Validation during a run: the network over every validation split with evaluation's own
//! code ([`percept_eval::evaluate`]), each split's headline metrics, their mean, and the score
//! that picks the best checkpoints.

use burn::vision::VisionBackend;
use indicatif::ProgressBar;
use percept_data::Dataset;
use percept_eval::eval::{evaluate, EvalOptions, ExampleImage};
use percept_eval::metrics_log::{DatasetMetrics, ValidationResult};
use percept_eval::model_file::ModelCard;
use percept_model::{use_conv_kernels, PerceptionNet};

use crate::config::{BestMetric, RunConfig};
use crate::TrainError;

/// Example overlays of the first validation split shown in TensorBoard at each validation.
pub const EXAMPLES: usize = 2;

/// Validates `net` on every validation split; also returns [`EXAMPLES`] overlays of the first.
pub fn validate<B: VisionBackend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    sets: &[Dataset],
    config: &RunConfig,
    step: usize,
    weights: &'static str,
    device: &B::Device,
) -> Result<(ValidationResult, Vec<ExampleImage>), TrainError> {
    let mut options = EvalOptions {
        batch_size: config.validation.batch_size,
        resolution: config.eval.resolution,
        examples: EXAMPLES,
        max_images: config.validation.max_images,
    };
    let _kernels = use_conv_kernels(config.train.conv);
    let mut datasets = Vec::new();
    let mut examples = Vec::new();
    for ds in sets {
        let evaluation = evaluate(net, card, ds, &options, device, &ProgressBar::hidden())?;
        if options.examples > 0 {
            examples = evaluation.examples;
            options.examples = 0;
        }
        let r = evaluation.report;
        datasets.push(DatasetMetrics {
            name: ds.manifest().name.clone(),
            images: r.images,
            map50: r.detection.as_ref().map(|d| d.metrics.map50),
            map50_95: r.detection.as_ref().map(|d| d.metrics.map50_95),
            drivable_miou: r.drivable.as_ref().map(|d| d.miou),
            lane_iou: r.lanes.as_ref().map(|l| l.iou),
        });
    }
    let mean_of = |f: fn(&DatasetMetrics) -> Option<f64>| {
        let v: Vec<f64> = datasets.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mean = DatasetMetrics {
        name: "mean".into(),
        images: datasets.iter().map(|d| d.images).sum(),
        map50: mean_of(|d| d.map50),
        map50_95: mean_of(|d| d.map50_95),
        drivable_miou: mean_of(|d| d.drivable_miou),
        lane_iou: mean_of(|d| d.lane_iou),
    };
    let result = ValidationResult {
        step,
        weights: weights.into(),
        score: score(&mean, config.checkpoint.best_metric),
        datasets,
        mean,
    };
    Ok((result, examples))
}

/// `metric` of `m` (higher is better); `None` when the model has none of it.
pub fn score(m: &DatasetMetrics, metric: BestMetric) -> Option<f64> {
    match metric {
        BestMetric::Map50 => m.map50,
        BestMetric::Map50_95 => m.map50_95,
        BestMetric::DrivableMiou => m.drivable_miou,
        BestMetric::LaneIou => m.lane_iou,
        BestMetric::Mean => {
            let v: Vec<f64> = [m.map50, m.drivable_miou, m.lane_iou]
                .into_iter()
                .flatten()
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        }
    }
}
