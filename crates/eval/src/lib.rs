//! `percept-eval`: what a trained network is worth and what it shows.
//!
//! - [`model_file`]: the model file (safetensors weights + model card), shared by checkpoints
//!   and exports ([`ModelCard`], [`save_model`], [`load_model`]).
//! - [`inputs`]: a batch as the network's input and target tensors (training uses it too).
//! - [`image_space`]: outputs mapped back from network pixels to the frame's pixels.
//! - [`metrics`]: detection AP (COCO-style) and segmentation IoU accumulators.
//! - [`metrics_log`]: the lines of a run's `metrics.jsonl` (the trainer writes them, [`plot`] reads them).
//! - [`eval`]: a network over a dataset split: metrics, per-slice metrics, example images
//!   ([`evaluate`]).
//! - [`predict`]: one image through a model file: detections, masks, an overlay.
//! - [`overlay`], [`chart`]: drawing predictions on frames, and charts (plotters; PNG and SVG).
//! - [`font`]: the bundled font (DejaVu Sans) of chart and overlay text.
//! - [`report`]: an evaluation as HTML and Markdown with charts and examples.
//! - [`compare`]: evaluations side by side (`percept compare`): one table, differences, a chart.
//! - [`plot`]: a run's `metrics.jsonl` (read with [`metrics_log`]'s types) as charts
//!   (`percept plot`).
//!
//! Dependencies run one way: `percept-train` uses this crate (validation, model files); this
//! crate knows nothing of training.

pub mod chart;
pub mod compare;
pub mod error;
pub mod eval;
pub mod font;
pub use percept_infer::image_space;
pub mod inputs;
pub mod metrics;
pub mod metrics_log;
pub mod model_file;
pub mod overlay;
pub mod plot;
pub mod predict;
pub mod report;

pub use error::EvalError;
pub use eval::{evaluate, EvalOptions, EvalReport, MetricResolution};
pub use model_file::{load_model, save_model, ModelCard};
