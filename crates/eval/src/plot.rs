//! `percept plot`: training curves as PNG and SVG charts from a run's `metrics.jsonl`.
//!
//! # The `metrics.jsonl` format
//!
//! A training run appends one JSON object per line to `RUN_DIR/metrics.jsonl`, each with a
//! `kind`:
//!
//! ```text
//! {"kind":"step","step":10,"epoch":0,"lr":0.001,"loss":{"total":1.2,"classification":0.5,"box_iou":0.3,"drivable":0.2,"lanes":0.2},"grad_norm":3.4,"images_per_second":12.3,"elapsed_seconds":33.1,"data_wait_fraction":0.01,"skipped_samples":0,"nonfinite_steps":0}
//! {"kind":"epoch","step":130,"epoch":0,"loss":{"total":1.1,"classification":0.4,"box_iou":null,"drivable":0.2,"lanes":0.2}}
//! {"kind":"validation","step":130,"weights":"ema","datasets":[{"name":"synth-de","images":40,"map50":0.1,"map50_95":0.05,"drivable_miou":0.8,"lane_iou":0.5}],"mean":{"map50":0.1,"map50_95":0.05,"drivable_miou":0.8,"lane_iou":0.5},"score":0.47}
//! ```
//!
//! The lines are the types of [`crate::metrics_log`] ([`MetricsLine`]), which the trainer
//! writes and this module reads.
//!
//! - `step` lines ([`StepLine`]): the losses are averages over the steps since the previous
//!   step line. A loss term is `null` or absent when its task is switched off; `grad_norm` may
//!   be `null`.
//! - `epoch` lines ([`EpochLine`]): the mean losses over the epoch just finished.
//! - `validation` lines ([`ValidationResult`]): metrics per validation dataset and their mean
//!   over the datasets; any metric may be `null` or absent (task not labelled or not built).
//!
//! Reading is forward compatible: unknown fields are ignored and lines of unknown kinds are
//! skipped (counted in [`MetricsLog::unknown_lines`]). Every field but `step` may be `null` or
//! absent; such a value simply has no point. Blank lines are ignored. A run killed mid-write
//! (SIGKILL, power loss) can leave a torn last line: a malformed *last* line is skipped with a
//! warning, while a malformed line anywhere else is an error naming the file and the line.
//! When a line of a kind has a step at or before that of an earlier line of the same kind (a
//! run resumed from a checkpoint and logging those steps again), the later lines win: the
//! earlier ones from that step on are dropped ([`MetricsLog::superseded_lines`]; validation
//! lines at the same step are kept, as the raw and EMA weights are validated at one step).
//!
//! # The charts
//!
//! [`plot_run`] writes into `RUN_DIR/plots/` (or the directory given), each file atomically,
//! every chart as a PNG and, beside it, an SVG of the same name (`loss.svg`, ...); see
//! [`crate::chart`] for how they look:
//!
//! - `loss.png`: the total loss and each per-task term that has a value anywhere, against the
//!   step, from the step lines; when there are epoch lines, their means as further series in a
//!   darker shade of the same colours, named `... (epoch)`.
//! - `lr.png`: the learning rate against the step (linear, from 0).
//! - `throughput.png`: images per second against the step (linear, from 0).
//! - `validation.png`, only when there are validation lines: each metric's mean over the
//!   validation datasets (mAP@0.5, mAP@[.5:.95], drivable mIoU, lane IoU) and the run's
//!   validation score, against the step, on `0..1`. When several weights were validated (raw
//!   and EMA), each gets its own series, named with its weights.
//!
//! The x axis of every chart spans step 0 to the last step logged, so the charts line up.
//!
//! Loss curves often span orders of magnitude (a large loss in the first steps, small task
//! terms later). [`LossScale::Auto`] (the default) therefore plots the losses on a log10 y
//! axis, spanning the smallest to the largest value logged, whenever every value is positive,
//! and on a linear axis otherwise. On a linear axis ([`LossScale::Linear`], or Auto with a zero
//! or negative value) the y range runs from 0 (or the smallest value, if negative) up to the
//! largest value, but at most twice the 95th percentile of all values: early spikes are
//! then clipped at the top edge (the y label says so) instead of flattening the rest of the
//! curve. [`LossScale::Log`] forces the log axis; values it cannot show (zero or negative)
//! leave gaps.

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::Rgb;

use crate::chart::{line_chart_on, Axis, ChartImage, Scale, Series};
use crate::metrics_log::{
    EpochLine, LossValues, MetricsLine, StepLine, ValidationResult, METRICS_FILE,
};
use crate::EvalError;

/// The directory in the run directory where [`plot_run`] writes by default.
pub const PLOTS_DIR: &str = "plots";
/// Chart files.
pub const LOSS_PNG: &str = "loss.png";
pub const LR_PNG: &str = "lr.png";
pub const THROUGHPUT_PNG: &str = "throughput.png";
pub const VALIDATION_PNG: &str = "validation.png";

