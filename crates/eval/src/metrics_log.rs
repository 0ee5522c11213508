//! The lines of a run's `metrics.jsonl`: written by the trainer, read by `percept plot` (and
//! by anyone's notebook). Defined once, here; the format is described in [`crate::plot`].
//!
//! An `Option` serialises as its value or `null`, so a line reads back to what was written;
//! a field may be absent or `null` in what older or other writers wrote.

use serde::{Deserialize, Deserializer, Serialize};

/// The file a run logs its metrics to, in the run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsLine {
    Step(StepLine),
    Epoch(EpochLine),
    Validation(ValidationResult),
}

/// Means over the steps since the previous step line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    pub step: usize,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub loss: LossValues,
    #[serde(default)]
    pub grad_norm: Option<f32>,
    #[serde(default)]
    pub images_per_second: Option<f64>,
    #[serde(default)]
    pub elapsed_seconds: Option<f64>,
    #[serde(default)]
    pub data_wait_fraction: Option<f64>,
    #[serde(default)]
    pub skipped_samples: Option<usize>,
    #[serde(default)]
    pub nonfinite_steps: Option<usize>,
}

/// Means over an epoch's steps (`steps` of them: fewer than the epoch when the run was resumed
/// inside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLine {
    pub step: usize,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub loss: LossValues,
}

/// Loss values (unweighted terms); absent terms belong to tasks switched off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    /// NaN where a line has none.
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub total: f32,
    #[serde(default)]
    pub classification: Option<f32>,
    #[serde(default)]
    pub box_iou: Option<f32>,
    /// The box-distribution term (DFL); absent from logs of runs before it existed.
    #[serde(default)]
    pub dfl: Option<f32>,
    #[serde(default)]
    pub drivable: Option<f32>,
    #[serde(default)]
    pub lanes: Option<f32>,
    /// A fine-tune's distillation term (unweighted), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<f32>,
    /// A fine-tune's L2-SP penalty `alpha / 2 * |w - w0|^2` (weighted), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2sp: Option<f32>,
}

impl Default for LossValues {
    fn default() -> Self {
        LossValues {
            total: f32::NAN,
            classification: None,
            box_iou: None,
            dfl: None,
            drivable: None,
            lanes: None,
            distillation: None,
            l2sp: None,
        }
    }
}

impl LossValues {
    /// The terms by name, in legend order: `total`, `classification`, `box_iou`, `dfl`,
    /// `drivable`, `lanes`, `distillation`, `l2sp`; `None` where a term is absent or not
    /// finite-valued `total` is NaN.
    pub fn terms(&self) -> [(&'static str, Option<f32>); 8] {
        [
            ("total", (!self.total.is_nan()).then_some(self.total)),
            ("classification", self.classification),
            ("box_iou", self.box_iou),
            ("dfl", self.dfl),
            ("drivable", self.drivable),
            ("lanes", self.lanes),
            ("distillation", self.distillation),
            ("l2sp", self.l2sp),
        ]
    }

    /// `loss 1.234 cls 0.500 ...`, for progress lines.
    pub fn short(&self) -> String {
        let f =
            |name: &str, v: Option<f32>| v.map(|v| format!(" {name} {v:.3}")).unwrap_or_default();
        format!(
            "loss {:.3}{}{}{}{}{}{}{}",
            self.total,
            f("cls", self.classification),
            f("box", self.box_iou),
            f("dfl", self.dfl),
            f("da", self.drivable),
            f("ll", self.lanes),
            f("kd", self.distillation),
            f("l2sp", self.l2sp)
        )
    }
}

fn nan() -> f32 {
    f32::NAN
}

/// Reads `null` as the default (serialising is unchanged).
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// Validation metrics at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationResult {
    pub step: usize,
    /// `ema` or `raw`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub weights: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub datasets: Vec<DatasetMetrics>,
    /// Each metric's mean over the datasets that have it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub mean: DatasetMetrics,
    /// The run's `checkpoint.best_metric` of `mean` (higher is better); null when the model
    /// has none.
    #[serde(default)]
    pub score: Option<f64>,
}

/// Metrics of one validation split (a metric is null when the task is off or unlabelled).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetMetrics {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub images: usize,
    #[serde(default)]
    pub map50: Option<f64>,
    #[serde(default)]
    pub map50_95: Option<f64>,
    #[serde(default)]
    pub drivable_miou: Option<f64>,
    #[serde(default)]
    pub lane_iou: Option<f64>,
}

impl MetricsLine {
    /// The line as written to `metrics.jsonl` (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a metrics line serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the trainer writes, byte for byte: a change here changes every run's file.
    #[test]
    fn lines_serialise_as_runs_have_always_written_them() {
        let loss = LossValues {
            total: 8.135771,
            classification: Some(1.1384234),
            box_iou: None,
            dfl: None,
            drivable: Some(1.326602),
            lanes: Some(1.5553923),
            distillation: None,
            l2sp: None,
        };
        let step = MetricsLine::Step(StepLine {
            step: 2,
            epoch: Some(0),
            lr: Some(0.0001367502526807355),
            loss,
            grad_norm: Some(315.0987),
            images_per_second: Some(13.5),
            elapsed_seconds: Some(0.581062538),
            data_wait_fraction: Some(0.04747767098349748),
            skipped_samples: Some(0),
            nonfinite_steps: Some(0),
        });
        let text = step.to_json();
        assert_eq!(
            text,
            r#"{"kind":"step","step":2,"epoch":0,"lr":0.0001367502526807355,"loss":{"total":8.135771,"classification":1.1384234,"box_iou":null,"dfl":null,"drivable":1.326602,"lanes":1.5553923},"grad_norm":315.0987,"images_per_second":13.5,"elapsed_seconds":0.581062538,"data_wait_fraction":0.04747767098349748,"skipped_samples":0,"nonfinite_steps":0}"#
        );
        // Lines written before the DFL term existed read back with it absent.
        let old = text.replace(r#""dfl":null,"#, "");
        assert_eq!(serde_json::from_str::<MetricsLine>(&old).unwrap(), step);
        assert_eq!(serde_json::from_str::<MetricsLine>(&text).unwrap(), step);
        let validation = MetricsLine::Validation(ValidationResult {
            step: 6,
            weights: "raw".into(),
            datasets: vec![DatasetMetrics {
                name: "synthetic-de".into(),
                images: 8,
                map50: Some(0.0),
                map50_95: Some(0.0),
                drivable_miou: Some(0.18),
                lane_iou: None,
            }],
            mean: DatasetMetrics::default(),
            score: None,
        });
        let text = validation.to_json();
        assert!(text.starts_with(r#"{"kind":"validation","step":6,"weights":"raw","datasets":[{"name":"synthetic-de","images":8,"map50":0.0"#), "{text}");
        assert_eq!(
            serde_json::from_str::<MetricsLine>(&text).unwrap(),
            validation
        );
    }
}
