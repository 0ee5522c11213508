//! Errors of percept-infer. Each names the file and what would be valid.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {}: {message}", path.display())]
    ModelFile { path: PathBuf, message: String },
}