/// The loss terms, in legend order: key in a line's `loss` object, the name used in the
/// epoch series' legend entries, colour.
pub const LOSS_TERMS: [(&str, &str, Rgb<u8>); 8] = [
    ("total", "total", Rgb([31, 119, 180])),
    ("classification", "classif.", Rgb([255, 127, 14])),
    ("box_iou", "box_iou", Rgb([44, 160, 44])),
    ("dfl", "dfl", Rgb([140, 86, 75])),
    ("drivable", "drivable", Rgb([214, 39, 40])),
    ("lanes", "lanes", Rgb([148, 103, 189])),
    ("distillation", "distill.", Rgb([227, 119, 194])),
    ("l2sp", "l2sp", Rgb([127, 127, 127])),
];

/// The validation metrics, in legend order: key in a line's `mean` object (`score` is the
/// line's own), legend name, the shorter name used when several weights were validated,
/// colour.
pub const VALIDATION_METRICS: [(&str, &str, &str, Rgb<u8>); 5] = [
    ("map50", "mAP@0.5", "mAP50", Rgb([31, 119, 180])),
    ("map50_95", "mAP@.5:.95", "mAP50-95", Rgb([255, 127, 14])),
    (
        "drivable_miou",
        "drivable mIoU",
        "drv mIoU",
        Rgb([214, 39, 40]),
    ),
    ("lane_iou", "lane IoU", "lane IoU", Rgb([148, 103, 189])),
    ("score", "score", "score", Rgb([0, 0, 0])),
];

/// Colour of the learning-rate series.
pub const LR_COLOR: Rgb<u8> = Rgb([31, 119, 180]);
/// Colour of the throughput series.
pub const THROUGHPUT_COLOR: Rgb<u8> = Rgb([44, 160, 44]);

/// The term of `loss` named `key` (a key of [`LOSS_TERMS`]), if present.
pub fn loss_term(loss: &LossValues, key: &str) -> Option<f64> {
    let (_, value) = loss.terms().into_iter().find(|(name, _)| *name == key)?;
    value.map(f64::from)
}

/// The metric of `line` named `key` (a key of [`VALIDATION_METRICS`]): a mean over the
/// datasets, or the score.
pub fn validation_metric(line: &ValidationResult, key: &str) -> Option<f64> {
    match key {
        "map50" => line.mean.map50,
        "map50_95" => line.mean.map50_95,
        "drivable_miou" => line.mean.drivable_miou,
        "lane_iou" => line.mean.lane_iou,
        "score" => line.score,
        _ => None,
    }
}

/// A parsed `metrics.jsonl`: the records of each kind in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsLog {
    pub steps: Vec<StepLine>,
    pub epochs: Vec<EpochLine>,
    pub validations: Vec<ValidationResult>,
    /// Lines of a kind this version does not know, skipped.
    pub unknown_lines: usize,
    /// Lines dropped because a later line of their kind logged their step again.
    pub superseded_lines: usize,
    /// The number (from 1) of a malformed last line that was skipped as torn.
    pub torn_line: Option<usize>,
}

/// An error about `path`, as [`EvalError::Io`] of `kind`.
fn file_error(path: &Path, kind: io::ErrorKind, message: String) -> EvalError {
    EvalError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(kind, message),
    }
}

/// Reads and parses the metrics file at `path` (see [`parse_metrics`]). A missing file is
/// an error saying to train first.
pub fn read_metrics(path: &Path) -> Result<MetricsLog, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            file_error(
                path,
                e.kind(),
                "not found: no metrics yet; train first (`percept train --config FILE` \
                 writes them as it trains)"
                    .to_string(),
            )
        } else {
            EvalError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    parse_metrics(&bytes, path)
}

/// Parses the contents of a metrics file; `path` names it in errors and warnings.
///
/// Errors: a malformed line other than the last (its number and what is wrong), and a file
/// without step lines (nothing to plot yet). A malformed last line is skipped with a warning.
pub fn parse_metrics(bytes: &[u8], path: &Path) -> Result<MetricsLog, EvalError> {
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let last = lines.last().map(|&(n, _)| n);
    let mut log = MetricsLog::default();
    for (number, line) in lines {
        let parsed = parse_line(line).map_err(|message| format!("line {number}{message}"));
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(message) if Some(number) == last => {
                tracing::warn!(
                    "{}: skipping the malformed last line ({message}); a run killed while \
                     writing it leaves it torn",
                    path.display()
                );
                log.torn_line = Some(number);
                continue;
            }
            Err(message) => return Err(file_error(path, io::ErrorKind::InvalidData, message)),
        };
        let superseded = &mut log.superseded_lines;
        match parsed {
            Some(MetricsLine::Step(r)) => {
                push_latest(&mut log.steps, r, |r| r.step, false, superseded)
            }
            Some(MetricsLine::Epoch(r)) => {
                push_latest(&mut log.epochs, r, |r| r.step, false, superseded)
            }
            Some(MetricsLine::Validation(r)) => {
                push_latest(&mut log.validations, r, |r| r.step, true, superseded)
            }
            None => log.unknown_lines += 1,
        }
    }
    if log.steps.is_empty() {
        let what = if bytes.iter().all(u8::is_ascii_whitespace) {
            "empty"
        } else {
            "no step lines"
        };
        return Err(file_error(
            path,
            io::ErrorKind::InvalidData,
            format!(
                "{what}: nothing to plot yet (a run logs a step line every logging.every \
                 steps)"
            ),
        ));
    }
    Ok(log)
}

