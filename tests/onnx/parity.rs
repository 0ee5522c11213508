//! `percept export --format onnx` checked in ONNX Runtime (tests/onnx/parity.py): raw outputs
//! against percept's on the same input, fp32 within 1e-4, fp16 and INT8 within the tolerances
//! measured below; in-graph NMS against percept's decoding as sets; every task switched off in
//! turn; `--opset 13`. Plus the refusals that need no runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::Distribution;
use percept::eval::model_file::{save_model, DatasetRef, ModelCard};
use percept::model::{decode_detections, DecodeOptions, PerceptionNet, PerceptionNetConfig, Tasks};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{model_card, percept, provenance, synth, H, W};

/// Max |ONNX Runtime - percept| allowed per precision on raw outputs (logits, distances in
/// pixels). fp32: the bound (measured: 6e-5 on distances, 1e-6 on logits). fp16 and
/// INT8: measured on this test's network (parity.py prints them): fp16 0.062 px on distances,
/// 0.005 on logits; INT8 0.089 px on distances, 0.004 on logits; bounds with headroom. What
/// they cost in accuracy on a trained model is in the README (benches/onnx/precision.sh).
const FP32_TOLERANCE: f64 = 1e-4;
const FP16_TOLERANCE: f64 = 0.1;
const INT8_TOLERANCE: f64 = 0.25;

/// Draws batch-norm statistics and affine parameters far from their initial values, so a
/// wrong fold cannot pass for a right one.
struct PerturbNorms {
    path: Vec<String>,
    rng: ChaCha8Rng,
}

impl<B: Backend> ModuleMapper<B> for PerturbNorms {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (low, high) = match self.path.last().map(String::as_str) {
            Some("running_mean") => (-0.5, 0.5),
            Some("running_var") => (0.5, 2.0),
            Some("gamma") => (0.5, 1.5),
            Some("beta") => (-0.2, 0.2),
            _ => return param,
        };
        let value = param.val();
        let n = value.shape().num_elements();
        let values: Vec<f32> = (0..n).map(|_| self.rng.random_range(low..high)).collect();
        let device = value.device();
        let new = Tensor::<B, 1>::from_floats(values.as_slice(), &device).reshape(value.shape());
        param.map(|_| new)
    }
}

/// A seeded nano network of `tasks` whose batch norms look trained ([`PerturbNorms`]).
pub(crate) fn network(tasks: Tasks, classes: usize, seed: u64) -> PerceptionNet<Flex> {
    let mut config = PerceptionNetConfig::new(percept::model::ModelSize::Nano, classes);
    config.tasks = tasks;
    let net = config.init_seeded::<Flex>(seed, &Default::default());
    net.map(&mut PerturbNorms {
        path: Vec::new(),
        rng: ChaCha8Rng::seed_from_u64(seed),
    })
}

fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

fn host<const D: usize>(t: Tensor<Flex, D>) -> (Vec<usize>, Vec<f32>) {
    (t.dims().to_vec(), t.into_data().to_vec().unwrap())
}

/// The card of `net`: trained (100 steps, a dataset), at a DE site.
fn trained_card(classes: &[String], tasks: Tasks) -> ModelCard {
    let mut p = provenance("DE", "site-de", &["DE"], 100);
    p.datasets.push(DatasetRef {
        name: "test-DE".into(),
        region: "DE".into(),
        manifest_hash: "1".repeat(64),
        signed_by: None,
    });
    let mut card = model_card(classes, p);
    card.architecture.tasks = tasks;
    card
}

/// Writes percept's outputs of `net` on `input` as `<model>.<output>.npy` (and its detections)
/// into `dir`; returns the output names.
fn write_outputs(
    dir: &Path,
    model: &str,
    net: &PerceptionNet<Flex>,
    input: Tensor<Flex, 4>,
    decode: &DecodeOptions,
) -> Vec<&'static str> {
    let out = net.forward(input);
    let mut names = Vec::new();
    let mut save = |name: &'static str, (shape, values): (Vec<usize>, Vec<f32>)| {
        write_npy(&dir.join(format!("{model}.{name}.npy")), &shape, &values);
        names.push(name);
    };
    if let Some(d) = &out.detection {
        save("class_logits", host(d.class_logits.clone()));
        save("box_logits", host(d.box_logits.clone()));
        save("distances", host(d.distances.clone()));
        let rows: Vec<[f32; 7]> = decode_detections(d, H as usize, W as usize, decode)
            .iter()
            .enumerate()
            .flat_map(|(image, dets)| {
                dets.iter().map(move |d| {
                    let [x1, y1, x2, y2] = d.bbox;
                    [image as f32, d.class as f32, d.score, x1, y1, x2, y2]
                })
            })
            .collect();
        std::fs::write(
            dir.join(format!("{model}.detections.json")),
            serde_json::to_string(&rows).unwrap(),
        )
        .unwrap();
    }
    if let Some(m) = out.drivable {
        save("drivable", host(m));
    }
    if let Some(m) = out.lanes {
        save("lanes", host(m));
    }
    names
}

/// Runs parity.py on `dir`; `None` when onnx/onnxruntime are missing and CI does not require
/// them.
fn run_parity(dir: &Path) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/parity.py");
    let out = Command::new("python3").arg(&script).arg(dir).output();
    let required = std::env::var("PERCEPT_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1");
    let out = match out {
        Ok(out) => out,
        Err(e) if !required => {
            eprintln!("skipped: no python3 ({e})");
            return None;
        }
        Err(e) => panic!("python3: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && !required {
        eprintln!("skipped: {stdout}");
        return None;
    }
    assert!(
        out.status.success(),
        "parity.py failed:\n{stdout}\n{stderr}"
    );
    Some(stdout)
}

