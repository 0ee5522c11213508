//! `percept`: train the camera perception network of a driver-assistance system — 2D
//! detection, drivable-area and lane-line segmentation — on region-tagged data, on CPU, wgpu or
//! CUDA, and export it for inference.
//!
//! This crate is the application: the bodies of the `percept` commands over the workspace's
//! libraries, which it re-exports. The `percept` binary (`src/main.rs`) parses the command line
//! and calls these.
//!
//! - [`commands`]: train, eval, export, predict, audit and the other commands' bodies.
//! - [`countries`]: the built-in country profiles and `--country` / `finetune.profile` lookup.
//! - [`onnx_model`]: `percept eval` / `percept predict` on an ONNX export (ONNX Runtime).
//! - [`seals`]: keys, signing a dataset, a run's signed audit head.
//! - [`quickstart`]: synthetic data, a short run, evaluation and a report in one command.
//! - [`bench`], [`bench_train`], [`bench_all_reduce`]: the input pipeline's, the training
//!   step's and the gradient all-reduce's benchmarks.
//! - [`warmup`]: fills a GPU kernel cache before a run.

pub mod bench;
pub mod bench_all_reduce;
pub mod bench_train;
pub mod commands;
pub mod countries;
pub mod finetune_cmd;
pub mod onnx_model;
pub mod quickstart;
pub mod seals;
pub mod warmup;

pub use percept_data as data;
pub use percept_eval as eval;
pub use percept_import as import;
pub use percept_model as model;
pub use percept_onnx as onnx;
pub use percept_synth as synth;
pub use percept_train as train;
