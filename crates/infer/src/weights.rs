//! Loading a model file's weights: every tensor checked before burn sees a byte
//! ([`check_weights`]: burn trusts a tensor's dtype, and a file of f16 weights made it panic,
//! one of i32 or u8 weights crash with SIGSEGV), then the network built from the card and every
//! weight loaded ([`load_net`]).
//!
//! Tensor names are the module paths of [`PerceptionNet`] (e.g. `backbone.stem.conv.weight`),
//! f32, in PyTorch's `[out, in, kh, kw]` layout.

use std::path::Path;

use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{bf16, f16};
use percept_model::PerceptionNet;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::card::{card_from_bytes, read_file, Card};
use crate::InferError;

/// Loads a model file: builds the network from its card and loads every weight (a missing or
/// extra tensor, or a shape mismatch, is an error). `C` is the card type to read: a
/// [`DeployCard`](crate::DeployCard) for inference, percept-eval's full `ModelCard` elsewhere.
pub fn load_net<B: Backend, C: Card>(
    path: &Path,
    device: &B::Device,
) -> Result<(PerceptionNet<B>, C), InferError> {
    let bad = |message: String| InferError::ModelFile {
        path: path.to_path_buf(),
        message,
    };
    let bytes = read_file(path)?;
    let card: C = card_from_bytes(&bytes, path)?;
    card.architecture()
        .validate()
        .map_err(|e| bad(e.to_string()))?;
    let bytes = check_weights(bytes, path)?.bytes;
    let mut net = card.architecture().init::<B>(device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = net.load_from(&mut store).map_err(|e| {
        bad(format!(
            "weights do not fit the architecture in the model card: {e}"
        ))
    })?;
    if !result.errors.is_empty() || !result.unused.is_empty() || !result.missing.is_empty() {
        return Err(bad(format!(
            "weights do not fit the architecture: errors {:?}, missing {:?}, unused {:?}",
            result.errors, result.missing, result.unused
        )));
    }
    Ok((net, card))
}

/// A model file's weights as burn may load them: every tensor f32 and finite.
#[derive(Debug)]
pub struct CheckedWeights {
    /// The file as given when every tensor was already f32; otherwise re-serialised with the
    /// converted tensors (same names, shapes and metadata).
    pub bytes: Vec<u8>,
    /// Tensors converted to f32, by name, with their dtype in the file.
    pub converted: Vec<(String, Dtype)>,
}

/// Checks every tensor of the model file `path` (`bytes`) before burn sees it, which trusts a
/// tensor's dtype (f16 weights made it panic, i32 or u8 ones crash with SIGSEGV):
///
/// - the header and each tensor's byte length must agree with its shape (the safetensors
///   parser's own checks);
/// - f32 is loaded as is; f16, bf16 and f64 are legitimate exports of the same weights and are
///   converted to f32, which is logged once per file;
/// - any other dtype (integers, bool, f8) is refused, naming the tensor: its bytes are not
///   weights;
/// - NaN or infinite values (or f64 values beyond f32's range) are refused, naming the tensor
///   and counting them: such weights turn every output into NaN, and there is no use for them
///   that a flag to allow them would serve; the remedy is an earlier checkpoint.
pub fn check_weights(bytes: Vec<u8>, path: &Path) -> Result<CheckedWeights, InferError> {
    let bad = |message: String| InferError::ModelFile {
        path: path.to_path_buf(),
        message,
    };
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let mut tensors = file.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut converted: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
    for (name, view) in &tensors {
        let data = view.data();
        let as_f32: Option<Vec<u8>> = match view.dtype() {
            Dtype::F32 => None,
            Dtype::F16 => Some(to_f32::<2>(data, |b| {
                f16::from_le_bytes([b[0], b[1]]).to_f32()
            })),
            Dtype::BF16 => Some(to_f32::<2>(data, |b| {
                bf16::from_le_bytes([b[0], b[1]]).to_f32()
            })),
            Dtype::F64 => Some(to_f32::<8>(data, |b| {
                f64::from_le_bytes(b.try_into().expect("8-byte chunks")) as f32
            })),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` is {other:?}; model weights are F32 (F16, BF16 and F64 \
                     are converted to F32)"
                )))
            }
        };
        let values = as_f32.as_deref().unwrap_or(data);
        let nonfinite = values
            .chunks_exact(4)
            .filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
            .count();
        if nonfinite > 0 {
            let what = if view.dtype() == Dtype::F64 {
                "NaN, infinite or beyond f32's range"
            } else {
                "NaN or infinite"
            };
            return Err(bad(format!(
                "tensor `{name}` holds {nonfinite} {what} value(s) of {}: the weights are \
                 unusable (a diverged run?); use an earlier checkpoint",
                values.len() / 4
            )));
        }
        if let Some(f32_bytes) = as_f32 {
            converted.push((name.clone(), view.dtype(), f32_bytes));
        }
    }
    if converted.is_empty() {
        drop(tensors);
        drop(file);
        return Ok(CheckedWeights {
            bytes,
            converted: Vec::new(),
        });
    }
    let mut by_dtype = std::collections::BTreeMap::<String, usize>::new();
    for (_, dtype, _) in &converted {
        *by_dtype.entry(format!("{dtype:?}")).or_default() += 1;
    }
    let by_dtype: Vec<String> = by_dtype.iter().map(|(d, n)| format!("{n} {d}")).collect();
    tracing::info!(
        "model file {}: converted {} of {} tensors to F32 ({})",
        path.display(),
        converted.len(),
        tensors.len(),
        by_dtype.join(", ")
    );
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let mut views = Vec::with_capacity(tensors.len());
    let mut next = converted.iter().peekable();
    for (name, view) in tensors {
        match next.peek() {
            Some((n, _, f32_bytes)) if *n == name => {
                let shape = view.shape().to_vec();
                views.push((
                    name,
                    TensorView::new(Dtype::F32, shape, f32_bytes)
                        .map_err(|e| bad(format!("converting to F32: {e}")))?,
                ));
                next.next();
            }
            _ => views.push((name, view)),
        }
    }
    let out = safetensors::serialize(views, header.metadata().clone())
        .map_err(|e| bad(format!("converting to F32: {e}")))?;
    Ok(CheckedWeights {
        bytes: out,
        converted: converted.into_iter().map(|(n, d, _)| (n, d)).collect(),
    })
}

/// Little-endian values of `N` bytes each, converted to little-endian f32 bytes.
fn to_f32<const N: usize>(data: &[u8], convert: impl Fn(&[u8]) -> f32) -> Vec<u8> {
    data.chunks_exact(N)
        .flat_map(|b| convert(b).to_le_bytes())
        .collect()
}
