//! Writes a percept dataset (its train and val splits) in ultralytics' YOLO layout, so that
//! ultralytics can train on exactly the frames percept trains on (see
//! `benches/ultralytics/`):
//!
//! ```text
//! OUT/data.yaml                 path, train, val, names (the manifest's classes, in order)
//! OUT/images/{train,val}/NAME.png
//! OUT/labels/{train,val}/NAME.txt   one line per box: class cx cy w h, normalised to [0, 1]
//! OUT/export.json               what was written: counts, classes, ignore handling
//! ```
//!
//! NAME is the sample's index within its split, zero-padded to six digits (`000042`); the
//! predictions JSON that `score_detections` reads is keyed by the same names.
//!
//! ```sh
//! cargo run --example yolo_export -- runs/synth-de runs/synth-de-yolo [--ignore fill|drop]
//! ```
//!
//! Images are written as PNG of the decoded frames, so ultralytics sees the pixels percept's
//! pipeline decodes (no second JPEG decoder in between). Boxes are clipped to the image; a
//! box with no area left is dropped.
//!
//! Ignore regions (KITTI's `DontCare` and the like; percept trains them as neither object nor
//! background and its evaluation counts no detection inside them as a false positive) have no
//! counterpart in YOLO's label format. In the train split they are, by default, filled with
//! the letterbox grey (114) in the written image (`--ignore fill`), so that unlabelled objects
//! in them are not learnt as background; `--ignore drop` leaves the image as it is and only
//! leaves them out. The val split is never altered: `score_detections` applies its ignore
//! regions when scoring, as `percept eval` does. Synthetic datasets have none.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use image::Rgb;
use percept::data::{Manifest, Sample, Split};
use percept::train::data::open_for_site;

/// The grey percept's letterbox pads with (and ultralytics' letterbox too).
const FILL: u8 = 114;

/// What becomes of a train frame's ignore regions (YOLO's labels have none).
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum IgnoreHandling {
    /// Filled with the letterbox grey, so no unlabelled object is learnt as background.
    Fill,
    /// Left as they are, the regions left out.
    Drop,
}

/// Writes a percept dataset in ultralytics' YOLO layout.
#[derive(Parser)]
struct Args {
    /// The percept dataset (train and val splits).
    data: PathBuf,
    /// A new or empty directory.
    out: PathBuf,
    #[arg(long, value_enum, default_value = "fill")]
    ignore: IgnoreHandling,
}

fn main() -> Result<()> {
    let args = Args::parse();
    export(&args.data, &args.out, args.ignore)
}

/// Name of sample `index` in the export (image and label file stem, predictions key).
fn name_of(index: usize) -> String {
    format!("{index:06}")
}

