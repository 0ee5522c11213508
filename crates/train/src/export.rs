//! Export: a checkpoint becomes a deployable model file, verified before it replaces anything:
//! it is written under a temporary name, read back and run, and renamed to `--out` only if it
//! reproduces the checkpoint's outputs bit for bit and they are finite. A failed export leaves
//! `--out` as it was (absent, or the file that was there).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use percept_model::PerceptionNet;
use serde::Serialize;

use crate::TrainError;
use percept_data::atomic_file::{AtomicFile, VerifiedCommitError};
use percept_eval::model_file::{load_model, model_bytes, ModelCard};

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
        parts.push(d.box_logits.flatten(0, 2));
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

/// Exports `checkpoint` to `out`: loads it, writes the model file to a temporary name, loads
/// that back and checks that it gives the checkpoint's outputs bit for bit, all finite; only
/// then is it renamed to `out`. Otherwise `out` is left as it was and the error says why.
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
    refuse_unknown_origin(&card, checkpoint)?;
    let bytes = model_bytes(&net, &card, out)?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    write_verified(out, &bytes, |written, refused| {
        let (reloaded, reloaded_card) = load_model::<B>(written, device)
            .map_err(|e| refused(format!("the written export cannot be read back: {e}")))?;
        if reloaded_card != card {
            return Err(refused(
                "the written export's model card differs from the checkpoint's".into(),
            ));
        }
        let input = || probe_input::<B>(card.input.height, card.input.width, device);
        let want = output_values(&net, input());
        let got = output_values(&reloaded, input());
        let nonfinite = got.iter().filter(|v| !v.is_finite()).count();
        if nonfinite > 0 {
            // Weights can be finite and still overflow: such a model is no use deployed.
            return Err(refused(format!(
                "{nonfinite} of the {} outputs on a probe input are not finite (NaN or \
                 infinite): the checkpoint's weights overflow; export an earlier checkpoint",
                got.len()
            )));
        }
        if want.len() != got.len()
            || want
                .iter()
                .zip(&got)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(refused(
                "the written export does not reproduce the checkpoint's outputs".into(),
            ));
        }
        Ok(())
    })?;
    Ok(ExportSummary {
        path: out.to_path_buf(),
        hash,
        parameters: net.num_params(),
        card,
    })
}

/// Writes `bytes` to `out` under a temporary name, calls `verify` with it (and `refused`, which
/// words an error: the check's message and that nothing was written), and renames it to `out`
/// only when the check passes; otherwise `out` is left as it was.
pub(crate) fn write_verified(
    out: &Path,
    bytes: &[u8],
    verify: impl FnOnce(&Path, &dyn Fn(String) -> TrainError) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let refused = |message: String| TrainError::ModelFile {
        path: out.to_path_buf(),
        message: format!("{message}; nothing was written to {}", out.display()),
    };
    let mut file = AtomicFile::create(out)?;
    file.write_all(bytes)?;
    match file.commit_verified(|written| verify(written, &refused)) {
        Ok(()) => Ok(()),
        Err(VerifiedCommitError::Verify(e)) => Err(e),
        Err(VerifiedCommitError::Write(e)) => Err(e.into()),
    }
}

/// Refuses weights whose provenance names no dataset: no export leaves without its origin.
pub(crate) fn refuse_unknown_origin(card: &ModelCard, checkpoint: &Path) -> Result<(), TrainError> {
    if card.provenance.datasets.is_empty() {
        return Err(TrainError::ModelFile {
            path: checkpoint.to_path_buf(),
            message: "the checkpoint has no provenance (no datasets): refusing to export weights \
                      whose origin is unknown"
                .into(),
        });
    }
    Ok(())
}

/// Whether `a` and `b` name one existing file (however spelled, or through a hard link).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
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
