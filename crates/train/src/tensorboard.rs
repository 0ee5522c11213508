//! TensorBoard event files beside `metrics.jsonl`, so `tensorboard --logdir runs/` shows a
//! run's curves live, as researchers coming from PyTorch expect.
//!
//! Written with the `tfrecord` crate (TensorFlow's record framing and `Event`/`Summary`
//! protobuf messages, generated ahead of time, so the build needs no `protoc`) into
//! `RUN_DIR/tensorboard/events.out.tfevents.<time>.<host>`. Each process (and each resume)
//! starts a file of its own; TensorBoard reads them all. Tags: `loss/<term>`, `train/lr`,
//! `train/grad_norm`, `train/images_per_second`, `train/data_wait_fraction`,
//! `epoch/loss/<term>`, `val/<weights>/<metric>` (the mean over the validation splits) and
//! `val/<weights>/<split>/<metric>`; validation examples as images under `val/examples/...`.
//!
//! The events are a view, not a record: `metrics.jsonl` is the file of record. A failure to
//! write an event is reported once and the run goes on.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use percept_eval::metrics_log::{DatasetMetrics, LossValues, MetricsLine};
use tfrecord::protobuf::event::What;
use tfrecord::protobuf::summary::Image;
use tfrecord::{Event, EventMeta, EventWriterConfig};

use crate::TrainError;

/// The directory in the run directory that holds the event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// A run's TensorBoard event file.
pub struct EventWriter {
    writer: Option<tfrecord::EventWriter<BufWriter<File>>>,
    path: PathBuf,
    failed: bool,
}

impl EventWriter {
    /// Starts a new event file in `RUN_DIR/tensorboard/`.
    pub fn create(run_dir: &Path, start_step: usize) -> Result<EventWriter, TrainError> {
        let dir = run_dir.join(TENSORBOARD_DIR);
        let prefix = format!("{}/events", dir.display());
        let mut writer = tfrecord::EventWriter::from_prefix(
            prefix.as_str(),
            "",
            EventWriterConfig { auto_flush: false },
        )
        .map_err(|e| TrainError::Io {
            path: dir.clone(),
            source: std::io::Error::other(format!("creating a TensorBoard event file: {e}")),
        })?;
        let version = Event {
            what: Some(What::FileVersion("brain.Event:2".into())),
            ..EventMeta::with_step(start_step as i64).build_empty()
        };
        let written = writer.write_event(version);
        let mut events = EventWriter {
            writer: Some(writer),
            path: dir,
            failed: false,
        };
        events.check(written.map_err(|e| e.to_string()));
        Ok(events)
    }

    /// The line's values as scalars.
    pub fn line(&mut self, line: &MetricsLine) {
        let mut scalars: Vec<(String, f32)> = Vec::new();
        let step = match line {
            MetricsLine::Step(s) => {
                push_losses(&mut scalars, "loss", &s.loss);
                let optional = [
                    ("train/lr", s.lr),
                    ("train/grad_norm", s.grad_norm.map(f64::from)),
                    ("train/images_per_second", s.images_per_second),
                    ("train/data_wait_fraction", s.data_wait_fraction),
                ];
                for (tag, v) in optional {
                    if let Some(v) = v {
                        scalars.push((tag.into(), v as f32));
                    }
                }
                s.step
            }
            MetricsLine::Epoch(e) => {
                push_losses(&mut scalars, "epoch/loss", &e.loss);
                e.step
            }
            MetricsLine::Validation(v) => {
                let prefix = format!("val/{}", v.weights);
                push_metrics(&mut scalars, &prefix, &v.mean);
                if let Some(score) = v.score {
                    scalars.push((format!("{prefix}/score"), score as f32));
                }
                if v.datasets.len() > 1 {
                    for d in &v.datasets {
                        push_metrics(&mut scalars, &format!("{prefix}/{}", d.name), d);
                    }
                }
                v.step
            }
        };
        for (tag, value) in scalars {
            let written = self
                .writer
                .as_mut()
                .map(|w| w.write_scalar(tag, step as i64, value));
            self.check_opt(written);
        }
    }

    /// A PNG image (`size`: width, height) at `step`.
    pub fn image(&mut self, tag: &str, step: usize, png: &[u8], size: [u32; 2]) {
        let image = Image {
            width: size[0] as i32,
            height: size[1] as i32,
            colorspace: 3,
            encoded_image_string: png.to_vec(),
        };
        let written = self
            .writer
            .as_mut()
            .map(|w| w.write_image(tag, step as i64, image));
        self.check_opt(written);
    }

    /// Writes buffered events to the file (TensorBoard sees them from then on).
    pub fn flush(&mut self) {
        let flushed = self.writer.as_mut().map(|w| w.flush());
        self.check_opt(flushed);
    }

    fn check_opt(&mut self, result: Option<Result<(), tfrecord::Error>>) {
        if let Some(r) = result {
            self.check(r.map_err(|e| e.to_string()));
        }
    }

    fn check(&mut self, result: Result<(), String>) {
        if let Err(e) = result {
            if !self.failed {
                tracing::warn!(
                    "TensorBoard events in {} are incomplete from here on: {e} (metrics.jsonl \
                     is unaffected)",
                    self.path.display()
                );
            }
            self.failed = true;
            self.writer = None;
        }
    }
}

fn push_losses(out: &mut Vec<(String, f32)>, prefix: &str, loss: &LossValues) {
    for (name, v) in loss.terms() {
        if let Some(v) = v {
            out.push((format!("{prefix}/{name}"), v));
        }
    }
}

fn push_metrics(out: &mut Vec<(String, f32)>, prefix: &str, m: &DatasetMetrics) {
    let metrics = [
        ("map50", m.map50),
        ("map50_95", m.map50_95),
        ("drivable_miou", m.drivable_miou),
        ("lane_iou", m.lane_iou),
    ];
    for (name, v) in metrics {
        if let Some(v) = v {
            out.push((format!("{prefix}/{name}"), v as f32));
        }
    }
}
