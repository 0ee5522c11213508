//! The model card: what an inference stack needs besides the weights, stored as JSON under
//! [`MODEL_CARD_KEY`] in the safetensors metadata of every percept model file (checkpoints and
//! exports). Inference reads only [`DeployCard`]'s fields; percept-eval's full `ModelCard` adds
//! provenance and evaluation settings and reads the same JSON. Both are validated here, once
//! ([`card_from_bytes`]), through [`Card`].

use std::path::Path;

use percept_model::{DecodeOptions, PerceptionNetConfig};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::input::{InputSize, Normalization, MAX_IMAGE_PIXELS};
use crate::InferError;

/// Metadata key of the model card.
pub const MODEL_CARD_KEY: &str = "percept.model_card";
/// Current model file format.
pub const MODEL_FORMAT: &str = "percept-model/1";

/// What any reader of a model card needs from it: the network to build, its classes, and how
/// frames go in and detections come out.
pub trait Card: DeserializeOwned {
    fn format(&self) -> &str;
    fn architecture(&self) -> &PerceptionNetConfig;
    fn classes(&self) -> &[String];
    fn input(&self) -> &InputSize;
    fn normalization(&self) -> &Normalization;
    fn decode(&self) -> &DecodeOptions;
}

/// The deployment fields of a model card. Unknown fields (provenance, evaluation settings) are
/// ignored: an inference stack needs none of them, and a card that gains fields stays loadable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeployCard {
    pub format: String,
    pub architecture: PerceptionNetConfig,
    /// Class names, by class index.
    pub classes: Vec<String>,
    pub input: InputSize,
    pub normalization: Normalization,
    pub decode: DecodeOptions,
}

impl Card for DeployCard {
    fn format(&self) -> &str {
        &self.format
    }
    fn architecture(&self) -> &PerceptionNetConfig {
        &self.architecture
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn input(&self) -> &InputSize {
        &self.input
    }
    fn normalization(&self) -> &Normalization {
        &self.normalization
    }
    fn decode(&self) -> &DecodeOptions {
        &self.decode
    }
}

/// Reads a whole file, naming it on failure.
pub fn read_file(path: &Path) -> Result<Vec<u8>, InferError> {
    std::fs::read(path).map_err(|e| InferError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Reads the model card of a model file without loading the weights.
pub fn read_card<C: Card>(path: &Path) -> Result<C, InferError> {
    card_from_bytes(&read_file(path)?, path)
}

/// The model card of the model file `path` (`bytes`), checked: the format is this crate's, the
/// class list matches the architecture, and the input size is one the network takes and a
/// reader can afford.
pub fn card_from_bytes<C: Card>(bytes: &[u8], path: &Path) -> Result<C, InferError> {
    let bad = |message: String| InferError::ModelFile {
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
    card_from_json(json, path)
}

/// The model card `json` of the model file `path` (a safetensors file's, or an ONNX export's
/// metadata), checked as [`card_from_bytes`] checks it.
pub fn card_from_json<C: Card>(json: &str, path: &Path) -> Result<C, InferError> {
    let bad = |message: String| InferError::ModelFile {
        path: path.to_path_buf(),
        message,
    };
    let card: C = serde_json::from_str(json)
        .map_err(|e| bad(format!("the model card is not valid ({e})")))?;
    if card.format() != MODEL_FORMAT {
        return Err(bad(format!(
            "model format {:?} is not supported; this percept reads {MODEL_FORMAT:?}",
            card.format()
        )));
    }
    // Bounds what a forged card can make a reader allocate: the network grows with the class
    // count, which a real card lists class by class, and every frame is letterboxed to `input`.
    if card.classes().len() != card.architecture().num_classes {
        return Err(bad(format!(
            "the model card lists {} classes but its architecture has num_classes = {}",
            card.classes().len(),
            card.architecture().num_classes
        )));
    }
    let (w, h) = (card.input().width, card.input().height);
    percept_model::check_input_size(h, w).map_err(|e| bad(format!("in the model card: {e}")))?;
    if (w as u64).saturating_mul(h as u64) > MAX_IMAGE_PIXELS {
        return Err(bad(format!(
            "the model card's input size {w}x{h} is over {MAX_IMAGE_PIXELS} pixels"
        )));
    }
    Ok(card)
}
