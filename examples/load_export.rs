//! Loading an exported model the way an inference stack would: read the model card, rebuild
//! the network, run it on an image and print the detections.
//!
//! ```sh
//! cargo run --release --example load_export -- runs/quickstart/export/model.safetensors \
//!     runs/quickstart/predict/held-out-0.png
//! ```

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::backend::Flex;
use percept::eval::model_file::load_model;
use percept::eval::predict::{predict_image, read_image};

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model, image] = args.as_slice() else {
        bail!("usage: load_export <model.safetensors> <image.png|jpg>");
    };
    let device = Default::default();
    let (net, card) = load_model::<Flex>(model, &device)?;
    println!(
        "{} network, {} classes {:?}, input {}x{}, trained at site {} on regions {:?}",
        card.architecture.size.name(),
        card.classes.len(),
        card.classes,
        card.input.width,
        card.input.height,
        card.provenance.site_region,
        card.provenance.regions
    );
    let rgb = read_image(image)?;
    let p = predict_image(&net, &card, &rgb, image, &device);
    for d in &p.detections {
        println!(
            "{:<14} {:.2}  [{:.0}, {:.0}, {:.0}, {:.0}]",
            d.class_name, d.score, d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]
        );
    }
    if let Some(f) = p.drivable_fraction {
        println!("drivable: {:.1}% of the image", 100.0 * f);
    }
    if let Some(n) = p.lane_pixels {
        println!("lane-line pixels: {n}");
    }
    Ok(())
}
