//! One image through a percept model file on the CPU with percept-infer alone: the detections,
//! the masks as PNG, and with `--repeat N` the batch-1 latency as one JSON line (what
//! `benches/infer/latency.py` parses).
//!
//! ```sh
//! cargo run --release -p percept-infer --example detect -- \
//!     --model runs/quickstart/export/model.safetensors \
//!     --image runs/quickstart/predict/held-out-0.png --out /tmp/detect --repeat 50
//! ```
//!
//! The thread count is rayon's (burn-flex's pool): `RAYON_NUM_THREADS`, else every core.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use percept_infer::{prepare, Detector};

#[derive(Parser)]
#[command(about = "Run a percept model file on an image (CPU) and print the detections")]
struct Args {
    /// Model file (safetensors export or checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// Image (PNG or JPEG).
    #[arg(long)]
    image: PathBuf,
    /// Directory to write the drivable-area and lane-line masks to, as PNG.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Time this many batch-1 runs (after 3 warm-up runs) and print median and p90 latency.
    #[arg(long)]
    repeat: Option<usize>,
    /// Write the network input (the letterboxed, normalised image) to this file as raw
    /// little-endian f32 `[1, 3, height, width]`: another runtime can time the same input.
    #[arg(long)]
    save_input: Option<PathBuf>,
}

/// Runs before timing: the first runs allocate and fault in the buffers a steady state reuses.
const WARM_UP: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let detector = Detector::load(&args.model)?;
    let image = image::open(&args.image)
        .map_err(|e| format!("image {}: {e}", args.image.display()))?
        .to_rgb8();
    let found = detector.detect(&image);
    for d in &found.boxes {
        let [x1, y1, x2, y2] = d.bbox;
        println!(
            "{:<14} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]",
            d.class_name, d.score
        );
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, mask) in [("drivable", &found.drivable), ("lanes", &found.lanes)] {
            if let Some(mask) = mask {
                let path = dir.join(format!("{name}.png"));
                mask.save(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    let card = detector.card();
    let (w, h) = (card.input.width as u32, card.input.height as u32);
    let (chw, _) = prepare(&image, w, h, &card.normalization);
    if let Some(path) = &args.save_input {
        let bytes: Vec<u8> = chw.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(n) = args.repeat.filter(|&n| n > 0) {
        // (a) the network alone, on the prepared input; (b) the whole of `detect`.
        let forward = time(n, || drop(detector.forward(&chw)));
        let detect = time(n, || drop(detector.detect(&image)));
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |t| t.get()));
        let stats = |runs: &[Duration]| serde_json::json!({ "median": quantile(runs, 0.5), "p90": quantile(runs, 0.9) });
        println!(
            "{}",
            serde_json::json!({
                "runs": n,
                "threads": threads,
                "input": [w, h],
                "image": [image.width(), image.height()],
                "forward_ms": stats(&forward),
                "detect_ms": stats(&detect),
            })
        );
    }
    Ok(())
}

/// `n` timed runs of `run` after [`WARM_UP`] untimed ones, sorted.
fn time(n: usize, mut run: impl FnMut()) -> Vec<Duration> {
    for _ in 0..WARM_UP {
        run();
    }
    let mut runs: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    runs.sort();
    runs
}

/// The `q` quantile of sorted `runs` in milliseconds (nearest rank).
fn quantile(runs: &[Duration], q: f64) -> f64 {
    let rank = ((q * runs.len() as f64).ceil() as usize).clamp(1, runs.len());
    runs[rank - 1].as_secs_f64() * 1e3
}
