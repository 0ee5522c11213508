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
