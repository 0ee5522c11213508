//! `percept eval` and `percept predict` on an ONNX export: the graph runs in ONNX Runtime (on
//! the CPU) and is judged by the same evaluator and prediction path as the network itself.
//!
//! A model is taken for ONNX by its `.onnx` extension or by its content (an ONNX protobuf
//! with a graph); anything else is a safetensors model file. Without the `onnxruntime` feature
//! an ONNX model is refused, saying how to build percept with it.

use std::io::Read;
use std::path::Path;

use percept_eval::model_file::ModelCard;
use percept_train::backend::DeviceSpec;
use percept_train::TrainError;

#[cfg(feature = "onnxruntime")]
pub use percept_onnx::runtime::OnnxRuntimeModel;

/// Without the `onnxruntime` feature no ONNX model can be loaded ([`load_if_onnx`] refuses
/// one), so this type has no values; it keeps the commands' code the same in both builds.
#[cfg(not(feature = "onnxruntime"))]
#[derive(Debug)]
pub enum OnnxRuntimeModel {}

#[cfg(not(feature = "onnxruntime"))]
impl<B: burn::prelude::Backend> percept_model::PerceptionModel<B> for OnnxRuntimeModel {
    fn perceive(&self, _images: burn::prelude::Tensor<B, 4>) -> percept_model::PerceptionOutput<B> {
        match *self {}
    }
}

/// An ONNX export loaded for `percept eval` / `percept predict`, with its model card.
pub type OnnxModel = (OnnxRuntimeModel, ModelCard);

/// Whether the model file `path` is an ONNX model: its extension is `.onnx`, or it is not a
/// safetensors file (whose header length is followed by its JSON header's `{`) and its bytes
/// parse as an ONNX graph.
pub fn is_onnx(path: &Path) -> Result<bool, TrainError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        return Ok(true);
    }
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(9);
    file.by_ref().take(9).read_to_end(&mut head).map_err(io)?;
    if head.get(8) == Some(&b'{') {
        return Ok(false);
    }
    file.read_to_end(&mut head).map_err(io)?;
    Ok(percept_onnx::is_onnx(&head))
}

/// The model `path` loaded into ONNX Runtime when it is an ONNX model (`None`: a safetensors
/// model file, for the usual path). An ONNX model runs on the CPU only: any other `device` is
/// refused, as is an ONNX model that is not a percept export (no model card).
pub fn load_if_onnx(path: &Path, device: DeviceSpec) -> Result<Option<OnnxModel>, TrainError> {
    if !is_onnx(path)? {
        return Ok(None);
    }
    if device != DeviceSpec::Cpu {
        return Err(TrainError::Device(format!(
            "--device {}: {} is an ONNX model, which percept runs in ONNX Runtime on the CPU; \
             give --device cpu (or the safetensors checkpoint it was exported from, for {0})",
            device_name(device),
            path.display()
        )));
    }
    load(path).map(Some)
}

fn device_name(device: DeviceSpec) -> String {
    match device {
        DeviceSpec::Cpu => "cpu".into(),
        DeviceSpec::Wgpu => "wgpu".into(),
        DeviceSpec::Cuda(i) => format!("cuda:{i}"),
    }
}

#[cfg(feature = "onnxruntime")]
fn load(path: &Path) -> Result<OnnxModel, TrainError> {
    use percept_eval::model_file::card_from_json;
    use percept_onnx::runtime::RuntimeError;
    // One intra-op thread per core, as the CPU backend uses them.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = OnnxRuntimeModel::load(path, threads).map_err(|e| match e {
        RuntimeError::Model { path, message } => TrainError::ModelFile { path, message },
        RuntimeError::Library(message) => TrainError::ModelFile {
            path: path.to_path_buf(),
            message: format!("an ONNX model needs ONNX Runtime: {message}"),
        },
    })?;
    let card = card_from_json(model.card_json(), path)?;
    let (built, graph) = (card.architecture.tasks, model.tasks());
    if built != graph {
        return Err(TrainError::ModelFile {
            path: path.to_path_buf(),
            message: format!(
                "its model card's tasks ({built:?}) differ from its graph's outputs ({graph:?}): \
                 the card belongs to another network"
            ),
        });
    }
    Ok((model, card))
}

#[cfg(not(feature = "onnxruntime"))]
fn load(path: &Path) -> Result<OnnxModel, TrainError> {
    Err(TrainError::ModelFile {
        path: path.to_path_buf(),
        message: "an ONNX model, and this percept was built without ONNX Runtime: build it with \
                  the `onnxruntime` feature (on by default)"
            .into(),
    })
}
