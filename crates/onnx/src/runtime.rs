//! A percept ONNX graph run by ONNX Runtime, as a [`PerceptionModel`]: evaluation and
//! prediction judge an export exactly as they judge the network it came from.
//!
//! ONNX Runtime's shared library is opened at run time (ort's `load-dynamic`), from
//! `ORT_DYLIB_PATH` when set, otherwise from the `onnxruntime` Python package (`pip install
//! onnxruntime` ships `capi/libonnxruntime.so.*`), so building percept needs neither.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use burn::prelude::*;
use ort::environment::Environment;
use ort::session::Session;
use percept_model::{DetectionOutput, OutputKind, PerceptionModel, PerceptionOutput, Tasks};

use crate::network::INPUT;
use crate::{model_card_json, MODEL_CARD_KEY};

/// Environment variable naming ONNX Runtime's shared library (ort's own).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// Why an ONNX model could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// ONNX Runtime's shared library was not found or would not load.
    #[error("ONNX Runtime: {0}")]
    Library(String),
    #[error("ONNX model {}: {message}", path.display())]
    Model { path: PathBuf, message: String },
}

/// ONNX Runtime's shared library: `ORT_DYLIB_PATH` when set, otherwise the one in the
/// `onnxruntime` Python package that `python3` imports. The error says how to get either.
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RuntimeError::Library(format!(
                "{LIBRARY_ENV}={} is not a file: point it at ONNX Runtime's shared library \
                 ({}onnxruntime{}*, e.g. the one in the onnxruntime Python package's capi/)",
                path.display(),
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            )))
        };
    }
    let not_found = |why: String| {
        RuntimeError::Library(format!(
            "its shared library was not found ({why}): install ONNX Runtime's Python package \
             (`python3 -m pip install onnxruntime`), whose capi/ directory percept looks in, or \
             set {LIBRARY_ENV} to the library ({}onnxruntime{}*)",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ))
    };
    let output = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .output()
        .map_err(|e| not_found(format!("python3 could not be run: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(not_found(format!(
            "python3 could not import onnxruntime: {last}"
        )));
    }
    let capi = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("capi");
    library_in(&capi).ok_or_else(|| {
        not_found(format!(
            "the onnxruntime package's {} has no {}onnxruntime{}*",
            capi.display(),
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ))
    })
}

/// The ONNX Runtime library in `dir`: `libonnxruntime.so.1.32.0` (Linux),
/// `libonnxruntime.1.32.0.dylib` (macOS), `onnxruntime.dll`; not the providers' libraries
/// beside it (`libonnxruntime_providers_shared.so`).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let stem = format!("{}onnxruntime.", std::env::consts::DLL_PREFIX);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&stem) && n.contains(std::env::consts::DLL_SUFFIX))
        })
        .collect();
    // Sorted, so the choice does not depend on the directory's order.
    found.sort();
    found.pop()
}

/// The process's ONNX Runtime environment: ONNX Runtime allows one per process, and ort loads
/// the library once, so every model shares it. A failed attempt is not kept (a later load may
/// find a library installed since).
fn environment() -> Result<Environment, RuntimeError> {
    static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);
    let mut slot = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let library = find_library()?;
    let env = ort::init_from(&library)
        .map_err(|e| RuntimeError::Library(format!("{e} (from {LIBRARY_ENV} or python3)")))?
        .with_name("percept")
        // Models may be trained on data that must stay where it is; nothing is reported out.
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::Library(format!("{} loaded, but: {e}", library.display())))?;
    *slot = Some(env.clone());
    Ok(env)
}

/// One raw output of a run: which, its shape, its values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutput {
    pub kind: OutputKind,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A percept ONNX model in an ONNX Runtime session on the CPU.
#[derive(Debug)]
pub struct OnnxRuntimeModel {
    path: PathBuf,
    card_json: String,
    tasks: Tasks,
    /// ort's `run` takes `&mut self` (some of ONNX Runtime's allocators are not thread
    /// safe); [`PerceptionModel::perceive`] takes `&self`.
    session: Mutex<Session>,
}

