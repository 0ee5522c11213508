//! Errors of percept-eval. Each names the file, key or setting involved and what would be valid.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error(transparent)]
    Dataset(#[from] percept_data::DataError),
    #[error("data: {0}")]
    Data(String),
    #[error("model file {}: {message}", path.display())]
    ModelFile { path: PathBuf, message: String },
    #[error("image {}: {message}", path.display())]
    Image { path: PathBuf, message: String },
}

/// Model-file and file errors of the inference crate, as the same variants (same messages).
impl From<percept_infer::InferError> for EvalError {
    fn from(e: percept_infer::InferError) -> Self {
        match e {
            percept_infer::InferError::Io { path, source } => EvalError::Io { path, source },
            percept_infer::InferError::ModelFile { path, message } => {
                EvalError::ModelFile { path, message }
            }
        }
    }
}
