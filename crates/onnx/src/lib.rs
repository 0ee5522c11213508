//! `percept-onnx`: writes percept's [`InferenceGraph`] (batch norm already folded) as an ONNX
//! model that TensorRT, ONNX Runtime and vendors' toolchains read.
//!
//! ## The graph
//!
//! - Input `images`: float32 `[batch, 3, height, width]`, RGB, letterboxed to the model's input
//!   size and normalised as `(pixel / 255 - mean) / std` with the model card's `normalization`
//!   (the metadata carries it). The batch dimension is dynamic.
//! - Raw outputs, float32, the network's own ([`percept_model::PerceptionOutput`]):
//!   `class_logits [batch, anchors, classes]`, `box_logits [batch, anchors, 64]`,
//!   `distances [batch, anchors, 4]` (left, top, right, bottom, input pixels),
//!   `drivable [batch, 1, height, width]` and `lanes [batch, 1, height, width]` logits. A task
//!   switched off has no output.
//! - With [`Decode::Boxes`] (or [`Decode::Nms`]) also `boxes [batch, anchors, 4]` (`x1, y1, x2,
//!   y2` in input pixels, clipped to the input) and `scores [batch, anchors, classes]` (sigmoid).
//! - With [`Decode::Nms`] also `detections [n, 7]`: `batch_index, class, score, x1, y1, x2,
//!   y2` per kept box, from ONNX `NonMaxSuppression` per class, at most `max_detections` per
//!   class and image, score above `score_threshold`, grouped by image then class.
//!
//! Anchor `a` of `anchors` is [`percept_model::anchor_points`]`(height, width)[a]`.
//!
//! ## Precisions
//!
//! - [`OnnxPrecision::Fp32`].
//! - [`OnnxPrecision::Fp16`]: weights and compute in half; the input is cast to half inside the
//!   graph and the raw outputs back to float, so callers feed and read float32 either way.
//! - [`OnnxPrecision::Int8`]: a QDQ graph (what TensorRT's explicit quantisation and ONNX
//!   Runtime's QDQ format read): each convolution's weights stored as int8 with one symmetric
//!   scale per output channel, and its input passed through `QuantizeLinear` /
//!   `DequantizeLinear` with one symmetric per-tensor scale from the calibrated range
//!   (`range / 127`, zero point 0). Everything between convolutions stays float.
//!
//! ## Running a graph
//!
//! With the `runtime` feature, [`runtime::OnnxRuntimeModel`] runs a percept ONNX model in ONNX
//! Runtime on the CPU as a [`percept_model::PerceptionModel`], the trait evaluation and
//! prediction take, so an export is judged exactly as its network is. ONNX Runtime's shared
//! library is opened at run time ([`runtime::find_library`]), not linked.

mod builder;
mod decode;
mod network;
#[cfg(feature = "runtime")]
pub mod runtime;

mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx/mod.rs"));
}

pub use proto::onnx::ModelProto;

use percept_model::{ActivationRanges, DecodeOptions, InferenceGraph};
use protobuf::Message;
use serde::{Deserialize, Serialize};

/// Opsets this writer targets: 13 is the first with per-channel `DequantizeLinear` and the
/// `Softmax`/`Slice` forms used here.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;
/// The default opset.
pub const DEFAULT_OPSET: i64 = 17;

/// Number format of the weights and the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxPrecision {
    Fp32,
    Fp16,
    Int8,
}

impl OnnxPrecision {
    pub fn name(self) -> &'static str {
        match self {
            OnnxPrecision::Fp32 => "fp32",
            OnnxPrecision::Fp16 => "fp16",
            OnnxPrecision::Int8 => "int8",
        }
    }
}

/// How much post-processing the graph does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    /// The raw outputs only; the caller decodes (see the crate docs).
    Raw,
    /// Raw outputs plus `boxes` and `scores`.
    Boxes,
    /// `boxes` and `scores` plus `detections` after `NonMaxSuppression`.
    Nms,
}

