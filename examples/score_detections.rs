//! Scores another detector's predictions on a percept dataset's val split with percept's own
//! COCO detection metrics (`percept::eval::metrics::DetectionEvaluator`, the evaluator
//! `percept eval` uses), so that a model trained elsewhere (ultralytics, see
//! `benches/ultralytics/`) is measured exactly as percept's networks are.
//!
//! ```sh
//! cargo run --example score_detections -- <dataset dir> <predictions.json> \
//!     [--input WIDTHxHEIGHT] [--out scores.json]
//! ```
//!
//! The predictions JSON maps each val image's name, as `yolo_export` names it (the sample's
//! index in the val split, six digits: `"000042"`), to its detections in the image's own
//! pixels:
//!
//! ```json
//! { "000000": [ { "class": 0, "score": 0.91, "bbox": [x1, y1, x2, y2] }, ... ], ... }
//! ```
//!
//! `class` is an index into the dataset's classes (or a class name). Every val image must have
//! an entry (an empty list when nothing was detected); an unknown name is an error. All
//! detections are ranked (no per-image cap beyond what the predictor applied), as `percept
//! eval` ranks everything its decoding keeps.
//!
//! Ground truth is prepared as `percept eval` prepares it at its default "original"
//! resolution: boxes are clipped to the image, and a box narrower or lower than the minimum
//! box side (2 network pixels) once letterboxed into the network input becomes an ignore
//! region, like the dataset's own ignore regions. `--input` is that network input (percept's
//! `model.input`); by default the image's own size (scale 1). The result is printed and, with
//! `--out`, written as JSON: mAP@0.5, mAP@[.5:.95] and per-class AP.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use percept::data::{Letterbox, Manifest, Split, DEFAULT_MIN_BOX_SIDE};
use percept::eval::eval::original_targets;
use percept::eval::metrics::{Detection, DetectionEvaluator};
use percept::train::data::open_for_site;
use serde_json::{json, Value};