fn export(data: &Path, out: &Path, ignore: IgnoreHandling) -> Result<()> {
    if out.exists()
        && fs::read_dir(out)
            .with_context(|| format!("{}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{}: exists and is not empty (ultralytics reads every file in images/, so an \
             export is only written into a new or empty directory)",
            out.display()
        );
    }
    let manifest = Manifest::load_dir(data)
        .with_context(|| format!("reading the manifest of {}", data.display()))?;
    let mut summary = serde_json::Map::new();
    let mut ignored_regions = 0usize;
    for split in [Split::Train, Split::Val] {
        let dataset = open_for_site(data, split, &manifest.region)
            .with_context(|| format!("opening the {split} split of {}", data.display()))?;
        let images = out.join("images").join(split.as_str());
        let labels = out.join("labels").join(split.as_str());
        for dir in [&images, &labels] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (mut boxes, mut empty, mut dropped) = (0usize, 0usize, 0usize);
        for i in 0..dataset.len() {
            let mut sample = dataset
                .get(i)
                .with_context(|| format!("reading {split} sample {i} of {}", data.display()))?;
            if split == Split::Train && ignore == IgnoreHandling::Fill {
                fill_ignore_regions(&mut sample);
            }
            ignored_regions += sample.ignore.len();
            let (text, written) = label_lines(&sample);
            dropped += sample.boxes.len() - written;
            boxes += written;
            empty += usize::from(written == 0);
            let name = name_of(i);
            let png = images.join(format!("{name}.png"));
            sample
                .image
                .save(&png)
                .with_context(|| format!("writing {}", png.display()))?;
            let txt = labels.join(format!("{name}.txt"));
            fs::write(&txt, text).with_context(|| format!("writing {}", txt.display()))?;
        }
        println!(
            "{split}: {} images, {boxes} boxes ({empty} images without any, {dropped} boxes \
             outside the image dropped) -> {}",
            dataset.len(),
            images.display()
        );
        summary.insert(
            split.as_str().to_string(),
            serde_json::json!({ "images": dataset.len(), "boxes": boxes, "dropped_boxes": dropped }),
        );
    }
    let out_abs = std::path::absolute(out).with_context(|| format!("{}", out.display()))?;
    let mut yaml = String::new();
    writeln!(
        yaml,
        "# Written by percept's examples/yolo_export.rs from {}",
        data.display()
    )?;
    // JSON strings are valid YAML scalars: names and paths are quoted whatever they hold.
    writeln!(
        yaml,
        "path: {}",
        serde_json::to_string(&out_abs.to_string_lossy())?
    )?;
    writeln!(yaml, "train: images/train")?;
    writeln!(yaml, "val: images/val")?;
    writeln!(yaml, "nc: {}", manifest.classes.len())?;
    writeln!(yaml, "names:")?;
    for (i, c) in manifest.classes.iter().enumerate() {
        writeln!(yaml, "  {i}: {}", serde_json::to_string(c)?)?;
    }
    let yaml_path = out.join("data.yaml");
    fs::write(&yaml_path, yaml).with_context(|| format!("writing {}", yaml_path.display()))?;
    summary.insert("dataset".into(), serde_json::json!(data.to_string_lossy()));
    summary.insert("manifest_hash".into(), serde_json::json!(manifest.hash()));
    summary.insert("classes".into(), serde_json::json!(manifest.classes));
    summary.insert(
        "ignore".into(),
        serde_json::json!({
            "regions": ignored_regions,
            "train": match ignore { IgnoreHandling::Fill => "filled grey 114", IgnoreHandling::Drop => "dropped" },
            "val": "left as is; applied by score_detections",
        }),
    );
    let summary_path = out.join("export.json");
    fs::write(
        &summary_path,
        serde_json::to_string_pretty(&serde_json::Value::Object(summary))?,
    )
    .with_context(|| format!("writing {}", summary_path.display()))?;
    println!(
        "wrote {} ({} classes: {})",
        yaml_path.display(),
        manifest.classes.len(),
        manifest.classes.join(", ")
    );
    Ok(())
}

/// YOLO label lines of `sample`'s boxes, clipped to the image, and how many were written.
fn label_lines(sample: &Sample) -> (String, usize) {
    let (w, h) = sample.image.dimensions();
    let (wf, hf) = (w as f64, h as f64);
    let mut text = String::new();
    let mut written = 0;
    for b in &sample.boxes {
        let x1 = (b.x1 as f64).clamp(0.0, wf);
        let x2 = (b.x2 as f64).clamp(0.0, wf);
        let y1 = (b.y1 as f64).clamp(0.0, hf);
        let y2 = (b.y2 as f64).clamp(0.0, hf);
        let has_area = x2 > x1 && y2 > y1; // false for NaN corners too
        if !has_area {
            continue;
        }
        let _ = writeln!(
            text,
            "{} {:.6} {:.6} {:.6} {:.6}",
            b.class,
            (x1 + x2) / 2.0 / wf,
            (y1 + y2) / 2.0 / hf,
            (x2 - x1) / wf,
            (y2 - y1) / hf
        );
        written += 1;
    }
    (text, written)
}

/// Paints `sample`'s ignore regions grey (pixels whose centre lies inside).
fn fill_ignore_regions(sample: &mut Sample) {
    let (w, h) = sample.image.dimensions();
    for r in &sample.ignore {
        let x0 = (r.x1.max(0.0).round() as u32).min(w);
        let x1 = (r.x2.max(0.0).round() as u32).min(w);
        let y0 = (r.y1.max(0.0).round() as u32).min(h);
        let y1 = (r.y2.max(0.0).round() as u32).min(h);
        for y in y0..y1 {
            for x in x0..x1 {
                sample.image.put_pixel(x, y, Rgb([FILL; 3]));
            }
        }
    }
}