impl OnnxRuntimeModel {
    /// Loads the percept ONNX model `path` into ONNX Runtime with `threads` intra-op threads
    /// (0: ONNX Runtime's default, one per core). The model must carry a model card
    /// ([`MODEL_CARD_KEY`]) and have the input and raw outputs of the crate docs.
    pub fn load(path: &Path, threads: usize) -> Result<OnnxRuntimeModel, RuntimeError> {
        let bad = |message: String| RuntimeError::Model {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("could not be read: {e}")))?;
        let model = crate::read_model(&bytes).map_err(|e| {
            bad(format!(
                "not an ONNX model (its protobuf does not parse: {e})"
            ))
        })?;
        let card_json = model_card_json(&model)
            .ok_or_else(|| {
                bad(format!(
                    "no `{MODEL_CARD_KEY}` metadata: not a percept export (export one with \
                     `percept export --format onnx`)"
                ))
            })?
            .to_string();
        let inputs: Vec<&str> = model.graph.input.iter().map(|i| i.name()).collect();
        if inputs != [INPUT] {
            return Err(bad(format!(
                "its inputs are [{}]; a percept graph has the one input `{INPUT}`",
                inputs.join(", ")
            )));
        }
        let outputs = crate::output_names(&model);
        let has = |kind: OutputKind| outputs.iter().any(|o| o == kind.name());
        let detection = [
            OutputKind::ClassLogits,
            OutputKind::BoxLogits,
            OutputKind::Distances,
        ];
        let tasks = Tasks {
            detection: detection.iter().all(|&k| has(k)),
            drivable: has(OutputKind::Drivable),
            lanes: has(OutputKind::Lanes),
        };
        if detection.iter().any(|&k| has(k)) && !tasks.detection {
            return Err(bad(format!(
                "its outputs [{}] have only part of detection's `class_logits`, `box_logits` \
                 and `distances`",
                outputs.join(", ")
            )));
        }
        if !(tasks.detection || tasks.drivable || tasks.lanes) {
            return Err(bad(format!(
                "its outputs [{}] include none of percept's raw outputs (`class_logits`, \
                 `box_logits`, `distances`, `drivable`, `lanes`)",
                outputs.join(", ")
            )));
        }
        let env = environment()?;
        let session = Session::builder(&env)
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            .and_then(|mut b| b.commit_from_memory(&bytes))
            .map_err(|e| bad(format!("ONNX Runtime could not load it: {e}")))?;
        Ok(OnnxRuntimeModel {
            path: path.to_path_buf(),
            card_json,
            tasks,
            session: Mutex::new(session),
        })
    }

    /// The model card, as the JSON stored in the model (parse it as a model file's card).
    pub fn card_json(&self) -> &str {
        &self.card_json
    }

    /// The tasks the graph has outputs for.
    pub fn tasks(&self) -> Tasks {
        self.tasks
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The graph's raw outputs for `images` (`[batch, 3, height, width]` float32, row-major),
    /// read by output name.
    pub fn run(&self, images: Vec<f32>, shape: [usize; 4]) -> Result<Vec<RawOutput>, RuntimeError> {
        let bad = |message: String| RuntimeError::Model {
            path: self.path.clone(),
            message,
        };
        let input = ort::value::Tensor::from_array((shape, images))
            .map_err(|e| bad(format!("the input could not be made: {e}")))?;
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(ort::inputs![INPUT => input])
            .map_err(|e| bad(format!("ONNX Runtime failed on a {shape:?} input: {e}")))?;
        let kinds = [
            OutputKind::ClassLogits,
            OutputKind::BoxLogits,
            OutputKind::Distances,
            OutputKind::Drivable,
            OutputKind::Lanes,
        ];
        kinds
            .into_iter()
            .filter_map(|kind| outputs.get(kind.name()).map(|v| (kind, v)))
            .map(|(kind, value)| {
                let (dims, values) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| bad(format!("output `{}`: {e}", kind.name())))?;
                Ok(RawOutput {
                    kind,
                    shape: dims.iter().map(|&d| d as usize).collect(),
                    values: values.to_vec(),
                })
            })
            .collect()
    }
}

impl<B: Backend> PerceptionModel<B> for OnnxRuntimeModel {
    /// Copies `images` to the host, runs the graph, and puts its outputs on `images`' device.
    ///
    /// # Panics
    /// When ONNX Runtime fails on the input (the trait has no error path): the message names
    /// the model file and the input's shape.
    fn perceive(&self, images: Tensor<B, 4>) -> PerceptionOutput<B> {
        let device = images.device();
        let shape = images.dims();
        let values = images
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        let mut outputs = self.run(values, shape).unwrap_or_else(|e| panic!("{e}"));
        let mut take = |kind: OutputKind| {
            let i = outputs.iter().position(|o| o.kind == kind)?;
            let output = outputs.swap_remove(i);
            Some(TensorData::new(output.values, output.shape))
        };
        let class_logits = take(OutputKind::ClassLogits);
        let box_logits = take(OutputKind::BoxLogits);
        let distances = take(OutputKind::Distances);
        let drivable = take(OutputKind::Drivable);
        let lanes = take(OutputKind::Lanes);
        let detection = match (class_logits, box_logits, distances) {
            (Some(c), Some(b), Some(d)) => Some(DetectionOutput {
                class_logits: Tensor::from_data(c, &device),
                box_logits: Tensor::from_data(b, &device),
                distances: Tensor::from_data(d, &device),
            }),
            _ => None,
        };
        PerceptionOutput {
            detection,
            drivable: drivable.map(|d| Tensor::from_data(d, &device)),
            lanes: lanes.map(|d| Tensor::from_data(d, &device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_picked_from_a_capi_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
        for name in [
            format!("{prefix}onnxruntime_providers_shared{suffix}"),
            "__init__.py".to_string(),
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(library_in(dir.path()), None);
        let library = dir
            .path()
            .join(format!("{prefix}onnxruntime{suffix}.1.32.0"));
        std::fs::write(&library, b"").unwrap();
        assert_eq!(library_in(dir.path()), Some(library));
    }
}
