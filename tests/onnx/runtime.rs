//! ONNX exports run in ONNX Runtime from Rust (percept-onnx's `runtime`, what `percept eval` and
//! `percept predict` use for a `.onnx` model): its raw outputs equal the network's, and eval and
//! predict of the ONNX file agree with those of the safetensors file it was written from. When
//! ONNX Runtime's library is not found these tests print a notice and pass, unless
//! `PERCEPT_REQUIRE_ONNXRUNTIME=1` (CI sets it), which makes that a failure. The refusals need
//! no runtime.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use percept::eval::model_file::{card_from_json, save_model, ModelCard, MODEL_CARD_KEY};
use percept::model::{
    PerceptionModel, PerceptionNet, PerceptionNetConfig, PerceptionOutput, REG_BINS,
};
use percept::onnx::runtime::{find_library, OnnxRuntimeModel};
use percept::onnx::{onnx_bytes, OnnxOptions, OnnxPrecision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::common::{model_card, percept, provenance, synth, H, W};

/// Max |ONNX Runtime - percept| on any raw output of the fp32 graph (logits; distances in
/// input pixels).
const RAW_TOLERANCE: f32 = 1e-4;
/// Max difference of a metric (mAP@0.5, IoU) between the ONNX file and the safetensors file.
const METRIC_TOLERANCE: f64 = 1e-3;

/// Whether ONNX Runtime's library is found; without it the test is skipped with a notice, or
/// fails when `PERCEPT_REQUIRE_ONNXRUNTIME=1`.
fn runtime_found() -> bool {
    match find_library() {
        Ok(_) => true,
        Err(e) if std::env::var("PERCEPT_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1") => {
            panic!("PERCEPT_REQUIRE_ONNXRUNTIME=1, but {e}")
        }
        Err(e) => {
            eprintln!("skipped (set PERCEPT_REQUIRE_ONNXRUNTIME=1 to fail instead): {e}");
            false
        }
    }
}

/// Makes a never-trained detection head give many small boxes, so that eval and predict have
/// plenty of detections to compare: every class logit bias is raised by 10 (the prior puts
/// scores under 0.2; now they are over 0.7, above the card's threshold), and each box edge's
/// distribution peaks at bins 0 and 1 with the drawn weights' variation scaled down (edges of
/// about half a stride; the drawn weights give boxes of several strides, which NMS merges
/// into one per class and image).
struct Confident {
    path: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Confident {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        if path.ends_with("cls_out.bias") {
            param.map(|t| t.add_scalar(10.0))
        } else if path.ends_with("reg_out.weight") {
            param.map(|t| t.mul_scalar(0.1))
        } else if path.ends_with("reg_out.bias") {
            param.map(|t| {
                let peaks: Vec<f32> = (0..t.shape().num_elements())
                    .map(|i| if i % REG_BINS < 2 { 10.0 } else { 0.0 })
                    .collect();
                Tensor::<B, 1>::from_floats(peaks.as_slice(), &t.device()).reshape(t.shape())
            })
        } else {
            param
        }
    }
}

/// A seeded, never-trained nano network of the synthetic classes for a DE site, made
/// [`Confident`], saved as `model.safetensors` and written as an fp32
/// `model.onnx` carrying the same card, in `dir`.
struct Models {
    net: PerceptionNet<Flex>,
    card: ModelCard,
    safetensors: PathBuf,
    onnx: PathBuf,
}

fn models(dir: &Path) -> Models {
    let classes: Vec<String> = percept::synth::SYNTH_CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let card = model_card(&classes, provenance("DE", "site-de", &["DE"], 0));
    let net = PerceptionNetConfig::init_seeded::<Flex>(&card.architecture, 11, &Default::default())
        .map(&mut Confident { path: Vec::new() });
    let safetensors = dir.join("model.safetensors");
    save_model(&net, &card, &safetensors).unwrap();
    let onnx = dir.join("model.onnx");
    write_onnx(&net, Some(&card), &onnx);
    Models {
        net,
        card,
        safetensors,
        onnx,
    }
}

/// `net` as an fp32 ONNX graph at `path`, with `card` in its metadata (none: a foreign model).
fn write_onnx(net: &PerceptionNet<Flex>, card: Option<&ModelCard>, path: &Path) {
    let mut options = OnnxOptions::new(OnnxPrecision::Fp32);
    if let Some(card) = card {
        let json = serde_json::to_string(card).unwrap();
        options.metadata.push((MODEL_CARD_KEY.to_string(), json));
    }
    let graph = net.inference_graph(H as usize, W as usize).unwrap();
    std::fs::write(path, onnx_bytes(&graph, &options).unwrap()).unwrap();
}

/// Every raw output of `out` by name, each as its shape and values.
fn raw(out: PerceptionOutput<Flex>) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let host =
        |name, t: Tensor<Flex, 3>| (name, t.dims().to_vec(), t.into_data().to_vec().unwrap());
    let host4 =
        |name, t: Tensor<Flex, 4>| (name, t.dims().to_vec(), t.into_data().to_vec().unwrap());
    let mut all = Vec::new();
    if let Some(d) = out.detection {
        all.push(host("class_logits", d.class_logits));
        all.push(host("box_logits", d.box_logits));
        all.push(host("distances", d.distances));
    }
    all.extend(out.drivable.map(|m| host4("drivable", m)));
    all.extend(out.lanes.map(|m| host4("lanes", m)));
    all
}

