//! The model file: safetensors weights plus a model card in the safetensors metadata, so an
//! inference stack needs nothing else. Checkpoints and exports share the format.
//!
//! Metadata keys: `percept.model_card` (JSON of [`ModelCard`]), plus burn's own `format`,
//! `producer` and `version`. Tensor names are the module paths of [`PerceptionNet`]
//! (e.g. `backbone.stem.conv.weight`), f32, in PyTorch's `[out, in, kh, kw]` layout.

use std::path::Path;

use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use percept_model::{DecodeOptions, PerceptionNet, PerceptionNetConfig};
use serde::{Deserialize, Serialize};

use crate::metrics::MetricResolution;
use crate::EvalError;
use percept_data::write_atomic;

/// The network input in pixels (both sides multiples of 32); frames are letterboxed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSize {
    pub width: usize,
    pub height: usize,
}

/// Metadata key of the model card.
pub const MODEL_CARD_KEY: &str = "percept.model_card";
/// Current model file format.
pub const MODEL_FORMAT: &str = "percept-model/1";

/// Input normalisation: `(pixel / 255 - mean) / std` per RGB channel, after letterboxing to
/// the input size with `pad_value` grey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_value: u8,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            mean: percept_data::NORM_MEAN,
            std: percept_data::NORM_STD,
            pad_value: 114,
        }
    }
}

/// A dataset that contributed to the weights, by manifest hash; never sample data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    pub name: String,
    pub region: String,
    pub manifest_hash: String,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub site_region: String,
    pub site_name: String,
    pub datasets: Vec<DatasetRef>,
    /// Regions whose data trained the weights, sorted, unique.
    pub regions: Vec<String>,
    /// blake3 of the resolved run config.
    pub config_hash: String,
    /// blake3 of the checkpoint a fine-tune started from.
    pub base_checkpoint: Option<String>,
    pub steps: usize,
    /// Head of the run's audit log when the weights were written: ties the file to the log
    /// that records which data trained it (`percept audit verify` checks it).
    #[serde(default)]
    pub audit_head: Option<percept_data::AuditHead>,
    pub percept_version: String,
}

/// Everything an inference stack needs besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub format: String,
    pub architecture: PerceptionNetConfig,
    pub classes: Vec<String>,
    pub input: InputSize,
    pub normalization: Normalization,
    pub decode: DecodeOptions,
    /// Where `percept eval` computes metrics unless told otherwise (the run config's
    /// `eval.resolution`).
    #[serde(default)]
    pub eval_resolution: MetricResolution,
    pub provenance: Provenance,
}

/// Writes `net` and `card` to `path` atomically; returns the file's blake3.
pub fn save_model<B: Backend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    path: &Path,
) -> Result<String, EvalError> {
    let card_json = serde_json::to_string(card).expect("a model card serialises");
    let mut store = SafetensorsStore::from_bytes(None).metadata(MODEL_CARD_KEY, card_json);
    net.save_into(&mut store)
        .map_err(|e| EvalError::ModelFile {
            path: path.to_path_buf(),
            message: format!("could not serialise the weights: {e}"),
        })?;
    let bytes = store.get_bytes().map_err(|e| EvalError::ModelFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// Reads the model card of a model file without loading the weights.
pub fn read_model_card(path: &Path) -> Result<ModelCard, EvalError> {
    let bytes = read(path)?;
    card_from_bytes(&bytes, path)
}

fn read(path: &Path) -> Result<Vec<u8>, EvalError> {
    std::fs::read(path).map_err(|e| EvalError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn card_from_bytes(bytes: &[u8], path: &Path) -> Result<ModelCard, EvalError> {
    let bad = |message: String| EvalError::ModelFile {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(MODEL_CARD_KEY))
        .ok_or_else(|| {
            bad(format!(
                "no `{MODEL_CARD_KEY}` metadata: not a percept checkpoint or export"
            ))
        })?;
    let card: ModelCard = serde_json::from_str(json)
        .map_err(|e| bad(format!("the model card is not valid ({e})")))?;
    if card.format != MODEL_FORMAT {
        return Err(bad(format!(
            "model format {:?} is not supported; this percept reads {MODEL_FORMAT:?}",
            card.format
        )));
    }
    Ok(card)
}

/// Loads a model file: builds the network from its card and loads every weight (a missing or
/// extra tensor, or a shape mismatch, is an error).
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(PerceptionNet<B>, ModelCard), EvalError> {
    let bytes = read(path)?;
    let card = card_from_bytes(&bytes, path)?;
    card.architecture
        .validate()
        .map_err(|e| EvalError::ModelFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut net = card.architecture.init::<B>(device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = net
        .load_from(&mut store)
        .map_err(|e| EvalError::ModelFile {
            path: path.to_path_buf(),
            message: format!("weights do not fit the architecture in the model card: {e}"),
        })?;
    if !result.errors.is_empty() || !result.unused.is_empty() || !result.missing.is_empty() {
        return Err(EvalError::ModelFile {
            path: path.to_path_buf(),
            message: format!(
                "weights do not fit the architecture: errors {:?}, missing {:?}, unused {:?}",
                result.errors, result.missing, result.unused
            ),
        });
    }
    Ok((net, card))
}

/// What [`load_matching`] loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    /// The file's blake3.
    pub hash: String,
    pub card: ModelCard,
    /// Tensors loaded (name and shape matched).
    pub loaded: usize,
    /// Tensors of the network left at their initial values (no tensor of that name and shape
    /// in the file).
    pub kept: Vec<String>,
}

/// Loads every tensor of model file `path` whose name and shape match one of `net`'s; the rest
/// of `net` is left as it is. At least one tensor must match.
pub fn load_matching<B: Backend>(
    net: PerceptionNet<B>,
    path: &Path,
) -> Result<(PerceptionNet<B>, InitReport), EvalError> {
    let bytes = read(path)?;
    let card = card_from_bytes(&bytes, path)?;
    let bad = |message: String| EvalError::ModelFile {
        path: path.to_path_buf(),
        message,
    };
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let shapes: std::collections::HashMap<String, Vec<usize>> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let mut matched = Vec::new();
    let mut kept = Vec::new();
    for p in percept_model::params::list_params(&net) {
        if shapes.get(&p.path) == Some(&p.dims) {
            matched.push(p.path);
        } else {
            kept.push(p.path);
        }
    }
    if matched.is_empty() {
        return Err(bad(format!(
            "no tensor has the name and shape of one of this network's (the file holds a {} \
             network): give a percept model of the run's model.size",
            card.architecture.size.name()
        )));
    }
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let loaded = matched.len();
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_full_paths(matched)
        .allow_partial(true);
    let mut net = net;
    let result = net
        .load_from(&mut store)
        .map_err(|e| bad(format!("could not load its weights: {e}")))?;
    if !result.errors.is_empty() {
        return Err(bad(format!(
            "could not load its weights: {:?}",
            result.errors
        )));
    }
    Ok((
        net,
        InitReport {
            hash,
            card,
            loaded,
            kept,
        },
    ))
}