/// One line as a [`MetricsLine`], or `None` for a line of a kind this version does not know.
/// An error says what is wrong, starting with where (`, column 7: ...`) or a colon.
fn parse_line(line: &[u8]) -> Result<Option<MetricsLine>, String> {
    let value = serde_json::from_slice::<serde_json::Value>(line).map_err(|e| {
        // serde_json places the error on line 1 of the one line it was given.
        let mut message = e.to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        format!(", column {}: {message}", e.column())
    })?;
    match value.get("kind") {
        Some(serde_json::Value::String(kind))
            if ["step", "epoch", "validation"].contains(&kind.as_str()) => {}
        Some(serde_json::Value::String(_)) => return Ok(None),
        Some(_) => return Err(": `kind` is not a string".to_string()),
        None if value.is_object() => return Err(": no `kind`".to_string()),
        None => return Err(": not a JSON object".to_string()),
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| format!(": {e}"))
}

/// Appends `record`, first dropping the records it supersedes: those at its step or later
/// (`ties_kept`: only those after its step).
fn push_latest<T>(
    records: &mut Vec<T>,
    record: T,
    step: impl Fn(&T) -> usize,
    ties_kept: bool,
    superseded: &mut usize,
) {
    let at = step(&record);
    while let Some(last) = records.last() {
        let s = step(last);
        if s > at || (s == at && !ties_kept) {
            records.pop();
            *superseded += 1;
        } else {
            break;
        }
    }
    records.push(record);
}

/// How [`plot_run`] scales the loss chart's y axis (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LossScale {
    /// Log when every loss value is positive, else linear.
    #[default]
    Auto,
    Log,
    /// Linear, spikes above twice the 95th percentile clipped.
    Linear,
}

impl LossScale {
    /// The names [`LossScale::from_str`] accepts.
    pub const NAMES: [&'static str; 3] = ["auto", "log", "linear"];
}

impl FromStr for LossScale {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<LossScale, EvalError> {
        match s {
            "auto" => Ok(LossScale::Auto),
            "log" => Ok(LossScale::Log),
            "linear" => Ok(LossScale::Linear),
            _ => Err(EvalError::Invalid(format!(
                "loss scale {s:?}: give one of {}",
                LossScale::NAMES.join(", ")
            ))),
        }
    }
}

/// What [`plot_run`] draws.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlotOptions {
    pub loss_scale: LossScale,
}

/// A series as drawn: its legend name and number of points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSummary {
    pub name: String,
    pub points: usize,
}

/// A rendered chart, before it is written.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File name in the output directory, e.g. [`LOSS_PNG`].
    pub file_name: &'static str,
    pub image: ChartImage,
    pub x_axis: Axis,
    pub y_axis: Axis,
    pub series: Vec<SeriesSummary>,
}

/// A chart written by [`plot_run`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChartFile {
    /// The PNG.
    pub path: PathBuf,
    /// The SVG beside it.
    pub svg: PathBuf,
    /// The y axis' scale (log or linear).
    pub y_scale: Scale,
    pub series: Vec<SeriesSummary>,
}

impl ChartFile {
    /// Points over all series.
    pub fn points(&self) -> usize {
        self.series.iter().map(|s| s.points).sum()
    }
}

/// What [`plot_run`] read and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSummary {
    /// The metrics file read.
    pub metrics: PathBuf,
    /// The directory written to.
    pub out_dir: PathBuf,
    /// The charts written, in the order of the module docs.
    pub charts: Vec<ChartFile>,
    pub step_lines: usize,
    pub epoch_lines: usize,
    pub validation_lines: usize,
    /// See [`MetricsLog::unknown_lines`].
    pub unknown_lines: usize,
    /// See [`MetricsLog::superseded_lines`].
    pub superseded_lines: usize,
    /// See [`MetricsLog::torn_line`].
    pub torn_line: Option<usize>,
}

/// Plots the run at `run` (a run directory, or its `metrics.jsonl` itself) into `out_dir`,
/// by default `plots/` in the run directory. Each chart is written atomically.
pub fn plot_run(
    run: &Path,
    out_dir: Option<&Path>,
    options: &PlotOptions,
) -> Result<PlotSummary, EvalError> {
    let (run_dir, metrics) = if run.is_file() {
        let dir = run.parent().unwrap_or(Path::new("."));
        (dir.to_path_buf(), run.to_path_buf())
    } else if run.is_dir() {
        (run.to_path_buf(), run.join(METRICS_FILE))
    } else {
        return Err(file_error(
            run,
            io::ErrorKind::NotFound,
            "no such run directory (give runs/<name>, or its metrics.jsonl)".to_string(),
        ));
    };
    let log = read_metrics(&metrics)?;
    let out_dir = out_dir.map_or_else(|| run_dir.join(PLOTS_DIR), Path::to_path_buf);
    let mut charts = Vec::new();
    for chart in render(&log, options)? {
        let path = out_dir.join(chart.file_name);
        let svg = path.with_extension("svg");
        chart.image.save_as(&path, &svg)?;
        charts.push(ChartFile {
            path,
            svg,
            y_scale: chart.y_axis.scale,
            series: chart.series,
        });
    }
    Ok(PlotSummary {
        metrics,
        out_dir,
        charts,
        step_lines: log.steps.len(),
        epoch_lines: log.epochs.len(),
        validation_lines: log.validations.len(),
        unknown_lines: log.unknown_lines,
        superseded_lines: log.superseded_lines,
        torn_line: log.torn_line,
    })
}