/// `percept export --format onnx --checkpoint MODEL --out OUT EXTRA...`.
pub(crate) fn export(model: &Path, out: &Path, extra: &[&str]) -> crate::common::Output {
    let mut args = vec![
        "export",
        "--format",
        "onnx",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    percept(&args)
}

#[test]
fn onnx_exports_match_percept_in_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = synth(dir, "DE", 8, 3);
    let classes: Vec<String> = percept::synth::SYNTH_CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let d = Default::default();
    let input = Tensor::<Flex, 4>::random(
        [2, 3, H as usize, W as usize],
        Distribution::Normal(0.0, 1.0),
        &d,
    );
    let (shape, values) = host(input.clone());
    write_npy(&dir.join("input.npy"), &shape, &values);

    let all = Tasks::default();
    let variants: [(&str, Tasks); 4] = [
        ("full", all),
        (
            "no-detection",
            Tasks {
                detection: false,
                ..all
            },
        ),
        (
            "no-drivable",
            Tasks {
                drivable: false,
                ..all
            },
        ),
        (
            "no-lanes",
            Tasks {
                lanes: false,
                ..all
            },
        ),
    ];
    let mut cases = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, (name, tasks)) in variants.iter().enumerate() {
        let net = network(*tasks, classes.len(), 11 + i as u64);
        let mut card = trained_card(&classes, *tasks);
        if tasks.detection {
            // A threshold midway between the 150th and 151st best score of the batch: enough
            // detections for NMS to matter, none on the edge of the threshold.
            let logits = net.forward(input.clone()).detection.unwrap().class_logits;
            let mut scores: Vec<f32> = sigmoid(logits).into_data().to_vec().unwrap();
            scores.sort_by(|a, b| b.total_cmp(a));
            card.decode = DecodeOptions {
                score_threshold: (scores[150] + scores[151]) / 2.0,
                iou_threshold: 0.6,
                pre_nms_top_k: 1000,
                max_detections: 300,
            };
        }
        let model = dir.join(format!("{name}.safetensors"));
        save_model(&net, &card, &model).unwrap();
        let outputs = write_outputs(dir, name, &net, input.clone(), &card.decode);
        let mut export_case = |suffix: &str, tolerance: f64, nms: bool, extra: &[&str]| {
            let file = format!("{name}-{suffix}.onnx");
            let out = export(&model, &dir.join(&file), extra);
            assert!(out.ok, "{file}: {}", out.stderr);
            files.push(dir.join(&file));
            cases.push(serde_json::json!({
                "file": file, "model": name, "tolerance": tolerance, "outputs": outputs, "nms": nms,
            }));
        };
        if *name == "full" {
            export_case("fp32", FP32_TOLERANCE, true, &["--decode", "nms"]);
            export_case(
                "opset13",
                FP32_TOLERANCE,
                false,
                &["--opset", "13", "--decode", "raw"],
            );
            export_case(
                "opset21",
                FP32_TOLERANCE,
                true,
                &["--opset", "21", "--decode", "nms"],
            );
            export_case("fp16", FP16_TOLERANCE, false, &["--precision", "fp16"]);
            let data = data.to_str().unwrap();
            export_case(
                "int8",
                INT8_TOLERANCE,
                false,
                &[
                    "--precision",
                    "int8",
                    "--calibration-data",
                    data,
                    "--calibration-frames",
                    "8",
                ],
            );
        } else {
            export_case("fp32", FP32_TOLERANCE, false, &[]);
        }
    }
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_string(&cases).unwrap(),
    )
    .unwrap();
    if let Some(report) = run_parity(dir) {
        println!("{report}");
        assert_eq!(report.lines().count(), cases.len(), "{report}");
        assert!(report.contains("detections equal as sets"), "{report}");
    }
    for f in files {
        assert!(f.exists());
    }
    // The INT8 graph's card records its calibration: the dataset by manifest hash, the frames
    // and one range per convolution; nothing of the frames themselves.
    let int8 =
        percept::onnx::read_model(&std::fs::read(dir.join("full-int8.onnx")).unwrap()).unwrap();
    let meta = percept::onnx::metadata(&int8);
    let card: ModelCard = serde_json::from_str(
        &meta
            .iter()
            .find(|(k, _)| k == "percept.model_card")
            .unwrap()
            .1,
    )
    .unwrap();
    let q = card.provenance.quantization.expect("calibration recorded");
    assert_eq!(
        (q.frames, q.split.as_str(), q.method.as_str()),
        (8, "train", "percentile:99.99")
    );
    assert_eq!(q.dataset.region, "DE");
    let manifest = std::fs::read(data.join("manifest.json")).unwrap();
    assert_eq!(
        q.dataset.manifest_hash,
        blake3::hash(&manifest).to_hex().to_string()
    );
    assert_eq!(q.ranges.len(), 71);
    assert_eq!(q.ranges[0].0, "backbone.stem");
    assert!(q.ranges.iter().all(|(_, r)| r.is_finite() && *r >= 0.0));
    let shown = percept(&["inspect", dir.join("full-int8.onnx").to_str().unwrap()]);
    assert!(shown.ok, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .contains("percentile:99.99 of 71 convolution inputs from 8 train frames"),
        "{}",
        shown.stdout
    );
}
