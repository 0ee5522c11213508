//! `percept-train`: run configs, backend selection, the training loop, evaluation, export and
//! prediction. The `percept` binary is a thin layer over [`commands`].

pub mod backend;
pub mod bench;
pub mod chart;
pub mod commands;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod interrupt;
pub mod loader;
pub mod metrics;
pub mod model_file;
pub mod overlay;
pub mod predict;
pub mod quickstart;
pub mod report;
pub mod trainer;

use std::path::PathBuf;

pub use backend::{dispatch, BackendTask, DeviceSpec};
pub use config::RunConfig;

/// Errors of percept-train. Each names the file, key or device involved and what would be valid.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Dataset(#[from] percept_data::DataError),
    #[error("data: {0}")]
    Data(String),
    #[error("residency: {0}")]
    Residency(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("model file {}: {message}", path.display())]
    ModelFile { path: PathBuf, message: String },
    #[error("image {}: {message}", path.display())]
    Image { path: PathBuf, message: String },
    #[error(
        "training diverged at step {step}: loss is {loss}; lower optimizer.lr or set \
         optimizer.grad_clip"
    )]
    Diverged { step: usize, loss: f32 },
}
