//! Export: a checkpoint becomes a deployable model file, verified before it replaces anything.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use percept_model::PerceptionNet;
use serde::Serialize;

use crate::TrainError;
use percept_eval::model_file::{load_model, save_model, ModelCard};

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub hash: String,
    pub parameters: usize,
    pub card: ModelCard,
}

/// A fixed pseudo-random input `[1, 3, h, w]` for comparing two copies of a network.
pub fn probe_input<B: Backend>(height: usize, width: usize, device: &B::Device) -> Tensor<B, 4> {
    let n = 3 * height * width;
    // Deterministic, no RNG state: a cheap hash of the index, in [-2, 2].
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            (x as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::<B, 1>::from_floats(values.as_slice(), device).reshape([1, 3, height, width])
}

/// All outputs of a forward pass, flattened, for exact comparison.
pub fn output_values<B: Backend>(net: &PerceptionNet<B>, input: Tensor<B, 4>) -> Vec<f32> {
    let out = net.forward(input);
    let mut parts: Vec<Tensor<B, 1>> = Vec::new();
    if let Some(d) = out.detection {
        parts.push(d.class_logits.flatten(0, 2));
        parts.push(d.distances.flatten(0, 2));
    }
    parts.extend(out.drivable.map(|t| t.flatten(0, 3)));
    parts.extend(out.lanes.map(|t| t.flatten(0, 3)));
    Tensor::cat(parts, 0)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data")
}

/// Exports `checkpoint` to `out`: loads it, writes the model file atomically, loads the written
/// file back and checks that it gives bit-identical outputs; on a mismatch the export is
/// removed and an error returned.
pub fn export<B: Backend>(
    checkpoint: &Path,
    out: &Path,
    device: &B::Device,
) -> Result<ExportSummary, TrainError> {
    if same_file(checkpoint, out) {
        return Err(TrainError::Invalid(format!(
            "--out {} is the checkpoint being exported ({}): give another path; an export never \
             replaces its input",
            out.display(),
            checkpoint.display()
        )));
    }
    let (net, card) = load_model::<B>(checkpoint, device)?;
    if card.provenance.datasets.is_empty() {
        return Err(TrainError::ModelFile {
            path: checkpoint.to_path_buf(),
            message: "the checkpoint has no provenance (no datasets): refusing to export weights \
                      whose origin is unknown"
                .into(),
        });
    }
    let hash = save_model(&net, &card, out)?;
    let (reloaded, reloaded_card) = load_model::<B>(out, device)?;
    let input = || probe_input::<B>(card.input.height, card.input.width, device);
    let same = reloaded_card == card
        && output_values(&net, input())
            .iter()
            .zip(output_values(&reloaded, input()))
            .all(|(a, b)| a.to_bits() == b.to_bits());
    if !same {
        let _ = std::fs::remove_file(out);
        return Err(TrainError::ModelFile {
            path: out.to_path_buf(),
            message: "the written export does not reproduce the checkpoint's outputs; removed"
                .into(),
        });
    }
    Ok(ExportSummary {
        path: out.to_path_buf(),
        hash,
        parameters: net.num_params(),
        card,
    })
}

/// Whether `a` and `b` name one existing file (however spelled, or through a hard link).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(x), Ok(y)) if x == y
    )
}
