//! What a run tells while it trains: `metrics.jsonl` (lines of
//! [`percept_eval::metrics_log`], read back by `percept plot`), TensorBoard event files
//! ([`crate::tensorboard`]), and progress on the terminal (a bar) or in the log (a line every
//! `logging.line_seconds`).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use percept_data::atomic_file::write_atomic;
use percept_eval::metrics_log::{
    EpochLine, LossValues, MetricsLine, StepLine, ValidationResult, METRICS_FILE,
};

use crate::config::{ProgressStyleKind, RunConfig};
use crate::tensorboard::EventWriter;
use crate::TrainError;

/// Sums of loss values over steps, for window and epoch means.
#[derive(Debug, Clone, Default)]
struct LossMean {
    sum: [f64; 8],
    steps: usize,
    present: [bool; 7],
}

impl LossMean {
    fn add(&mut self, v: &LossValues) {
        let terms = [
            v.classification,
            v.box_iou,
            v.dfl,
            v.drivable,
            v.lanes,
            v.distillation,
            v.l2sp,
        ];
        self.sum[0] += v.total as f64;
        for (k, t) in terms.iter().enumerate() {
            self.present[k] = t.is_some();
            self.sum[k + 1] += t.unwrap_or(0.0) as f64;
        }
        self.steps += 1;
    }

    /// The mean since the last take, and a fresh start.
    fn take(&mut self) -> Option<LossValues> {
        if self.steps == 0 {
            return None;
        }
        let n = self.steps as f64;
        let m = |k: usize| (self.sum[k] / n) as f32;
        let p = self.present;
        let mean = LossValues {
            total: m(0),
            classification: p[0].then(|| m(1)),
            box_iou: p[1].then(|| m(2)),
            dfl: p[2].then(|| m(3)),
            drivable: p[3].then(|| m(4)),
            lanes: p[4].then(|| m(5)),
            distillation: p[5].then(|| m(6)),
            l2sp: p[6].then(|| m(7)),
        };
        *self = LossMean::default();
        Some(mean)
    }
}

/// Throughput and data waiting of the steps this process ran so far.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub images_per_second: f64,
    pub elapsed_seconds: f64,
    pub data_wait_fraction: f64,
}

/// A finished step as the log sees it.
#[derive(Debug, Clone, Copy)]
pub struct StepRecord {
    pub step: usize,
    pub lr: f64,
    /// The gradient norm of a finite step; `None` for a skipped (non-finite) one. Only finite
    /// steps' values and norms go into the means.
    pub grad_norm: Option<f32>,
    /// This step's values (logged as they are when every step of a window was skipped).
    pub losses: LossValues,
    /// The sampler's epoch after the step.
    pub epoch: u64,
    pub skipped_samples: usize,
    pub nonfinite_steps: usize,
}

/// The run's metrics file, TensorBoard events and progress display.
pub struct RunLog {
    metrics: File,
    metrics_path: PathBuf,
    events: EventWriter,
    bar: ProgressBar,
    lines: bool,
    line_every: Duration,
    last_line: Instant,
    window: LossMean,
    line_window: LossMean,
    epoch_mean: LossMean,
    grad_norms: (f64, usize),
    epoch: u64,
    steps: usize,
    log_every: usize,
    start_step: usize,
}

impl RunLog {
    /// Opens the run's logs; on resume at `resumed_at`, first drops the metrics lines after
    /// that step (written by the interrupted process after its last checkpoint).
    pub fn open(
        config: &RunConfig,
        run_dir: &Path,
        resumed_at: Option<usize>,
        start_step: usize,
        epoch: u64,
    ) -> Result<RunLog, TrainError> {
        let metrics_path = run_dir.join(METRICS_FILE);
        let metrics = open_metrics(&metrics_path, resumed_at)?;
        let events = EventWriter::create(run_dir, start_step)?;
        let (bar, lines) = progress_bar(config, start_step);
        Ok(RunLog {
            metrics,
            metrics_path,
            events,
            bar,
            lines,
            line_every: Duration::from_secs_f64(config.logging.line_seconds),
            last_line: Instant::now(),
            window: LossMean::default(),
            line_window: LossMean::default(),
            epoch_mean: LossMean::default(),
            grad_norms: (0.0, 0),
            epoch,
            steps: config.train.steps,
            log_every: config.logging.every,
            start_step,
        })
    }