/// Renders the charts of `log` (see the module docs): loss, and learning rate, throughput and
/// validation where there is a value to plot.
pub fn render(log: &MetricsLog, options: &PlotOptions) -> Result<Vec<Chart>, EvalError> {
    let last_step = log
        .steps
        .iter()
        .map(|r| r.step)
        .chain(log.epochs.iter().map(|r| r.step))
        .chain(log.validations.iter().map(|r| r.step))
        .max()
        .unwrap_or(0);
    let x_axis = Axis::linear("step", 0.0, (last_step as f64).max(1.0));
    let mut charts = vec![loss_chart(log, &x_axis, options.loss_scale)?];
    let lr = series(
        "learning rate",
        LR_COLOR,
        log.steps.iter().map(|r| (r.step, r.lr)),
    );
    if !lr.points.is_empty() {
        let y_axis = from_zero("learning rate", &lr.points);
        charts.push(chart(
            LR_PNG,
            "Learning rate",
            x_axis.clone(),
            y_axis,
            vec![lr],
        )?);
    }
    let throughput = series(
        "images/s",
        THROUGHPUT_COLOR,
        log.steps.iter().map(|r| (r.step, r.images_per_second)),
    );
    if !throughput.points.is_empty() {
        let y_axis = from_zero("images per second", &throughput.points);
        let title = "Training throughput";
        charts.push(chart(
            THROUGHPUT_PNG,
            title,
            x_axis.clone(),
            y_axis,
            vec![throughput],
        )?);
    }
    if let Some(validation) = validation_chart(log, &x_axis)? {
        charts.push(validation);
    }
    Ok(charts)
}

/// Draws `series` on the axes and keeps what the summary needs.
fn chart(
    file_name: &'static str,
    title: &str,
    x_axis: Axis,
    y_axis: Axis,
    series: Vec<Series>,
) -> Result<Chart, EvalError> {
    let image = line_chart_on(title, &x_axis, &y_axis, &series)?;
    let series = series
        .into_iter()
        .map(|s| SeriesSummary {
            name: s.name,
            points: s.points.len(),
        })
        .collect();
    Ok(Chart {
        file_name,
        image,
        x_axis,
        y_axis,
        series,
    })
}

/// A series of the values that are present, at their steps.
fn series(
    name: &str,
    color: Rgb<u8>,
    values: impl Iterator<Item = (usize, Option<f64>)>,
) -> Series {
    Series {
        name: name.to_string(),
        color,
        points: values
            .filter_map(|(step, v)| Some((step as f64, v.filter(|v| v.is_finite())?)))
            .collect(),
    }
}

/// A linear axis from 0 (or the smallest value, if negative) to 5% above the largest value.
fn from_zero(label: &str, points: &[(f64, f64)]) -> Axis {
    let (lo, hi) = points
        .iter()
        .fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), &(_, y)| {
            (lo.min(y), hi.max(y))
        });
    Axis::linear(label, lo, hi + 0.05 * (hi - lo))
}

/// `loss.png`: step-line series of every term present, then epoch-line series.
fn loss_chart(log: &MetricsLog, x_axis: &Axis, scale: LossScale) -> Result<Chart, EvalError> {
    let mut all = Vec::new();
    for (key, _, color) in LOSS_TERMS {
        let values = log.steps.iter().map(|r| (r.step, loss_term(&r.loss, key)));
        all.push(series(key, color, values));
    }
    for (key, short, color) in LOSS_TERMS {
        let values = log.epochs.iter().map(|r| (r.step, loss_term(&r.loss, key)));
        let name = format!("{short} (epoch)");
        all.push(series(&name, darken(color), values));
    }
    all.retain(|s| !s.points.is_empty());
    let values: Vec<f64> = all
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, y)| y))
        .collect();
    let y_axis = loss_axis(&values, scale);
    chart(LOSS_PNG, "Training loss", x_axis.clone(), y_axis, all)
}

/// The loss chart's y axis over `values` (see the module docs).
fn loss_axis(values: &[f64], scale: LossScale) -> Axis {
    let positive = || values.iter().copied().filter(|&v| v > 0.0);
    let log = match scale {
        LossScale::Auto => !values.is_empty() && values.iter().all(|&v| v > 0.0),
        LossScale::Log => true,
        LossScale::Linear => false,
    };
    if log {
        let lo = positive().fold(f64::INFINITY, f64::min);
        let hi = positive().fold(f64::NEG_INFINITY, f64::max);
        if !(lo.is_finite() && hi.is_finite()) {
            return Axis::log("loss (log scale)", 0.1, 1.0);
        }
        // A margin of 3% of the range (at least 5%) at either end.
        let pad = (hi / lo).powf(0.03).max(1.05);
        return Axis::log("loss (log scale)", lo / pad, hi * pad);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
        return Axis::linear("loss", 0.0, 1.0);
    };
    let p95 = sorted[((sorted.len() - 1) as f64 * 0.95).round() as usize];
    let lo = min.min(0.0);
    let hi = if p95 > 0.0 { max.min(2.0 * p95) } else { max };
    let label = if hi < max {
        "loss (spikes clipped)"
    } else {
        "loss"
    };
    Axis::linear(label, lo, hi + 0.05 * (hi - lo))
}

