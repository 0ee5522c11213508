//! Synthetic road scenes written in BDD100K's on-disk layout: something to try
//! `percept import bdd100k` on without the real dataset, and the input of `percept bench
//! import`.
//!
//! ```text
//! <dir>/images/<id>.jpg      JPEG, quality 90
//! <dir>/det_train.json       Scalabel: [{name, attributes, labels: [{category, box2d}]}]
//! <dir>/drivable/<id>.png    0 direct drivable, 2 background
//! <dir>/lanes/<id>.png       6 (single white, solid, parallel) on lane pixels, 255 (background
//!                            bit set) elsewhere
//! ```
//!
//! Boxes are written with Scalabel's inclusive corners (`x2` = the last column inside), so an
//! import gives back the generator's boxes exactly.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::codecs::jpeg::JpegEncoder;
use image::{GrayImage, Luma};
use percept_data::Sample;
use percept_synth::{SceneGenerator, SYNTH_CLASSES};
use rayon::prelude::*;
use serde_json::json;

/// Where [`write_bdd100k_layout`] put each part (the paths `percept import bdd100k` takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bdd100kLayout {
    pub images: PathBuf,
    pub labels: PathBuf,
    pub drivable: PathBuf,
    pub lanes: PathBuf,
}

/// Frames generated at once: bounds memory, keeps every core busy.
const CHUNK: usize = 64;

/// Writes `frames` synthetic US scenes of `width` x `height` in BDD100K's layout under `dir`
/// (created if missing). `progress(n)` is called with the number of frames written so far.
pub fn write_bdd100k_layout(
    dir: &Path,
    frames: usize,
    width: u32,
    height: u32,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Bdd100kLayout, String> {
    let layout = Bdd100kLayout {
        images: dir.join("images"),
        labels: dir.join("det_train.json"),
        drivable: dir.join("drivable"),
        lanes: dir.join("lanes"),
    };
    for d in [&layout.images, &layout.drivable, &layout.lanes] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let io = |path: &Path, e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let generator = SceneGenerator::for_region(width, height, "US", 11);
    let file = File::create(&layout.labels).map_err(|e| io(&layout.labels, e))?;
    let mut labels = BufWriter::new(file);
    let done = AtomicUsize::new(0);
    let mut entries_written = 0;
    let mut write_labels = |text: &str| -> Result<(), String> {
        labels
            .write_all(text.as_bytes())
            .map_err(|e| io(&layout.labels, e))
    };
    write_labels("[\n")?;
    for start in (0..frames).step_by(CHUNK) {
        let end = (start + CHUNK).min(frames);
        let entries: Vec<String> = (start..end)
            .into_par_iter()
            .map(|i| {
                let entry = write_frame(&layout, &generator.generate(i as u64), i);
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                entry
            })
            .collect::<Result<_, _>>()?;
        for entry in entries {
            entries_written += 1;
            let sep = if entries_written == frames {
                "\n"
            } else {
                ",\n"
            };
            write_labels(&format!("{entry}{sep}"))?;
        }
    }
    write_labels("]\n")?;
    labels.flush().map_err(|e| io(&layout.labels, e))?;
    Ok(layout)
}

/// BDD100K's category for each synthetic class.
fn category(class: u16) -> &'static str {
    match SYNTH_CLASSES[usize::from(class)] {
        "cyclist" => "rider",
        name => name,
    }
}

/// Writes one frame's image and masks; returns its Scalabel JSON entry.
fn write_frame(layout: &Bdd100kLayout, sample: &Sample, index: usize) -> Result<String, String> {
    let id = format!("{index:08}");
    let jpeg_path = layout.images.join(format!("{id}.jpg"));
    let err =
        |path: &Path, e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = File::create(&jpeg_path).map_err(|e| err(&jpeg_path, &e))?;
    let mut jpeg = BufWriter::new(file);
    JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&sample.image)
        .map_err(|e| err(&jpeg_path, &e))?;
    jpeg.flush().map_err(|e| err(&jpeg_path, &e))?;
    let remap = |mask: &GrayImage, on: u8, off: u8| {
        GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
            Luma([if mask.get_pixel(x, y)[0] == 1 {
                on
            } else {
                off
            }])
        })
    };
    for (mask, on, off, dir) in [
        (&sample.drivable, 0, 2, &layout.drivable),
        (&sample.lanes, 6, 255, &layout.lanes),
    ] {
        let path = dir.join(format!("{id}.png"));
        remap(mask, on, off)
            .save(&path)
            .map_err(|e| err(&path, &e))?;
    }
    let labels: Vec<_> = sample
        .boxes
        .iter()
        .enumerate()
        .map(|(k, b)| {
            json!({
                "id": k.to_string(),
                "category": category(b.class),
                "attributes": {"occluded": false, "truncated": false},
                // Inclusive corners: the last column and row inside the box.
                "box2d": {"x1": b.x1, "y1": b.y1, "x2": b.x2 - 1.0, "y2": b.y2 - 1.0},
            })
        })
        .collect();
    let c = &sample.conditions;
    Ok(json!({
        "name": format!("{id}.jpg"),
        "attributes": {"weather": c.weather, "scene": c.scene, "timeofday": c.time_of_day},
        "timestamp": 10000,
        "labels": labels,
    })
    .to_string())
}
