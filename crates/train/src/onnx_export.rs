//! ONNX export: a checkpoint as an ONNX graph (`percept-onnx`) in fp32, fp16 or INT8.
//!
//! INT8 is calibrated on frames of a dataset the site may process: the residency guard clears
//! the dataset before a frame is read, the network runs on the frames here, and only the
//! measured ranges leave, in the graph's scales and in the provenance of the model card the
//! graph carries (with the dataset's manifest hash, never a frame).
//!
//! Like the safetensors export, the file is written under a temporary name and read back
//! (parsed, its model card and outputs checked) before it replaces anything at `out`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use indicatif::ProgressBar;
use percept_data::{collate, AuditLog, Split};
use percept_eval::model_file::{load_model, DatasetRef, ModelCard, QuantizationRecord};
use percept_model::{Calibrator, PerceptionNet, RangeMethod};
use percept_onnx::{Decode, OnnxOptions, OnnxPrecision};
use serde::Serialize;

use crate::data::open_for_site_logged;
use crate::export::{refuse_unknown_origin, same_file, write_verified};
use crate::TrainError;

/// Metadata key of the model card in an ONNX export (the same JSON as in a model file).
pub const ONNX_CARD_KEY: &str = percept_onnx::MODEL_CARD_KEY;
/// Metadata key of the export record ([`ExportRecord`]).
pub const ONNX_EXPORT_KEY: &str = "percept.export";

/// Calibration frames for an INT8 export.
#[derive(Debug, Clone)]
pub struct CalibrationRequest<'a> {
    pub data: &'a Path,
    pub split: Split,
    /// Frames, spread evenly over the split.
    pub frames: usize,
    pub method: RangeMethod,
    /// Site region the dataset's policy is checked against (default: the model's site).
    pub site: Option<&'a str>,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct OnnxExportRequest<'a> {
    pub precision: OnnxPrecision,
    pub opset: i64,
    pub decode: Decode,
    pub calibration: Option<CalibrationRequest<'a>>,
}

/// How the graph was written, in its `percept.export` metadata.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ExportRecord {
    pub format: String,
    pub precision: OnnxPrecision,
    pub opset: i64,
    pub decode: Decode,
    /// blake3 of the checkpoint it was exported from.
    pub source: String,
    pub input: String,
    pub batch_norm: String,
}

/// What an ONNX export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxExportSummary {
    pub path: PathBuf,
    pub hash: String,
    pub bytes: usize,
    pub nodes: usize,
    pub record: ExportRecord,
    pub card: ModelCard,
}

/// Exports `checkpoint` as ONNX to `out` (see the module docs).
pub fn export_onnx<B: Backend>(
    checkpoint: &Path,
    out: &Path,
    request: &OnnxExportRequest,
    device: &B::Device,
    bar: &ProgressBar,
    log: Option<&mut AuditLog>,
) -> Result<OnnxExportSummary, TrainError> {
    if same_file(checkpoint, out) {
        return Err(TrainError::Invalid(format!(
            "--out {} is the checkpoint being exported: give another path",
            out.display()
        )));
    }
    let (net, mut card) = load_model::<B>(checkpoint, device)?;
    refuse_unknown_origin(&card, checkpoint)?;
    let source = blake3::hash(&std::fs::read(checkpoint).map_err(|e| TrainError::Io {
        path: checkpoint.to_path_buf(),
        source: e,
    })?)
    .to_hex()
    .to_string();
    let (h, w) = (card.input.height, card.input.width);
    let graph = net
        .inference_graph(h, w)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;

    let ranges = match (request.precision, &request.calibration) {
        (OnnxPrecision::Int8, None) => {
            return Err(TrainError::Invalid(
                "--precision int8 needs calibration frames: give --calibration-data DIR (a \
                 dataset this site may process)"
                    .into(),
            ))
        }
        (OnnxPrecision::Int8, Some(c)) => {
            refuse_untrained(&net, &card, checkpoint)?;
            let (ranges, dataset) = calibrate(&net, &card, c, device, bar, log)?;
            let names: Vec<String> = graph.convs().map(|(n, _)| n.name.clone()).collect();
            card.provenance.quantization = Some(QuantizationRecord {
                dataset,
                split: c.split.as_str().to_string(),
                frames: ranges.frames,
                method: ranges.method.to_string(),
                ranges: names
                    .into_iter()
                    .zip(ranges.ranges.iter().copied())
                    .collect(),
            });
            Some(ranges)
        }
        (_, Some(_)) => {
            return Err(TrainError::Invalid(format!(
                "--calibration-data is for --precision int8; a {} export is not calibrated",
                request.precision.name()
            )))
        }
        (_, None) => None,
    };

    let record = ExportRecord {
        format: "onnx".into(),
        precision: request.precision,
        opset: request.opset,
        decode: request.decode,
        source,
        input: format!(
            "images: float32 [batch, 3, {h}, {w}], RGB, letterboxed with grey {} and normalised \
             (pixel / 255 - mean) / std, mean {:?}, std {:?}",
            card.normalization.pad_value, card.normalization.mean, card.normalization.std
        ),
        batch_norm: "folded into the convolutions".into(),
    };
    let options = OnnxOptions {
        opset: request.opset,
        precision: request.precision,
        decode: request.decode,
        decode_options: card.decode,
        ranges,
        metadata: vec![
            (
                ONNX_CARD_KEY.to_string(),
                serde_json::to_string(&card).expect("a model card serialises"),
            ),
            (
                ONNX_EXPORT_KEY.to_string(),
                serde_json::to_string(&record).expect("serialises"),
            ),
        ],
        name: format!("percept-{}", card.architecture.size.name()),
    };
    let bytes = percept_onnx::onnx_bytes(&graph, &options)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let graph_written = percept_onnx::read_model(&bytes).expect("just serialised");

    write_verified(out, &bytes, |written, refused| {
        let read = std::fs::read(written)
            .map_err(|e| refused(format!("the written graph cannot be read back: {e}")))?;
        let model = percept_onnx::read_model(&read)
            .map_err(|e| refused(format!("the written graph does not parse: {e}")))?;
        // Every node, weight and metadata entry (the model card included) as serialised.
        if model != graph_written {
            return Err(refused(
                "the graph read back differs from the one written".into(),
            ));
        }
        Ok(())
    })?;
    Ok(OnnxExportSummary {
        path: out.to_path_buf(),
        hash,
        bytes: bytes.len(),
        nodes: graph_written.graph.node.len(),
        record,
        card,
    })
}

