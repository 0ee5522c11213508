//! `percept`: train the camera perception network of a driver-assistance system — 2D
//! detection, drivable-area and lane-line segmentation — on region-tagged data, on CPU, wgpu or
//! CUDA, and export it for inference.
//!
//! This crate re-exports the workspace's crates; the `percept` binary is its command line.

pub use percept_data as data;
pub use percept_import as import;
pub use percept_model as model;
pub use percept_synth as synth;
pub use percept_train as train;
