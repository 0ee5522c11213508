//! Every reader of bytes from outside, on stable: the fuzz corpus (`fuzz/corpus/<target>/`)
//! replayed through the same reader calls as the fuzz targets (`fuzz/readers.rs`), each seed
//! with a fixed set of seeded mutations (truncations, bit flips, random bytes, oversized length
//! fields), so CI exercises the readers without nightly or libFuzzer; and what the CLI does
//! with a model file of integer weights and a truncated JPEG.

mod common;

#[path = "../fuzz/readers.rs"]
mod readers;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use percept::eval::model_file::{save_model, ModelCard};
use percept_model::{ModelSize, PerceptionNetConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Mutations per seed, besides the seed itself.
const MUTATIONS: usize = 28;

/// `seed` mutated `MUTATIONS` ways, each with a label saying how: truncations (at evenly spaced
/// lengths and near the end), bit flips, runs of random bytes, and a length-sized field
/// overwritten with a huge or boundary value (at the start, where most formats keep a length,
/// at the end, where shards keep their footer, and at random offsets).
fn mutations(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<(String, Vec<u8>)> {
    let n = seed.len();
    let mut out = Vec::with_capacity(MUTATIONS);
    for k in 0..8 {
        let len = n * k / 8;
        out.push((format!("truncated to {len} bytes"), seed[..len].to_vec()));
    }
    for cut in [1, 2, 7] {
        let len = n.saturating_sub(cut);
        out.push((format!("truncated to {len} bytes"), seed[..len].to_vec()));
    }
    if n == 0 {
        return out;
    }
    for _ in 0..6 {
        let mut bytes = seed.to_vec();
        let flips = rng.random_range(1..=8);
        let mut at = Vec::new();
        for _ in 0..flips {
            let (i, bit) = (rng.random_range(0..n), rng.random_range(0..8));
            bytes[i] ^= 1 << bit;
            at.push(format!("{i}.{bit}"));
        }
        out.push((format!("bits flipped at {}", at.join(", ")), bytes));
    }
    for _ in 0..5 {
        let mut bytes = seed.to_vec();
        let start = rng.random_range(0..n);
        let end = (start + rng.random_range(1..=16)).min(n);
        rng.fill(&mut bytes[start..end]);
        out.push((format!("random bytes at {start}..{end}"), bytes));
    }
    let huge: [u64; 4] = [
        u64::MAX,
        u64::from(u32::MAX),
        1 << 40,
        0x7fff_ffff_ffff_fff8,
    ];
    for (k, value) in huge.into_iter().enumerate() {
        let width = if k == 1 { 4 } else { 8 };
        let at = match k {
            0 => 0,
            1 => n.saturating_sub(16),
            _ => rng.random_range(0..n),
        };
        let mut bytes = seed.to_vec();
        let end = (at + width).min(n);
        bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
        out.push((format!("{value:#x} written at {at}"), bytes));
    }
    out
}

/// Replays `fuzz/corpus/<target>/` with the mutations of each seed; fails listing every input
/// that panicked (the reader's assertions include the error naming the input).
fn replay(target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let mut failures = Vec::new();
    for path in &seeds {
        let seed = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut rng = ChaCha8Rng::seed_from_u64(name.bytes().map(u64::from).sum());
        let inputs = std::iter::once(("as it is".to_string(), seed.clone()))
            .chain(mutations(&seed, &mut rng));
        for (how, bytes) in inputs {
            if catch_unwind(AssertUnwindSafe(|| readers::run(target, &bytes))).is_err() {
                failures.push(format!("{name}, {how}"));
            }
        }
    }
    readers::remove_scratch();
    assert!(
        failures.is_empty(),
        "{target}: {} inputs broke the reader's contract (see the panics above):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_replay_test() {
    let tested = [
        "shard_reader",
        "model_file",
        "training_state",
        "manifest",
        "audit_log",
        "run_config",
        "image_import",
    ];
    assert_eq!(readers::TARGETS, tested);
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for target in readers::TARGETS {
        assert!(fuzz.join("corpus").join(target).is_dir(), "{target}");
        assert!(
            fuzz.join(format!("fuzz_targets/{target}.rs")).is_file(),
            "{target}"
        );
    }
}

#[test]
fn shard_reader_corpus_replays() {
    replay("shard_reader");
}

#[test]
fn model_file_corpus_replays() {
    replay("model_file");
}

#[test]
fn training_state_corpus_replays() {
    replay("training_state");
}

#[test]
fn manifest_corpus_replays() {
    replay("manifest");
}

#[test]
fn audit_log_corpus_replays() {
    replay("audit_log");
}

#[test]
fn run_config_corpus_replays() {
    replay("run_config");
}

#[test]
fn image_import_corpus_replays() {
    replay("image_import");
}

// ---------------------------------------------------------------------------------------------
// The CLI on bad files: exit status 1 and a message naming the file and what is wrong, never a
// panic (101) or a signal.

/// Runs `percept` with `args`; returns its exit code (None: killed by a signal) and stderr.
fn percept_status(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_percept"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A nano model file for the test datasets' size whose tensor `name` (the first parameter)
/// is stored as I32: it used to crash eval and predict with SIGSEGV.
fn i32_model(dir: &Path) -> (PathBuf, String) {
    let arch = PerceptionNetConfig::new(ModelSize::Nano, 4);
    let card: ModelCard = serde_json::from_value(serde_json::json!({
        "format": percept::eval::model_file::MODEL_FORMAT,
        "architecture": arch,
        "classes": ["car", "pedestrian", "cyclist", "traffic_sign"],
        "input": { "width": common::W, "height": common::H },
        "normalization": { "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "pad_value": 114 },
        "decode": { "score_threshold": 0.25, "iou_threshold": 0.6, "pre_nms_top_k": 1000,
                    "max_detections": 100 },
        "provenance": {
            "site_region": "DE", "site_name": "lab", "datasets": [], "regions": ["DE"],
            "config_hash": "0".repeat(64), "base_checkpoint": null, "steps": 0,
            "percept_version": "test"
        }
    }))
    .unwrap();
    let net = arch.init_seeded::<burn::backend::Flex>(3, &Default::default());
    let f32_path = dir.join("f32.safetensors");
    save_model(&net, &card, &f32_path).unwrap();
    let name = percept_model::params::list_params(&net)[0].path.clone();

    let bytes = std::fs::read(&f32_path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let ints: HashMap<String, Vec<u8>> = file
        .tensors()
        .into_iter()
        .filter(|(n, _)| *n == name)
        .map(|(n, view)| {
            let ints = view
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    ((f32::from_le_bytes(b.try_into().unwrap()) * 1e3) as i32).to_le_bytes()
                })
                .collect();
            (n, ints)
        })
        .collect();
    let views = file
        .tensors()
        .into_iter()
        .map(|(n, view)| match ints.get(&n) {
            Some(data) => {
                let shape = view.shape().to_vec();
                (n, TensorView::new(Dtype::I32, shape, data).unwrap())
            }
            None => (n, view),
        });
    let path = dir.join("i32.safetensors");
    std::fs::write(
        &path,
        safetensors::serialize(views, header.metadata().clone()).unwrap(),
    )
    .unwrap();
    (path, name)
}

#[test]
fn eval_and_predict_refuse_a_model_file_of_integer_weights_with_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tensor) = i32_model(dir.path());
    let image = dir.path().join("frame.png");
    RgbImage::from_fn(common::W, common::H, |x, y| Rgb([x as u8, y as u8, 60]))
        .save(&image)
        .unwrap();
    let data = common::synth(dir.path(), "DE", 2, 1);
    let want = format!(
        "model file {}: tensor `{tensor}` is I32; model weights are F32 (F16, BF16 and F64 are \
         converted to F32)",
        model.display()
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let runs: [Vec<String>; 2] = [
        vec![
            "predict".into(),
            "--model".into(),
            s(&model),
            "--image".into(),
            s(&image),
            "--out-dir".into(),
            s(dir.path()),
        ],
        vec![
            "eval".into(),
            "--model".into(),
            s(&model),
            "--data".into(),
            s(&data),
        ],
    ];
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = percept_status(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn predict_refuses_a_truncated_jpeg_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = i32_model(dir.path());
    let image = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 60]));
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&image)
        .unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() - 25]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "predict".to_string(),
        "--model".into(),
        s(&model.with_file_name("f32.safetensors")),
        "--image".into(),
        s(&cut),
        "--out-dir".into(),
        s(dir.path()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = percept_status(&args);
    assert_eq!(code, Some(1), "{stderr}");
    let want = format!(
        "image {}: the JPEG is truncated: its {} bytes end in the image data, before the \
         end-of-image marker (FFD9)",
        cut.display(),
        jpeg.len() - 25
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!dir.path().join("cut.detections.json").exists());
}