/// Scores another detector's predictions with percept's COCO detection metrics.
#[derive(Parser)]
struct Args {
    /// The percept dataset (its val split is scored).
    data: PathBuf,
    /// The predictions JSON (see the module docs).
    predictions: PathBuf,
    /// percept's network input, WIDTHxHEIGHT (default: each image's own size).
    #[arg(long, value_parser = parse_size)]
    input: Option<(u32, u32)>,
    /// Also write the scores here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_size(v: &str) -> Result<(u32, u32), String> {
    v.split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .ok_or_else(|| format!("{v:?} is not WIDTHxHEIGHT (e.g. 256x160)"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let report = score(&args.data, &args.predictions, args.input)?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = args.out {
        fs::write(&out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// One detection of the predictions file, checked.
fn parse_detection(v: &Value, classes: &[String], path: &Path, key: &str) -> Result<Detection> {
    let at = || format!("{}: image {key:?}: detection {v}", path.display());
    let class = match &v["class"] {
        Value::Number(n) => n
            .as_u64()
            .map(|c| c as usize)
            .filter(|&c| c < classes.len())
            .with_context(|| format!("{}: class is not one of 0..{}", at(), classes.len()))?,
        Value::String(s) => classes
            .iter()
            .position(|c| c == s)
            .with_context(|| format!("{}: unknown class {s:?} (classes: {classes:?})", at()))?,
        _ => bail!("{}: no \"class\" (an index or a name)", at()),
    };
    let score = v["score"]
        .as_f64()
        .with_context(|| format!("{}: no numeric \"score\"", at()))? as f32;
    let bbox = v["bbox"]
        .as_array()
        .filter(|b| b.len() == 4)
        .and_then(|b| b.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
        .with_context(|| format!("{}: \"bbox\" is not [x1, y1, x2, y2]", at()))?;
    Ok(Detection::new(
        class,
        score,
        [
            bbox[0] as f32,
            bbox[1] as f32,
            bbox[2] as f32,
            bbox[3] as f32,
        ],
    ))
}

fn score(data: &Path, predictions: &Path, input: Option<(u32, u32)>) -> Result<Value> {
    let manifest = Manifest::load_dir(data)
        .with_context(|| format!("reading the manifest of {}", data.display()))?;
    let val = open_for_site(data, Split::Val, &manifest.region)
        .with_context(|| format!("opening the val split of {}", data.display()))?;
    let classes = val.classes().to_vec();
    let text = fs::read_to_string(predictions)
        .with_context(|| format!("reading {}", predictions.display()))?;
    let parsed: BTreeMap<String, Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a JSON object of image name -> detections",
            predictions.display()
        )
    })?;
    let mut by_index: BTreeMap<usize, Vec<Detection>> = BTreeMap::new();
    for (key, list) in &parsed {
        let index = key
            .parse::<usize>()
            .ok()
            .filter(|&i| i < val.len() && format!("{i:06}") == *key)
            .with_context(|| {
                format!(
                    "{}: image {key:?} is not a val image name of {} (000000..{:06})",
                    predictions.display(),
                    data.display(),
                    val.len().saturating_sub(1)
                )
            })?;
        let list = list.as_array().with_context(|| {
            format!(
                "{}: image {key:?}: not a list of detections",
                predictions.display()
            )
        })?;
        let dets = list
            .iter()
            .map(|d| parse_detection(d, &classes, predictions, key))
            .collect::<Result<Vec<_>>>()?;
        by_index.insert(index, dets);
    }
    if by_index.len() != val.len() {
        let missing: Vec<String> = (0..val.len())
            .filter(|i| !by_index.contains_key(i))
            .take(5)
            .map(|i| format!("{i:06}"))
            .collect();
        bail!(
            "{}: {} of the {} val images have no entry (first: {}); an image without \
             detections needs an empty list",
            predictions.display(),
            val.len() - by_index.len(),
            val.len(),
            missing.join(", ")
        );
    }
    let mut ap = DetectionEvaluator::coco(classes.len());
    let mut detections = 0usize;
    let mut network = None;
    for (i, dets) in &by_index {
        let sample = val
            .get(*i)
            .with_context(|| format!("reading val sample {i} of {}", data.display()))?;
        let (iw, ih) = sample.image.dimensions();
        let (nw, nh) = input.unwrap_or((iw, ih));
        network.get_or_insert((nw, nh));
        let lb = Letterbox::fit(iw, ih, nw, nh);
        let (gt, ignore) = original_targets(&sample, &lb, DEFAULT_MIN_BOX_SIDE);
        ap.add_image_with_ignore(dets, &gt, &ignore);
        detections += dets.len();
    }
    if ap.num_ignored() > 0 {
        bail!(
            "{}: {} detections had a NaN score",
            predictions.display(),
            ap.num_ignored()
        );
    }
    let m = ap.finish();
    let per_class: Vec<Value> = m
        .per_class
        .iter()
        .map(|c| {
            json!({
                "class": c.class,
                "name": classes[c.class as usize],
                "ap50": c.ap50,
                "ap50_95": c.ap50_95,
                "recall50": c.recall50,
                "num_gt": c.num_gt,
                "num_det": c.num_det,
            })
        })
        .collect();
    let per_class_ap50: serde_json::Map<String, Value> = m
        .per_class
        .iter()
        .map(|c| (classes[c.class as usize].clone(), json!(c.ap50)))
        .collect();
    Ok(json!({
        "dataset": data.to_string_lossy(),
        "manifest_hash": manifest.hash(),
        "predictions": predictions.to_string_lossy(),
        "images": by_index.len(),
        "detections": detections,
        "network_input": network.map(|(w, h)| [w, h]),
        "evaluator": "percept::eval::metrics::DetectionEvaluator::coco (101-point COCO AP, IoU 0.50:0.05:0.95, ignore regions as crowd)",
        "map50": m.map50,
        "map50_95": m.map50_95,
        "per_class_ap50": per_class_ap50,
        "per_class": per_class,
    }))
}
