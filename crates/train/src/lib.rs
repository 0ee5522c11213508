//! `percept-train`: training a percept network.
//!
//! - Run configs: [`config`] (the values and their checks), [`config_source`] (files, `extends`
//!   chains, `--set`).
//! - Where it runs: [`backend`] (devices, dispatch), [`gpu_runtime`] (kernel cache and counts).
//! - The run: [`trainer`] (a [`trainer::TrainTask`] run as start, step, log, checkpoint,
//!   validate, finish), [`step`] (the one optimisation step), [`optim`] (with
//!   [`lr_multipliers`]), [`schedule`], [`ema`],
//!   [`running_stats`], [`validation`].
//! - State on disk: [`checkpoint`] (files, commit records, retention), [`checkpointer`]
//!   (writing them during a run), [`run_log`] and [`tensorboard`] (what a run reports).
//! - Data: [`site`] (the residency guard and site key a config declares), [`data`] (a run's
//!   datasets through the guard), [`loader`] (prefetched, augmented batches).
//! - Several devices and processes: [`data_parallel`], [`cluster`] (with `mpi_collectives`
//!   behind the `mpi` feature and `nccl` behind `cuda`).
//! - [`export`]: a checkpoint as a verified model file.
//!
//! Evaluation and model files are `percept-eval`'s; the commands are the `percept` crate's.

pub mod backend;
pub mod checkpoint;
pub mod checkpointer;
pub mod cluster;
pub mod config;
pub mod config_source;
pub mod data;
pub mod data_parallel;
pub mod ema;
pub mod export;
pub mod finetune;
pub mod gpu_runtime;
pub mod interrupt;
pub mod loader;
pub mod lr_multipliers;
#[cfg(feature = "mpi")]
pub mod mpi_collectives;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod onnx_export;
pub mod optim;
pub mod run_log;
pub mod running_stats;
pub mod schedule;
pub mod site;
pub mod step;
pub mod tensorboard;
pub mod trainer;
pub mod validation;

use std::path::PathBuf;

pub use backend::{dispatch, dispatch_on, BackendTask, DeviceSpec, Devices};
pub use config::RunConfig;
pub use percept_eval::metrics_log::{DatasetMetrics, LossValues, ValidationResult};

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
    /// Problems only `--set KEY=VALUE` arguments caused (each line names its argument): the
    /// config file is not to blame.
    #[error("{0}")]
    Set(String),
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Dataset(#[from] percept_data::DataError),
    #[error(transparent)]
    Eval(#[from] percept_eval::EvalError),
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
        "checkpoint {} (step {step}) could not be written: {message}. {}{last_checkpoint} \
         Free space (or clear the path), then continue with `percept train --resume {}`.",
        path.display(),
        if *is_final {
            "The final checkpoint cannot be skipped. "
        } else {
            "checkpoint.on_error = \"stop\" stopped the run (\"continue\" trains on past a \
             failed checkpoint). "
        },
        run_dir.display()
    )]
    Checkpoint {
        /// The checkpoint's model file.
        path: PathBuf,
        step: usize,
        message: String,
        /// Names the last checkpoint, which is intact.
        last_checkpoint: String,
        run_dir: PathBuf,
        is_final: bool,
    },
    #[error(
        "training stopped at step {step}: {in_a_row} steps in a row had a non-finite loss or \
         gradient (each was skipped; train.max_nonfinite_steps = {in_a_row}). {last_checkpoint} \
         Lower train.lr, set optimizer.grad_clip, or look for broken labels."
    )]
    NonFinite {
        step: usize,
        in_a_row: usize,
        /// Names the last checkpoint, which is intact.
        last_checkpoint: String,
    },
}