    /// Records a step: its share of the means, and a `step` line every `logging.every` steps
    /// (and at the last), an `epoch` line when the epoch changed, a progress line when due.
    pub fn step(&mut self, r: &StepRecord, pace: &Pace) -> Result<(), TrainError> {
        if let Some(norm) = r.grad_norm {
            self.window.add(&r.losses);
            self.line_window.add(&r.losses);
            self.epoch_mean.add(&r.losses);
            self.grad_norms.0 += norm as f64;
            self.grad_norms.1 += 1;
        }
        if r.step.is_multiple_of(self.log_every) || r.step == self.steps {
            // Every step since the last line skipped: log this one's (non-finite) values.
            let mean = self.window.take().unwrap_or(r.losses);
            let (sum, n) = std::mem::take(&mut self.grad_norms);
            let grad_norm = (n > 0).then(|| (sum / n as f64) as f32);
            self.write(&MetricsLine::Step(StepLine {
                step: r.step,
                epoch: Some(self.epoch),
                lr: Some(r.lr),
                loss: mean,
                grad_norm,
                images_per_second: Some(pace.images_per_second),
                elapsed_seconds: Some(pace.elapsed_seconds),
                data_wait_fraction: Some(pace.data_wait_fraction),
                skipped_samples: Some(r.skipped_samples),
                nonfinite_steps: Some(r.nonfinite_steps),
            }))?;
            self.bar.set_message(format!(
                "{} lr {:.2e} {:.1} img/s",
                mean.short(),
                r.lr,
                pace.images_per_second
            ));
        }
        if r.epoch > self.epoch {
            let steps = self.epoch_mean.steps;
            if let Some(mean) = self.epoch_mean.take() {
                self.write(&MetricsLine::Epoch(EpochLine {
                    step: r.step,
                    epoch: Some(self.epoch),
                    steps: Some(steps),
                    loss: mean,
                }))?;
            }
            self.epoch = r.epoch;
        }
        self.progress_line(r, pace);
        Ok(())
    }

    fn progress_line(&mut self, r: &StepRecord, pace: &Pace) {
        let due = self.last_line.elapsed() >= self.line_every
            || r.step == self.steps
            || r.step == self.start_step + 1;
        if !self.lines || !due {
            return;
        }
        self.last_line = Instant::now();
        let done = r.step - self.start_step;
        let eta = pace.elapsed_seconds / done as f64 * (self.steps - r.step) as f64;
        if let Some(mean) = self.line_window.take() {
            tracing::info!(
                "step {}/{} {} lr {:.2e} {:.1} img/s, data wait {:.0}%, ETA {}",
                r.step,
                self.steps,
                mean.short(),
                r.lr,
                pace.images_per_second,
                100.0 * pace.data_wait_fraction,
                format_duration(eta)
            );
        }
    }

    /// Records a validation: its line, its scalars and the message on the terminal.
    pub fn validation(&mut self, result: &ValidationResult) -> Result<(), TrainError> {
        self.write(&MetricsLine::Validation(result.clone()))?;
        let shown = |m: Option<f64>| m.map_or("-".into(), |v| format!("{v:.3}"));
        self.say(format!(
            "validation at step {} ({} weights): mAP@0.5 {} drivable mIoU {} lane IoU {}",
            result.step,
            result.weights,
            shown(result.mean.map50),
            shown(result.mean.drivable_miou),
            shown(result.mean.lane_iou)
        ));
        Ok(())
    }

    /// A validation example overlay as an image in TensorBoard.
    pub fn example(&mut self, tag: &str, step: usize, overlay: &image::RgbImage) {
        let mut png = Vec::new();
        let encoded =
            overlay.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png);
        if encoded.is_ok() {
            self.events
                .image(tag, step, &png, [overlay.width(), overlay.height()]);
        }
    }

    /// A message above the progress bar, or a log line.
    fn say(&self, message: String) {
        if self.lines {
            tracing::info!("{message}");
        } else {
            self.bar.println(message);
        }
    }

    /// One step done on the bar.
    pub fn advance(&self) {
        self.bar.inc(1);
    }

    /// Stops the bar where it is (the run failed).
    pub fn abandon(&self) {
        self.bar.abandon();
    }

    /// Clears the bar and flushes the event file.
    pub fn finish(&mut self) {
        self.bar.finish_and_clear();
        self.events.flush();
    }

    fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        writeln!(self.metrics, "{}", line.to_json()).map_err(|e| TrainError::Io {
            path: self.metrics_path.clone(),
            source: e,
        })?;
        self.events.line(line);
        Ok(())
    }
}

/// Progress: a bar on a terminal (or when asked), plain log lines otherwise; whether lines.
fn progress_bar(config: &RunConfig, start_step: usize) -> (ProgressBar, bool) {
    let bar_wanted = match config.logging.progress {
        ProgressStyleKind::Auto => std::io::stderr().is_terminal(),
        ProgressStyleKind::Bar => true,
        ProgressStyleKind::Lines => false,
    };
    if !bar_wanted {
        return (ProgressBar::hidden(), true);
    }
    let bar = ProgressBar::new(config.train.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:24.cyan/blue} {pos}/{len} {msg} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("train");
    bar.set_position(start_step as u64);
    bar.reset_eta();
    (bar, false)
}

/// Opens `metrics.jsonl` for appending; on resume, first drops the lines after the resumed
/// step.
fn open_metrics(path: &Path, resumed_at: Option<usize>) -> Result<File, TrainError> {
    let io = |e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    match resumed_at {
        None => File::create(path).map_err(io),
        Some(step) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            write_atomic(path, kept.as_bytes())?;
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io)
        }
    }
}

/// `1h02m`, `3m05s`, `12s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