#[test]
fn onnx_runtime_gives_the_networks_raw_outputs() {
    if !runtime_found() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = models(tmp.path());
    let model = OnnxRuntimeModel::load(&m.onnx, 2).unwrap();
    assert_eq!(card_from_json(model.card_json(), &m.onnx).unwrap(), m.card);
    assert_eq!(model.tasks(), m.card.architecture.tasks);

    let device = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let shape = [2, 3, H as usize, W as usize];
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let input = Tensor::<Flex, 1>::from_floats(values.as_slice(), &device).reshape(shape);
    let expected = raw(m.net.perceive(input.clone()));
    let got = raw(PerceptionModel::<Flex>::perceive(&model, input));
    let names =
        |r: &[(&'static str, Vec<usize>, Vec<f32>)]| r.iter().map(|o| o.0).collect::<Vec<_>>();
    assert_eq!(
        names(&got),
        [
            "class_logits",
            "box_logits",
            "distances",
            "drivable",
            "lanes"
        ]
    );
    assert_eq!(names(&got), names(&expected));
    for ((name, shape, a), (_, expected_shape, b)) in got.iter().zip(&expected) {
        assert_eq!(shape, expected_shape, "{name}");
        let diff = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!("{name} {shape:?}: max |ONNX Runtime - percept| = {diff:.2e}");
        assert!(diff <= RAW_TOLERANCE, "{name}: {diff}");
    }
}

/// `percept eval` of `model` on `data`'s train split, as its JSON report.
fn eval(model: &Path, data: &Path, out: &Path) -> Value {
    let o = percept(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--split",
        "train",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.ok, "eval of {}: {}", model.display(), o.stderr);
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

/// `percept predict` of `model` on `image` into `out_dir`, as its detections JSON.
fn predict(model: &Path, image: &Path, out_dir: &Path) -> Value {
    let o = percept(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.ok, "predict with {}: {}", model.display(), o.stderr);
    serde_json::from_slice(&std::fs::read(out_dir.join("frame.detections.json")).unwrap()).unwrap()
}

#[test]
fn eval_and_predict_of_an_onnx_export_agree_with_its_safetensors() {
    if !runtime_found() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = synth(dir, "DE", 8, 3);
    let m = models(dir);

    let a = eval(&m.safetensors, &data, &dir.join("safetensors.json"));
    let b = eval(&m.onnx, &data, &dir.join("onnx.json"));
    assert_eq!(a["images"], 8);
    assert_eq!(b["images"], a["images"]);
    // The evaluator saw as many detections of each class from either file.
    let per_class = |r: &Value, key: &str| -> Vec<Value> {
        let classes = r.pointer("/detection/metrics/per_class").unwrap();
        classes
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[key].clone())
            .collect()
    };
    let detections = per_class(&a, "num_det");
    println!("detections per class: {detections:?}");
    let total: u64 = detections.iter().map(|n| n.as_u64().unwrap()).sum();
    assert!(total > 100, "{total} detections");
    assert_eq!(per_class(&b, "num_det"), detections);
    assert_eq!(per_class(&b, "num_gt"), per_class(&a, "num_gt"));
    for (what, pointer) in [
        ("mAP@0.5", "/detection/metrics/map50"),
        ("drivable IoU", "/drivable/iou"),
        ("lane IoU", "/lanes/iou"),
    ] {
        let (x, y) = (a.pointer(pointer).unwrap(), b.pointer(pointer).unwrap());
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        println!("{what}: safetensors {x:.6}, ONNX Runtime {y:.6}");
        assert!((x - y).abs() <= METRIC_TOLERANCE, "{what}: {x} vs {y}");
    }

    // An ONNX model is recognised by its content too (no `.onnx` extension).
    let renamed = dir.join("model.bin");
    std::fs::copy(&m.onnx, &renamed).unwrap();
    let image = dir.join("frame.png");
    image::RgbImage::from_fn(150, 90, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    })
    .save(&image)
    .unwrap();
    std::fs::create_dir_all(dir.join("p-safetensors")).unwrap();
    std::fs::create_dir_all(dir.join("p-onnx")).unwrap();
    let a = predict(&m.safetensors, &image, &dir.join("p-safetensors"));
    let b = predict(&renamed, &image, &dir.join("p-onnx"));
    let (da, db) = (
        a["detections"].as_array().unwrap(),
        b["detections"].as_array().unwrap(),
    );
    println!("predict: {} and {} detections", da.len(), db.len());
    assert!(da.len() > 10, "{} detections", da.len());
    assert_eq!(da.len(), db.len());
    // As sets: detections whose scores tie may come in either order.
    let close = |a: &Value, b: &Value, tolerance: f64| {
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= tolerance
    };
    let same = |x: &Value, y: &Value| {
        x["class"] == y["class"]
            && close(&x["score"], &y["score"], 1e-4)
            && (0..4).all(|i| close(&x["box"][i], &y["box"][i], 1e-2))
    };
    let mut unmatched: Vec<&Value> = db.iter().collect();
    for x in da {
        let i = unmatched.iter().position(|y| same(x, y));
        let i = i.unwrap_or_else(|| panic!("{x} has no match among {unmatched:?}"));
        unmatched.swap_remove(i);
    }
    for key in ["drivable_fraction", "lane_pixels"] {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        let scale = if key == "lane_pixels" {
            150.0 * 90.0
        } else {
            1.0
        };
        assert!(
            (x - y).abs() / scale <= METRIC_TOLERANCE,
            "{key}: {x} vs {y}"
        );
    }
}

#[test]
fn onnx_models_are_refused_off_the_cpu_and_without_a_model_card() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let m = models(dir);
    let foreign = dir.join("foreign.onnx");
    write_onnx(&m.net, None, &foreign);
    let image = dir.join("frame.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([90, 90, 90]))
        .save(&image)
        .unwrap();
    let onnx = m.onnx.to_str().unwrap();
    for args in [
        vec![
            "eval", "--model", onnx, "--data", "nowhere", "--device", "wgpu",
        ],
        vec![
            "predict",
            "--model",
            onnx,
            "--image",
            image.to_str().unwrap(),
            "--device",
            "cuda:1",
        ],
    ] {
        let o = percept(&args);
        assert!(
            !o.ok && !o.stderr.contains("panicked"),
            "{args:?}: {}",
            o.stderr
        );
        let device = args[args.len() - 1];
        assert!(
            o.stderr
                .contains(&format!("--device {device}: {onnx} is an ONNX model"))
                && o.stderr.contains("give --device cpu"),
            "{args:?}: {}",
            o.stderr
        );
    }
    let foreign = foreign.to_str().unwrap();
    for args in [
        vec!["eval", "--model", foreign, "--data", "nowhere"],
        vec![
            "predict",
            "--model",
            foreign,
            "--image",
            image.to_str().unwrap(),
        ],
    ] {
        let o = percept(&args);
        assert!(
            !o.ok && !o.stderr.contains("panicked"),
            "{args:?}: {}",
            o.stderr
        );
        assert!(
            o.stderr.contains(&format!(
                "model file {foreign}: no `percept.model_card` metadata"
            )),
            "{args:?}: {}",
            o.stderr
        );
    }
    // percept-onnx reads the card under the key percept's model files use.
    assert_eq!(percept::onnx::MODEL_CARD_KEY, MODEL_CARD_KEY);
}
