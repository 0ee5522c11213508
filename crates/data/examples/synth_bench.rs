//! Measures synthetic scene generation time per frame on one thread.
//!
//! `cargo run --release -p percept-data --example synth_bench [frames]`

use std::time::Instant;

use percept_data::{SceneGenerator, TrafficSide};

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
}
