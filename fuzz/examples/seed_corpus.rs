//! Writes the seed corpus of every fuzz target, `corpus/<target>/seed-*`: small files, valid
//! ones and a few that each reader must refuse for one reason, so that mutations start from
//! every branch of the format.
//!
//! - `shard_reader`: shards of synthetic scenes (two 64x64 frames; one 96x64 left-hand-traffic
//!   frame; an empty shard), each frame with an ignore region. The `seed-v1-*` seeds beside
//!   them are format-1 shards (no ignore regions), which the reader still reads; this program
//!   does not rewrite them.
//! - `model_file`: a model card and the three smallest weights of a nano network, as F32,
//!   F16, BF16/F64, I32, U8, with NaN, and without a card.
//! - `training_state`: training-state containers (raw weights, EMA, optimiser groups).
//! - `manifest`: the manifests of two small synthetic datasets.
//! - `audit_log`: an unsigned log of a run's events.
//! - `run_config`: the repository's configs, a minimal one, one that extends `/dev/zero`.
//! - `image_import`: RGB and grey JPEG and PNG, a JPEG with zero padding, a truncated JPEG.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{bf16, f16};
use image::codecs::jpeg::JpegEncoder;
use image::{GrayImage, Luma, Rgb, RgbImage};
use percept_data::{AuditEvent, AuditLog, IgnoreRegion, ShardWriter, TrafficSide};
use percept_eval::model_file::{ModelCard, MODEL_CARD_KEY};
use percept_synth::{write_synthetic_dataset, SceneGenerator, SynthOptions};
use percept_train::checkpoint::TrainingState;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    shards(&root.join("shard_reader"));
    model_files(&root.join("model_file"));
    training_states(&root.join("training_state"));
    manifests(&root.join("manifest"));
    audit_logs(&root.join("audit_log"));
    run_configs(&root.join("run_config"));
    images(&root.join("image_import"));
}

/// Writes `corpus/<target>/<name>` and says so.
fn seed(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
    println!("{}: {} bytes", dir.join(name).display(), bytes.len());
}

fn shards(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let shards: [(&str, SceneGenerator, u64); 3] = [
        (
            "seed-two-64x64.shard",
            SceneGenerator::new(64, 64, TrafficSide::Right, 1),
            2,
        ),
        (
            "seed-one-96x64-left.shard",
            SceneGenerator::new(96, 64, TrafficSide::Left, 2),
            1,
        ),
        (
            "seed-empty.shard",
            SceneGenerator::new(64, 64, TrafficSide::Right, 3),
            0,
        ),
    ];
    for (name, generator, frames) in shards {
        let mut w = ShardWriter::create(dir.join(name)).expect("create a seed shard");
        for i in 0..frames {
            let mut sample = generator.generate(i);
            sample.ignore.push(IgnoreRegion {
                x1: 4.0,
                y1: 4.5,
                x2: 20.0,
                y2: 12.0,
            });
            w.push(&sample).expect("encode a synthetic frame");
        }
        let info = w.finish().expect("finish a seed shard");
        println!("{name}: {} samples, {} bytes", info.samples, info.bytes);
    }
}

/// A nano network's model card: two classes, 64x64 input.
fn card() -> ModelCard {
    serde_json::from_value(json!({
        "format": percept_eval::model_file::MODEL_FORMAT,
        "architecture": { "size": "nano", "num_classes": 2 },
        "classes": ["car", "person"],
        "input": { "width": 64, "height": 64 },
        "normalization": { "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "pad_value": 114 },
        "decode": { "score_threshold": 0.25, "iou_threshold": 0.6, "pre_nms_top_k": 1000, "max_detections": 100 },
        "provenance": {
            "site_region": "DE", "site_name": "lab", "datasets": [], "regions": ["DE"],
            "config_hash": "0".repeat(64), "base_checkpoint": null, "steps": 0,
            "percept_version": "seed"
        }
    }))
    .expect("a model card")
}

/// A safetensors file of `tensors` (name, dtype, shape, bytes), with the model card unless
/// `with_card` is false.
fn safetensors_file(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)], with_card: bool) -> Vec<u8> {
    let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), bytes).expect("a tensor view"),
        )
    });
    let meta = with_card.then(|| {
        HashMap::from([(
            MODEL_CARD_KEY.to_string(),
            serde_json::to_string(&card()).unwrap(),
        )])
    });
    safetensors::serialize(views, meta).expect("serialise")
}

fn model_files(dir: &Path) {
    let net = card()
        .architecture
        .init_seeded::<Flex>(1, &Default::default());
    let mut params = percept_model::params::list_params(&net);
    params.sort_by_key(|p| (p.dims.iter().product::<usize>(), p.path.clone()));
    let smallest: Vec<(String, Vec<usize>)> = params
        .into_iter()
        .take(3)
        .map(|p| (p.path, p.dims))
        .collect();
    let values = |k: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + k * 3) % 11) as f32 / 8.0 - 0.5)
            .collect()
    };
    let as_dtype = |dtype: Dtype, v: &[f32]| -> Vec<u8> {
        match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::F64 => v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect(),
            Dtype::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
            Dtype::U8 => v.iter().map(|x| (*x * 100.0) as u8).collect(),
            other => unreachable!("{other:?}"),
        }
    };
    let file = |dtypes: [Dtype; 3], poison: bool, with_card: bool| {
        let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = smallest
            .iter()
            .zip(dtypes)
            .enumerate()
            .map(|(k, ((name, dims), dtype))| {
                let mut v = values(k, dims.iter().product());
                if poison {
                    // The smallest weights may be scalars: one value each.
                    v[0] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k];
                }
                (name.clone(), dtype, dims.clone(), as_dtype(dtype, &v))
            })
            .collect();
        safetensors_file(&tensors, with_card)
    };
    use Dtype::*;
    seed(
        dir,
        "seed-f32.safetensors",
        &file([F32, F32, F32], false, true),
    );
    seed(
        dir,
        "seed-f16.safetensors",
        &file([F16, F16, F16], false, true),
    );
    seed(
        dir,
        "seed-bf16-f64.safetensors",
        &file([BF16, F64, F32], false, true),
    );
    seed(
        dir,
        "seed-i32.safetensors",
        &file([F32, I32, F32], false, true),
    );
    seed(
        dir,
        "seed-u8.safetensors",
        &file([U8, F32, F32], false, true),
    );
    seed(
        dir,
        "seed-nan.safetensors",
        &file([F32, F32, F32], true, true),
    );
    seed(
        dir,
        "seed-no-card.safetensors",
        &file([F32, F32, F32], false, false),
    );
}