/// `validation.png`, when there are validation lines with a value.
fn validation_chart(log: &MetricsLog, x_axis: &Axis) -> Result<Option<Chart>, EvalError> {
    let mut weights: Vec<&str> = Vec::new();
    for r in &log.validations {
        if !weights.contains(&r.weights.as_str()) {
            weights.push(&r.weights);
        }
    }
    let several = weights.len() > 1;
    let mut all = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        for (key, name, short, color) in VALIDATION_METRICS {
            let name = if several {
                format!("{short} ({})", if w.is_empty() { "?" } else { w })
            } else {
                name.to_string()
            };
            let color = if i % 2 == 1 { darken(color) } else { color };
            let values = log
                .validations
                .iter()
                .filter(|r| r.weights == *w)
                .map(|r| (r.step, validation_metric(r, key)));
            all.push(series(&name, color, values));
        }
    }
    all.retain(|s| !s.points.is_empty());
    if all.is_empty() {
        return Ok(None);
    }
    let y_axis = Axis::unit("mean over validation datasets");
    let title = "Validation";
    chart(VALIDATION_PNG, title, x_axis.clone(), y_axis, all).map(Some)
}

/// `color` at 60% brightness, for the epoch series.
fn darken(color: Rgb<u8>) -> Rgb<u8> {
    Rgb(color.0.map(|c| (u16::from(c) * 3 / 5) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_log::DatasetMetrics;

    const STEP: &str = r#"{"kind":"step","step":10,"epoch":0,"lr":0.001,"loss":{"total":1.2,"classification":0.5,"box_iou":0.3,"drivable":0.2,"lanes":0.2},"grad_norm":3.4,"images_per_second":12.3,"elapsed_seconds":33.1,"data_wait_fraction":0.01,"skipped_samples":0,"nonfinite_steps":0}"#;
    const EPOCH: &str = r#"{"kind":"epoch","step":130,"epoch":0,"loss":{"total":1.1,"classification":0.4,"box_iou":null,"drivable":0.2,"lanes":0.2}}"#;
    const VALIDATION: &str = r#"{"kind":"validation","step":130,"weights":"ema","datasets":[{"name":"synth-de","images":40,"map50":0.1,"map50_95":0.05,"drivable_miou":0.8,"lane_iou":0.5}],"mean":{"map50":0.1,"map50_95":0.05,"drivable_miou":0.8,"lane_iou":0.5},"score":0.47}"#;

    fn parse(text: &str) -> Result<MetricsLog, EvalError> {
        parse_metrics(text.as_bytes(), Path::new("runs/x/metrics.jsonl"))
    }

    /// A step line with the given total loss (and only it), lr and throughput.
    fn step_line(step: u64, total: f64, lr: f64, ips: f64) -> String {
        format!(
            r#"{{"kind":"step","step":{step},"lr":{lr},"loss":{{"total":{total}}},"images_per_second":{ips}}}"#
        )
    }

    /// A run of `n` step lines every 10 steps: total loss falling from 2 towards 0.5, lr
    /// warming up, throughput constant.
    fn run_lines(n: u64) -> Vec<String> {
        (1..=n)
            .map(|i| {
                let total = 0.5 + 1.5 / i as f64;
                step_line(10 * i, total, 1e-3 * (i as f64 / n as f64), 20.0)
            })
            .collect()
    }

    #[test]
    fn parses_a_step_line() {
        let log = parse(STEP).unwrap();
        assert_eq!(
            log.steps,
            [StepLine {
                step: 10,
                epoch: Some(0),
                lr: Some(0.001),
                loss: LossValues {
                    total: 1.2,
                    classification: Some(0.5),
                    box_iou: Some(0.3),
                    dfl: None,
                    drivable: Some(0.2),
                    lanes: Some(0.2),
                    distillation: None,
                    l2sp: None,
                },
                grad_norm: Some(3.4),
                images_per_second: Some(12.3),
                elapsed_seconds: Some(33.1),
                data_wait_fraction: Some(0.01),
                skipped_samples: Some(0),
                nonfinite_steps: Some(0),
            }]
        );
        assert!(log.epochs.is_empty() && log.validations.is_empty());
        assert_eq!((log.unknown_lines, log.torn_line), (0, None));
    }

    #[test]
    fn parses_epoch_and_validation_lines() {
        let log = parse(&[STEP, EPOCH, VALIDATION].join("\n")).unwrap();
        assert_eq!(
            log.epochs,
            [EpochLine {
                step: 130,
                epoch: Some(0),
                steps: None,
                loss: LossValues {
                    total: 1.1,
                    classification: Some(0.4),
                    box_iou: None,
                    dfl: None,
                    drivable: Some(0.2),
                    lanes: Some(0.2),
                    distillation: None,
                    l2sp: None,
                },
            }]
        );
        let metrics = DatasetMetrics {
            name: String::new(),
            images: 0,
            map50: Some(0.1),
            map50_95: Some(0.05),
            drivable_miou: Some(0.8),
            lane_iou: Some(0.5),
        };
        assert_eq!(
            log.validations,
            [ValidationResult {
                step: 130,
                weights: "ema".to_string(),
                datasets: vec![DatasetMetrics {
                    name: "synth-de".to_string(),
                    images: 40,
                    ..metrics.clone()
                }],
                mean: metrics,
                score: Some(0.47),
            }]
        );
        let v = &log.validations[0];
        assert_eq!(validation_metric(v, "score"), Some(0.47));
        assert_eq!(validation_metric(v, "drivable_miou"), Some(0.8));
    }

    #[test]
    fn null_and_absent_values_are_none() {
        let text = [
            r#"{"kind":"step","step":1,"lr":null,"loss":{"total":2.0,"classification":null},"grad_norm":null}"#,
            r#"{"kind":"step","step":2,"loss":null}"#,
            r#"{"kind":"validation","step":2,"weights":null,"mean":{"map50":null,"lane_iou":0.25,"images":null},"datasets":[{"name":null,"images":null}]}"#,
        ]
        .join("\n");
        let log = parse(&text).unwrap();
        let first = &log.steps[0];
        assert_eq!(loss_term(&first.loss, "total"), Some(2.0));
        assert_eq!(first.loss.classification, None);
        assert_eq!(first.loss.lanes, None);
        assert_eq!((first.lr, first.grad_norm, first.epoch), (None, None, None));
        assert!(log.steps[1].loss.terms().iter().all(|(_, v)| v.is_none()));
        let v = &log.validations[0];
        assert_eq!((v.mean.map50, v.mean.map50_95), (None, None));
        assert_eq!(v.mean.lane_iou, Some(0.25));
        assert_eq!((v.weights.as_str(), v.score), ("", None));
        assert_eq!((v.datasets[0].name.as_str(), v.datasets[0].images), ("", 0));
    }

    #[test]
    fn unknown_fields_and_kinds_are_ignored() {
        let text = [
            r#"{"kind":"step","step":5,"lr":0.5,"new_field":{"a":[1,2]},"loss":{"total":1.0,"depth":0.3}}"#,
            r#"{"kind":"checkpoint","step":5,"path":"x.safetensors"}"#,
            r#"{"kind":"validation","step":5,"mean":{"map50":0.2,"map75":0.1},"datasets":[{"name":"a","extra":1,"map50":0.2}]}"#,
        ]
        .join("\n");
        let log = parse(&text).unwrap();
        assert_eq!(log.steps.len(), 1);
        assert_eq!(log.steps[0].lr, Some(0.5));
        assert_eq!(log.steps[0].loss.total, 1.0);
        assert_eq!(log.unknown_lines, 1);
        assert_eq!(log.validations[0].mean.map50, Some(0.2));
        assert_eq!(log.validations[0].datasets[0].map50, Some(0.2));
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let torn = &STEP[..STEP.len() / 2];
        let text = format!("{STEP}\n{EPOCH}\n{torn}");
        let log = parse(&text).unwrap();
        assert_eq!(log.torn_line, Some(3));
        assert_eq!((log.steps.len(), log.epochs.len()), (1, 1));
        // Trailing blank lines do not make the torn line a middle one.
        let log = parse(&format!("{STEP}\n{torn}\n\n")).unwrap();
        assert_eq!(log.torn_line, Some(2));
        // A complete file ending in a newline has no torn line.
        assert_eq!(parse(&format!("{STEP}\n")).unwrap().torn_line, None);
    }

    #[test]
    fn malformed_middle_line_names_file_and_line() {
        let torn = &STEP[..STEP.len() / 2];
        let text = format!("{STEP}\n\n{torn}\n{EPOCH}\n");
        let message = parse(&text).unwrap_err().to_string();
        assert!(
            message.starts_with("runs/x/metrics.jsonl: line 3, column "),
            "{message}"
        );
        assert!(!message.contains("line 1"), "{message}");
        // A wrong type is as malformed as broken JSON; so is a line without a kind.
        let text = format!("{STEP}\n{}\n{STEP}", r#"{"kind":"step","step":"ten"}"#);
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("line 2"), "{message}");
        let message = parse(&format!("{{\"step\":1}}\n{STEP}"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 1") && message.contains("kind"),
            "{message}"
        );
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        for text in ["", "\n\n", EPOCH, VALIDATION, &STEP[..20]] {
            let message = parse(text).unwrap_err().to_string();
            assert!(
                message.contains("nothing to plot yet"),
                "{text:?}: {message}"
            );
            assert!(message.starts_with("runs/x/metrics.jsonl: "), "{message}");
        }
    }

    #[test]
    fn missing_metrics_file_says_to_train_first() {
        let dir = tempfile::tempdir().unwrap();
        let err = plot_run(dir.path(), None, &PlotOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("metrics.jsonl: not found"), "{message}");
        assert!(message.contains("train first"), "{message}");
        let err = plot_run(&dir.path().join("nope"), None, &PlotOptions::default());
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("no such run directory"));
    }

    #[test]
    fn a_resumed_run_supersedes_the_steps_it_logs_again() {
        let lines = [
            step_line(10, 1.0, 0.1, 1.0),
            step_line(20, 1.0, 0.1, 1.0),
            step_line(30, 1.0, 0.1, 1.0),
            // Resumed from the checkpoint at step 20.
            step_line(30, 0.5, 0.1, 1.0),
            step_line(40, 0.5, 0.1, 1.0),
        ];
        let log = parse(&lines.join("\n")).unwrap();
        let steps: Vec<usize> = log.steps.iter().map(|r| r.step).collect();
        assert_eq!(steps, [10, 20, 30, 40]);
        assert_eq!(log.steps[2].loss.total, 0.5);
        assert_eq!(log.superseded_lines, 1);
        // Validation lines at one step (raw and EMA weights) are both kept.
        let v = r#"{"kind":"validation","step":10,"weights":"raw","score":0.1}"#;
        let log = parse(&[STEP, v, &v.replace("raw", "ema")].join("\n")).unwrap();
        assert_eq!((log.validations.len(), log.superseded_lines), (2, 0));
    }

    #[test]
    fn writes_decodable_charts_with_a_point_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = run_lines(20);
        lines.push(EPOCH.replace("130", "100"));
        lines.push(EPOCH.replace("130", "200").replace("1.1", "0.9"));
        lines.push(VALIDATION.replace("130", "100"));
        lines.push(VALIDATION.replace("130", "200").replace("0.47", "0.6"));
        std::fs::write(dir.path().join(METRICS_FILE), lines.join("\n") + "\n").unwrap();
        let summary = plot_run(dir.path(), None, &PlotOptions::default()).unwrap();
        let out = dir.path().join(PLOTS_DIR);
        assert_eq!(summary.out_dir, out);
        assert_eq!(summary.metrics, dir.path().join(METRICS_FILE));
        let names: Vec<PathBuf> = summary.charts.iter().map(|c| c.path.clone()).collect();
        let expected = [LOSS_PNG, LR_PNG, THROUGHPUT_PNG, VALIDATION_PNG].map(|f| out.join(f));
        assert_eq!(names, expected);
        assert_eq!(
            (
                summary.step_lines,
                summary.epoch_lines,
                summary.validation_lines
            ),
            (20, 2, 2)
        );
        for chart in &summary.charts {
            let image = image::open(&chart.path).unwrap().to_rgb8();
            let expected = (crate::chart::LINE_CHART_WIDTH, crate::chart::CHART_HEIGHT);
            assert_eq!(image.dimensions(), expected, "{}", chart.path.display());
            assert_eq!(chart.svg, chart.path.with_extension("svg"));
            let svg = std::fs::read_to_string(&chart.svg).unwrap();
            assert!(svg.starts_with("<svg"), "{}", chart.svg.display());
            let lines = chart.series.iter().filter(|s| s.points > 1).count();
            assert_eq!(svg.matches("<polyline").count(), lines, "{svg}");
        }
        let svg = std::fs::read_to_string(&summary.charts[0].svg).unwrap();
        assert!(svg.contains("\nTraining loss\n</text>"), "{svg}");
        let points = |c: &ChartFile| -> Vec<(String, usize)> {
            c.series
                .iter()
                .map(|s| (s.name.clone(), s.points))
                .collect()
        };
        let owned = |v: &[(&str, usize)]| -> Vec<(String, usize)> {
            v.iter().map(|&(n, p)| (n.to_string(), p)).collect()
        };
        // Step lines carry only the total; the epoch lines carry four terms (box_iou null).
        assert_eq!(
            points(&summary.charts[0]),
            owned(&[
                ("total", 20),
                ("total (epoch)", 2),
                ("classif. (epoch)", 2),
                ("drivable (epoch)", 2),
                ("lanes (epoch)", 2),
            ])
        );
        assert_eq!(summary.charts[0].points(), 28);
        assert_eq!(summary.charts[0].y_scale, Scale::Log);
        assert_eq!(points(&summary.charts[1]), owned(&[("learning rate", 20)]));
        assert_eq!(points(&summary.charts[2]), owned(&[("images/s", 20)]));
        assert_eq!(
            points(&summary.charts[3]),
            owned(&[
                ("mAP@0.5", 2),
                ("mAP@.5:.95", 2),
                ("drivable mIoU", 2),
                ("lane IoU", 2),
                ("score", 2),
            ])
        );
        // --out elsewhere; no validation lines, no validation chart.
        let other = dir.path().join("elsewhere");
        std::fs::write(dir.path().join(METRICS_FILE), run_lines(3).join("\n")).unwrap();
        let summary = plot_run(dir.path(), Some(&other), &PlotOptions::default()).unwrap();
        let names: Vec<PathBuf> = summary.charts.iter().map(|c| c.path.clone()).collect();
        assert_eq!(
            names,
            [LOSS_PNG, LR_PNG, THROUGHPUT_PNG].map(|f| other.join(f))
        );
        assert!(summary.charts.iter().all(|c| c.points() == 3));
        // The metrics file itself may be given.
        let summary = plot_run(
            &dir.path().join(METRICS_FILE),
            None,
            &PlotOptions::default(),
        )
        .unwrap();
        assert_eq!(summary.out_dir, out);
    }

    /// The pixel of `(x, y)` on the chart's axes.
    fn pixel_of(chart: &Chart, x: f64, y: f64) -> (u32, u32) {
        let (left, top, right, bottom) = crate::chart::LINE_PLOT_AREA;
        let px = f64::from(left) + chart.x_axis.position(x) * f64::from(right - left);
        let py = f64::from(bottom) - chart.y_axis.position(y) * f64::from(bottom - top);
        (px.round() as u32, py.round() as u32)
    }

    #[test]
    fn the_total_loss_is_drawn_through_its_points() {
        let lines = run_lines(12);
        let log = parse(&lines.join("\n")).unwrap();
        for scale in [LossScale::Auto, LossScale::Linear, LossScale::Log] {
            let charts = render(&log, &PlotOptions { loss_scale: scale }).unwrap();
            let loss = &charts[0];
            assert_eq!(loss.file_name, LOSS_PNG);
            let expected = if scale == LossScale::Linear {
                Scale::Linear
            } else {
                Scale::Log
            };
            assert_eq!(loss.y_axis.scale, expected);
            let total = LOSS_TERMS[0].2;
            for r in &log.steps {
                let (x, y) = pixel_of(loss, r.step as f64, f64::from(r.loss.total));
                let png = &loss.image.png;
                let near = (x - 2..=x + 2)
                    .flat_map(|x| (y - 2..=y + 2).map(move |y| (x, y)))
                    .any(|(x, y)| *png.get_pixel(x, y) == total);
                assert!(near, "{scale:?}: step {} at ({x}, {y})", r.step);
            }
            // The falling curve: its first point is higher up than its last.
            let first = pixel_of(loss, 10.0, f64::from(log.steps[0].loss.total));
            let last = pixel_of(loss, 120.0, f64::from(log.steps[11].loss.total));
            assert!(first.1 + 100 < last.1, "{first:?} {last:?}");
            // The learning rate rises to the top right.
            let lr = &charts[1];
            let (x, y) = pixel_of(lr, 120.0, 1e-3);
            let png = &lr.image.png;
            assert!((x - 2..=x)
                .flat_map(|x| (y..=y + 2).map(move |y| (x, y)))
                .any(|(x, y)| *png.get_pixel(x, y) == LR_COLOR));
        }
    }

    #[test]
    fn loss_axis_choices() {
        // All positive: log, spanning the values.
        let axis = loss_axis(&[0.01, 1.0, 100.0], LossScale::Auto);
        assert_eq!(axis.scale, Scale::Log);
        // A margin of 3% of the four decades at either end.
        let pad = 10f64.powf(0.12);
        assert!((axis.min - 0.01 / pad).abs() < 1e-12, "{axis:?}");
        assert!((axis.max - 100.0 * pad).abs() < 1e-9, "{axis:?}");
        // A narrow range gets at least 5%.
        let axis = loss_axis(&[1.0, 1.1], LossScale::Auto);
        assert!((axis.min - 1.0 / 1.05).abs() < 1e-12, "{axis:?}");
        // A zero: linear from 0.
        let axis = loss_axis(&[0.0, 1.0, 2.0], LossScale::Auto);
        assert_eq!((axis.scale, axis.min), (Scale::Linear, 0.0));
        assert!((axis.max - 2.1).abs() < 1e-9, "{axis:?}");
        assert_eq!(axis.label, "loss");
        // A spike is clipped at twice the 95th percentile.
        let mut values = vec![1.0; 99];
        values.push(1000.0);
        let axis = loss_axis(&values, LossScale::Linear);
        assert!((axis.max - 2.0 * 1.05).abs() < 1e-9, "{axis:?}");
        assert_eq!(axis.label, "loss (spikes clipped)");
    }

    #[test]
    fn several_weights_get_their_own_series() {
        let text = [
            STEP.to_string(),
            r#"{"kind":"validation","step":10,"weights":"raw","score":0.1}"#.to_string(),
            r#"{"kind":"validation","step":10,"weights":"ema","score":0.2}"#.to_string(),
            r#"{"kind":"validation","step":20,"weights":"ema","score":0.3}"#.to_string(),
        ]
        .join("\n");
        let charts = render(&parse(&text).unwrap(), &PlotOptions::default()).unwrap();
        let validation = charts.last().unwrap();
        assert_eq!(validation.file_name, VALIDATION_PNG);
        let series: Vec<(&str, usize)> = validation
            .series
            .iter()
            .map(|s| (s.name.as_str(), s.points))
            .collect();
        assert_eq!(series, [("score (raw)", 1), ("score (ema)", 2)]);
    }

    #[test]
    fn loss_scale_names() {
        for name in LossScale::NAMES {
            assert!(name.parse::<LossScale>().is_ok());
        }
        assert_eq!("log".parse::<LossScale>().unwrap(), LossScale::Log);
        let message = "cubic".parse::<LossScale>().unwrap_err().to_string();
        assert!(message.contains("auto, log, linear"), "{message}");
    }
}