/// Refuses to calibrate a network that never trained: its activation ranges describe random
/// weights, and the scales would mean nothing for the weights it will have.
fn refuse_untrained<B: Backend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    checkpoint: &Path,
) -> Result<(), TrainError> {
    let untouched_norms = net.batch_norms_at_init();
    if card.provenance.steps == 0 || untouched_norms {
        let why = if card.provenance.steps == 0 {
            "its provenance records 0 training steps".to_string()
        } else {
            "its batch norms still hold their initial statistics (mean 0, variance 1)".into()
        };
        return Err(TrainError::ModelFile {
            path: checkpoint.to_path_buf(),
            message: format!(
                "refusing an INT8 export of an untrained model ({why}): calibrated ranges of \
                 untrained weights mean nothing. Train it first, or export --precision fp32 or \
                 fp16"
            ),
        });
    }
    Ok(())
}

/// Runs `net` on `request.frames` frames of the calibration split (cleared by the residency
/// guard first, its decision written to `log`) and returns the ranges and the dataset they
/// came from.
fn calibrate<B: Backend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    request: &CalibrationRequest,
    device: &B::Device,
    bar: &ProgressBar,
    log: Option<&mut AuditLog>,
) -> Result<(percept_model::ActivationRanges, DatasetRef), TrainError> {
    if request.frames == 0 {
        return Err(TrainError::Invalid(
            "--calibration-frames is 0: give at least 1 (e.g. 256)".into(),
        ));
    }
    let site = request.site.unwrap_or(&card.provenance.site_region);
    let dataset = open_for_site_logged(request.data, request.split, site, log)?;
    if dataset.is_empty() {
        return Err(TrainError::Invalid(format!(
            "the {} split of {} has no frames to calibrate on",
            request.split.as_str(),
            request.data.display()
        )));
    }
    let total = dataset.len();
    let frames = request.frames.min(total);
    let indices: Vec<usize> = (0..frames).map(|i| i * total / frames).collect();
    let (w, h) = (card.input.width, card.input.height);
    let mut calibrator = Calibrator::new();
    bar.set_length(frames as u64);
    for chunk in indices.chunks(8) {
        let samples = chunk
            .iter()
            .map(|&i| dataset.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = collate(&samples, w as u32, h as u32);
        let images = Tensor::<B, 1>::from_floats(batch.images.as_slice(), device).reshape([
            batch.batch_size,
            3,
            h,
            w,
        ]);
        calibrator
            .observe(net, images)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        bar.inc(chunk.len() as u64);
    }
    let manifest = dataset.manifest();
    let dataset_ref = DatasetRef {
        name: manifest.name.clone(),
        region: manifest.region.clone(),
        manifest_hash: manifest.hash(),
        signed_by: None,
    };
    Ok((calibrator.ranges(request.method), dataset_ref))
}