fn training_states(dir: &Path) {
    let bytes =
        |n: usize, k: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(k)).collect() };
    let plain = TrainingState {
        model: bytes(48, 3),
        optimizer: BTreeMap::from([("default".to_string(), bytes(24, 5))]),
        ema: None,
    };
    let with_ema = TrainingState {
        model: bytes(32, 7),
        optimizer: BTreeMap::from([
            ("backbone".to_string(), bytes(16, 11)),
            ("heads".to_string(), bytes(16, 13)),
        ]),
        ema: Some(bytes(32, 17)),
    };
    seed(dir, "seed-plain.train.safetensors", &plain.to_bytes());
    seed(dir, "seed-ema.train.safetensors", &with_ema.to_bytes());
}

fn manifests(dir: &Path) {
    for (region, seed_value) in [("DE", 1), ("JP", 2)] {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let options = SynthOptions {
            name: format!("seed-{region}"),
            region: region.into(),
            width: 64,
            height: 64,
            train: 1,
            val: 1,
            seed: seed_value,
            samples_per_shard: 1,
        };
        write_synthetic_dataset(tmp.path(), &options, &|_| {}).expect("a synthetic dataset");
        let bytes = std::fs::read(tmp.path().join(percept_data::MANIFEST_FILE)).unwrap();
        seed(dir, &format!("seed-{region}.json"), &bytes);
    }
}

fn audit_logs(dir: &Path) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).expect("open a log");
    let events = [
        json!({"kind": "run_start", "run": "r1", "config_hash": "c".repeat(64),
               "site_region": "DE", "site_name": "lab", "percept_version": "seed"}),
        json!({"kind": "guard_decision", "dataset": "synth-de", "manifest": "data/manifest.json",
               "manifest_hash": "a".repeat(64), "data_region": "DE", "site_region": "DE",
               "allowed": true, "reason": "home region"}),
        json!({"kind": "shard_opened", "dataset": "synth-de", "shard": "train-00000.shard",
               "split": "train", "hash": "b".repeat(64), "result": "ok"}),
        json!({"kind": "checkpoint", "path": "runs/r1/checkpoints/step-000001.safetensors",
               "step": 1, "hash": "d".repeat(64)}),
        json!({"kind": "run_end", "steps": 1, "skipped_samples": 0, "status": "completed"}),
    ];
    for event in events {
        let event: AuditEvent = serde_json::from_value(event).expect("an audit event");
        log.append(event).expect("append");
    }
    drop(log);
    seed(dir, "seed-run.jsonl", &std::fs::read(&path).unwrap());
}

fn run_configs(dir: &Path) {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for name in ["smoke.toml", "finetune-jp.toml"] {
        seed(
            dir,
            &format!("seed-{name}"),
            &std::fs::read(configs.join(name)).unwrap(),
        );
    }
    let minimal = "name = \"seed\"\n[site]\nregion = \"DE\"\nname = \"lab\"\n\
                   [model]\nsize = \"nano\"\ninput = { width = 64, height = 64 }\n\
                   [data]\ndatasets = [\"data/a\"]\n";
    seed(dir, "seed-minimal.toml", minimal.as_bytes());
    // Found by fuzzing's review: an `extends` that names a device used to be read without bound.
    seed(dir, "seed-extends-dev-zero.toml", b"extends = \"/dev/zero\"\n");
}

fn images(dir: &Path) {
    let rgb = RgbImage::from_fn(24, 16, |x, y| Rgb([(x * 10) as u8, (y * 15) as u8, 128]));
    let grey = GrayImage::from_fn(24, 16, |x, y| Luma([((x + y) * 6) as u8]));
    let jpeg = |write: &dyn Fn(&mut JpegEncoder<&mut Vec<u8>>)| {
        let mut bytes = Vec::new();
        write(&mut JpegEncoder::new_with_quality(&mut bytes, 80));
        bytes
    };
    let rgb_jpeg = jpeg(&|e| e.encode_image(&rgb).unwrap());
    let grey_jpeg = jpeg(&|e| e.encode_image(&grey).unwrap());
    let png = |image: &dyn Fn(&PathBuf)| {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seed.png");
        image(&path);
        std::fs::read(&path).unwrap()
    };
    seed(dir, "seed-rgb.jpg", &rgb_jpeg);
    seed(dir, "seed-grey.jpg", &grey_jpeg);
    seed(dir, "seed-rgb.png", &png(&|p| rgb.save(p).unwrap()));
    seed(dir, "seed-grey.png", &png(&|p| grey.save(p).unwrap()));
    let mut padded = rgb_jpeg.clone();
    padded.extend([0u8; 16]);
    seed(dir, "seed-padded.jpg", &padded);
    seed(dir, "seed-truncated.jpg", &rgb_jpeg[..rgb_jpeg.len() - 30]);
}
