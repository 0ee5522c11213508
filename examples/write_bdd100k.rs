//! Writes synthetic road scenes in BDD100K's on-disk layout (see
//! `percept_import::synthetic`), to try `percept import bdd100k` without the real dataset:
//!
//! ```sh
//! cargo run --release --example write_bdd100k -- <dir> [frames=1000] [width=1280] [height=720]
//! percept import bdd100k --images <dir>/images --labels <dir>/det_train.json \
//!     --drivable <dir>/drivable --lanes <dir>/lanes --region US --out <dataset>
//! ```

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use percept::import::synthetic::write_bdd100k_layout;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .context("usage: write_bdd100k <dir> [frames] [width] [height]")?,
    );
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i)
            .map_or(Ok(default), |s| s.parse().with_context(|| format!("{s:?}")))
    };
    let frames = number(1, 1000)?;
    let (width, height) = (number(2, 1280)? as u32, number(3, 720)? as u32);
    let layout =
        write_bdd100k_layout(&dir, frames, width, height, &|_| {}).map_err(|e| anyhow!(e))?;
    println!("wrote {frames} frames: labels {}", layout.labels.display());
    Ok(())
}
