//! Writes synthetic road scenes in BDD100K's on-disk layout, for trying `percept import
//! bdd100k` without the real dataset and for measuring the importer at scale:
//!
//! ```text
//! <out>/images/<id>.jpg                 JPEG, quality 90
//! <out>/det_train.json                  Scalabel: [{name, attributes, labels: [{category, box2d}]}]
//! <out>/drivable/<id>.png               0 direct drivable, 2 background
//! <out>/lanes/<id>.png                  bit-packed: 6 (single white, solid, parallel) on lane
//!                                       pixels, 255 (background bit set) elsewhere
//! ```
//!
//! Boxes are written in Scalabel's inclusive-corner convention (`x2 = right edge - 1`).
//!
//! ```sh
//! cargo run --release --example write_bdd100k -- <out> [frames=1000] [width=1280] [height=720]
//! percept import bdd100k --images <out>/images --labels <out>/det_train.json \
//!     --drivable <out>/drivable --lanes <out>/lanes --region US --out <dataset>
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::GrayImage;
use percept::data::{Sample, SceneGenerator, SYNTH_CLASSES};
use rayon::prelude::*;
use serde_json::json;

/// BDD100K's category for each synthetic class.
fn category(class: u16) -> &'static str {
    match SYNTH_CLASSES[class as usize] {
        "cyclist" => "rider",
        "traffic light" => "traffic light",
        "traffic sign" => "traffic sign",
        name => name,
    }
}

/// Frames generated and written at once.
const CHUNK: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .context("usage: write_bdd100k <out> [frames] [width] [height]")?,
    );
    let number = |i: usize, default: u32| -> Result<u32> {
        args.get(i)
            .map_or(Ok(default), |s| s.parse().with_context(|| format!("{s:?}")))
    };
    let (frames, width, height) = (number(1, 1000)?, number(2, 1280)?, number(3, 720)?);
    for dir in ["images", "drivable", "lanes"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    let generator = SceneGenerator::for_region(width, height, "US", 11);
    let labels_path = out.join("det_train.json");
    let mut labels = BufWriter::new(File::create(&labels_path)?);
    labels.write_all(b"[\n")?;
    for start in (0..frames).step_by(CHUNK) {
        let end = (start + CHUNK as u32).min(frames);
        let entries: Vec<String> = (start..end)
            .into_par_iter()
            .map(|i| write_frame(&out, &generator.generate(u64::from(i)), i))
            .collect::<Result<_>>()?;
        for (k, entry) in entries.iter().enumerate() {
            let last = start as usize + k + 1 == frames as usize;
            writeln!(labels, "{entry}{}", if last { "" } else { "," })?;
        }
        eprint!("\r{end}/{frames} frames");
    }
    labels.write_all(b"]\n")?;
    labels.flush()?;
    eprintln!("\nwrote {}", out.display());
    Ok(())
}

/// Writes one frame's image and masks; returns its Scalabel JSON entry.
fn write_frame(out: &Path, sample: &Sample, index: u32) -> Result<String> {
    let name = format!("{index:08}");
    let mut jpeg = BufWriter::new(File::create(out.join(format!("images/{name}.jpg")))?);
    JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&sample.image)?;
    jpeg.flush()?;
    let remap = |mask: &GrayImage, on: u8, off: u8| {
        GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
            image::Luma([if mask.get_pixel(x, y)[0] == 1 {
                on
            } else {
                off
            }])
        })
    };
    remap(&sample.drivable, 0, 2).save(out.join(format!("drivable/{name}.png")))?;
    remap(&sample.lanes, 6, 255).save(out.join(format!("lanes/{name}.png")))?;
    let labels: Vec<_> = sample
        .boxes
        .iter()
        .enumerate()
        .map(|(id, b)| {
            json!({
                "id": id.to_string(),
                "category": category(b.class),
                "attributes": {"occluded": false, "truncated": false},
                // Inclusive corners: the last pixel column and row inside the box.
                "box2d": {"x1": b.x1, "y1": b.y1, "x2": b.x2 - 1.0, "y2": b.y2 - 1.0},
            })
        })
        .collect();
    let c = &sample.conditions;
    Ok(json!({
        "name": format!("{name}.jpg"),
        "attributes": {"weather": c.weather, "scene": c.scene, "timeofday": c.time_of_day},
        "timestamp": 10000,
        "labels": labels,
    })
    .to_string())
}
