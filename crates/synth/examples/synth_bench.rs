//! Measures synthetic scene generation time per frame on one thread, and the throughput of
//! writing a synthetic dataset (generation + JPEG/PNG encoding + shards) on all cores.
//!
//! `cargo run --release -p percept-data --example synth_bench [frames]`

use std::time::Instant;

use percept_data::TrafficSide;

use percept_synth::{write_synthetic_dataset, SceneGenerator, SynthOptions};

fn main() {
    let frames: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    for (w, h) in [(320, 192), (640, 384), (1280, 720)] {
        let g = SceneGenerator::new(w, h, TrafficSide::Right, 1);
        // Warm-up: page in the code and the allocator.
        let _ = g.generate(u64::MAX);
        let mut times: Vec<f64> = (0..frames)
            .map(|i| {
                let t = Instant::now();
                let s = g.generate(i);
                std::hint::black_box(&s);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "{w}x{h}: mean {mean:.2} ms, median {:.2} ms, max {:.2} ms per frame ({frames} frames, one thread)",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SynthOptions {
        name: "bench".into(),
        region: "DE".into(),
        width: 640,
        height: 384,
        train: 128,
        val: 0,
        seed: 1,
        samples_per_shard: 64,
    };
    let t = Instant::now();
    let m = write_synthetic_dataset(dir.path(), &opts, &|_| {}).expect("dataset");
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = m
        .shards
        .iter()
        .map(|s| std::fs::metadata(dir.path().join(&s.file)).map_or(0, |md| md.len()))
        .sum();
    println!(
        "write_synthetic_dataset 640x384: {:.1} samples/s on {} threads, {:.0} KiB per sample",
        opts.train as f64 / secs,
        rayon::current_num_threads(),
        bytes as f64 / opts.train as f64 / 1024.0
    );
}
