//! percept-infer against percept itself: a model file percept-eval writes loads, and
//! `detect()` gives what `percept predict` gives and what the network run by hand gives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::f16;
use image::{Rgb, RgbImage};
use percept_eval::model_file::{load_model, save_model, ModelCard, Normalization, MODEL_FORMAT};
use percept_eval::predict::predict_image;
use percept_infer::{image_to_chw, letterbox_image, Detector, MODEL_CARD_KEY};
use percept_model::{decode_detections, DecodeOptions, ModelSize, PerceptionNetConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A nano card for a 64x64 input and two classes. Score threshold 0: a seeded, untrained
/// network scores every anchor low, and the comparison needs boxes to compare.
fn card() -> ModelCard {
    serde_json::from_value(serde_json::json!({
        "format": MODEL_FORMAT,
        "architecture": PerceptionNetConfig::new(ModelSize::Nano, 2),
        "classes": ["car", "person"],
        "input": { "width": 64, "height": 64 },
        "normalization": Normalization::default(),
        "decode": DecodeOptions { score_threshold: 0.0, ..DecodeOptions::default() },
        "provenance": {
            "site_region": "DE",
            "site_name": "lab",
            "datasets": [],
            "regions": ["DE"],
            "config_hash": "0".repeat(64),
            "base_checkpoint": null,
            "steps": 0,
            "percept_version": "test",
        },
    }))
    .unwrap()
}

/// The nano network seeded with 7, saved by percept-eval in `dir`.
fn saved(dir: &Path) -> PathBuf {
    let net = card()
        .architecture
        .init_seeded::<Flex>(7, &Default::default());
    let path = dir.join("model.safetensors");
    save_model(&net, &card(), &path).unwrap();
    path
}

/// A 96x48 frame (wider than the 64x64 input: letterboxed with 16 grey rows above and below).
fn frame() -> RgbImage {
    RgbImage::from_fn(96, 48, |x, y| {
        Rgb([(x * 2) as u8, (y * 5) as u8, ((x + y) * 3 % 256) as u8])
    })
}

#[test]
fn detect_matches_percept_predict_and_the_network_run_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path());
    let image = frame();
    let found = Detector::load(&path).unwrap().detect(&image);
    assert!(!found.boxes.is_empty());
    assert!(found.boxes.len() <= DecodeOptions::default().max_detections);

    // percept predict: percept-eval's loader and prediction.
    let device = Default::default();
    let (net, card) = load_model::<Flex>(&path, &device).unwrap();
    let prediction = predict_image(&net, &card, &image, Path::new("frame.png"), &device);
    assert_eq!(prediction.detections, found.boxes);
    assert_eq!(prediction.drivable, found.drivable);
    assert_eq!(prediction.lanes, found.lanes);

    // By hand: the training constants' letterbox and normalisation, the network, decoding,
    // and the letterbox inverted: 96x48 into 64x64 is scale 2/3 with 16 rows of border above.
    let (letterboxed, lb) = letterbox_image(&image, 64, 64);
    assert_eq!((lb.pad_x, lb.pad_y), (0.0, 16.0));
    let input = Tensor::<Flex, 1>::from_floats(image_to_chw(&letterboxed).as_slice(), &device)
        .reshape([1, 3, 64, 64]);
    let out = net.forward(input);
    let decoded = decode_detections(out.detection.as_ref().unwrap(), 64, 64, &card.decode);
    assert_eq!(decoded[0].len(), found.boxes.len());
    for (want, got) in decoded[0].iter().zip(&found.boxes) {
        assert_eq!((got.class, got.score), (want.class, want.score));
        assert_eq!(got.class_name, ["car", "person"][want.class]);
        let [x1, y1, x2, y2] = want.bbox;
        let back = [
            (x1 / lb.scale).clamp(0.0, 96.0),
            ((y1 - 16.0) / lb.scale).clamp(0.0, 48.0),
            (x2 / lb.scale).clamp(0.0, 96.0),
            ((y2 - 16.0) / lb.scale).clamp(0.0, 48.0),
        ];
        assert_eq!(got.bbox, back);
    }
}

#[test]
fn masks_come_back_at_the_image_size_as_0_or_255() {
    let dir = tempfile::tempdir().unwrap();
    let detector = Detector::load(saved(dir.path())).unwrap();
    let image = frame();
    let found = detector.detect(&image);
    for mask in [found.drivable.unwrap(), found.lanes.unwrap()] {
        assert_eq!(mask.dimensions(), (96, 48));
        assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    }
    // The card read for inference is the deployment part of the full card.
    let card = detector.card();
    assert_eq!(card.classes, ["car", "person"]);
    assert_eq!((card.input.width, card.input.height), (64, 64));
    assert_eq!(card.decode.score_threshold, 0.0);
}

/// `from`'s tensors written to `to` with the same metadata, each through `encode` (dtype and
/// bytes from its f32 values).
fn rewrite(from: &Path, to: &Path, encode: impl Fn(&str, &[f32]) -> (Dtype, Vec<u8>)) {
    let bytes = std::fs::read(from).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let encoded: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let (dtype, data) = encode(&name, &values);
            (name, view.shape().to_vec(), dtype, data)
        })
        .collect();
    let views = encoded.iter().map(|(name, shape, dtype, data)| {
        let view = TensorView::new(*dtype, shape.clone(), data).unwrap();
        (name.clone(), view)
    });
    std::fs::write(
        to,
        safetensors::serialize(views, header.metadata().clone()).unwrap(),
    )
    .unwrap();
}

#[test]
fn weights_are_checked_before_burn_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let original = saved(dir.path());
    let image = frame();

    // f16 weights are the same weights, rounded: converted to f32 and loaded, as percept does.
    let half = dir.path().join("f16.safetensors");
    rewrite(&original, &half, |_, values| {
        let bytes = values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes());
        (Dtype::F16, bytes.collect())
    });
    let found = Detector::load(&half).unwrap().detect(&image);
    assert_eq!(found.drivable.unwrap().dimensions(), (96, 48));

    // Integer weights would crash burn: refused, naming the file and the tensor.
    let ints = dir.path().join("i32.safetensors");
    rewrite(&original, &ints, |name, values| {
        if name.ends_with("running_var") {
            (Dtype::I32, vec![0; values.len() * 4])
        } else {
            (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        }
    });
    let err = Detector::load(&ints).unwrap_err().to_string();
    let prefix = format!("model file {}: tensor `", ints.display());
    assert!(err.starts_with(&prefix), "{err}");
    assert!(
        err.ends_with(
            "running_var` is I32; model weights are F32 (F16, BF16 and F64 are converted to F32)"
        ),
        "{err}"
    );

    // A safetensors file without a percept card.
    let bare = dir.path().join("bare.safetensors");
    let meta: Option<HashMap<String, String>> = None;
    let data = [0u8; 4];
    let view = TensorView::new(Dtype::F32, vec![1], &data).unwrap();
    std::fs::write(&bare, safetensors::serialize([("w", view)], meta).unwrap()).unwrap();
    assert_eq!(
        Detector::load(&bare).unwrap_err().to_string(),
        format!(
            "model file {}: no `{MODEL_CARD_KEY}` metadata: not a percept checkpoint or export",
            bare.display()
        )
    );

    // A file that is not there.
    let missing = dir.path().join("missing.safetensors");
    let err = Detector::load(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
}