impl Decode {
    pub fn name(self) -> &'static str {
        match self {
            Decode::Raw => "raw",
            Decode::Boxes => "boxes",
            Decode::Nms => "nms",
        }
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    /// In [`OPSETS`].
    pub opset: i64,
    pub precision: OnnxPrecision,
    pub decode: Decode,
    /// Thresholds of the in-graph NMS ([`Decode::Nms`]).
    pub decode_options: DecodeOptions,
    /// Calibrated ranges, required for [`OnnxPrecision::Int8`].
    pub ranges: Option<ActivationRanges>,
    /// `metadata_props` of the model (the model card, the export record).
    pub metadata: Vec<(String, String)>,
    /// The graph's name.
    pub name: String,
}

impl OnnxOptions {
    pub fn new(precision: OnnxPrecision) -> Self {
        OnnxOptions {
            opset: DEFAULT_OPSET,
            precision,
            decode: Decode::Boxes,
            decode_options: DecodeOptions::default(),
            ranges: None,
            metadata: Vec::new(),
            name: "percept".into(),
        }
    }
}

/// Why a graph could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{0}")]
    Options(String),
}

/// The ONNX model of `graph`, serialised.
pub fn onnx_bytes(graph: &InferenceGraph, options: &OnnxOptions) -> Result<Vec<u8>, OnnxError> {
    let model = onnx_model(graph, options)?;
    Ok(model
        .write_to_bytes()
        .expect("an in-memory ONNX model serialises"))
}

/// The ONNX model of `graph`.
pub fn onnx_model(graph: &InferenceGraph, options: &OnnxOptions) -> Result<ModelProto, OnnxError> {
    if !OPSETS.contains(&options.opset) {
        return Err(OnnxError::Options(format!(
            "opset {} is not supported: give --opset from {} to {} (default {DEFAULT_OPSET})",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let convs = graph.convs().count();
    let ranges = match (options.precision, &options.ranges) {
        (OnnxPrecision::Int8, None) => {
            return Err(OnnxError::Options(
                "an INT8 graph needs calibrated activation ranges".into(),
            ))
        }
        (OnnxPrecision::Int8, Some(r)) if r.ranges.len() != convs => {
            return Err(OnnxError::Options(format!(
                "the calibration has {} ranges but the graph {convs} convolutions: it was \
                 measured on another network",
                r.ranges.len()
            )))
        }
        (OnnxPrecision::Int8, Some(r)) => Some(r),
        _ => None,
    };
    let mut b = builder::Builder::new(options.opset);
    let raw = network::write_network(&mut b, graph, options.precision, ranges);
    decode::write_outputs(&mut b, graph, &raw, options);
    Ok(b.finish(&options.name, &options.metadata))
}

/// Reads an ONNX model back (to verify a written file).
pub fn read_model(bytes: &[u8]) -> Result<ModelProto, String> {
    ModelProto::parse_from_bytes(bytes).map_err(|e| e.to_string())
}

/// The `metadata_props` of a model, in order.
pub fn metadata(model: &ModelProto) -> Vec<(String, String)> {
    model
        .metadata_props
        .iter()
        .map(|p| (p.key().to_string(), p.value().to_string()))
        .collect()
}

/// `metadata_props` key of the model card: the JSON a safetensors model file carries under the
/// same key (percept-eval's `MODEL_CARD_KEY`).
pub const MODEL_CARD_KEY: &str = "percept.model_card";

/// The model card JSON of a percept ONNX model; `None` when it has none (not a percept export).
pub fn model_card_json(model: &ModelProto) -> Option<&str> {
    model
        .metadata_props
        .iter()
        .find(|p| p.key() == MODEL_CARD_KEY)
        .map(|p| p.value())
}

/// Whether `bytes` are an ONNX model: they parse as a `ModelProto` whose graph has nodes (bytes
/// of another format rarely parse as protobuf at all, and then not into a graph).
pub fn is_onnx(bytes: &[u8]) -> bool {
    read_model(bytes).is_ok_and(|m| m.graph.as_ref().is_some_and(|g| !g.node.is_empty()))
}

/// Names of the graph's outputs, in order.
pub fn output_names(model: &ModelProto) -> Vec<String> {
    model
        .graph
        .output
        .iter()
        .map(|o| o.name().to_string())
        .collect()
}
