//! Writes the seed corpus of the `shard_reader` fuzz target: small valid shards of synthetic
//! scenes (two 64x64 frames; one 96x64 left-hand-traffic frame; an empty shard), each frame
//! with an ignore region. The `seed-v1-*` seeds beside them are format-1 shards (no ignore regions),
//! which the reader still reads.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`

use std::path::Path;

use percept_data::{IgnoreRegion, ShardWriter, TrafficSide};

use percept_synth::SceneGenerator;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/shard_reader");
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let shards: [(&str, SceneGenerator, u64); 3] = [
        (
            "seed-two-64x64.shard",
            SceneGenerator::new(64, 64, TrafficSide::Right, 1),
            2,
        ),
        (
            "seed-one-96x64-left.shard",
            SceneGenerator::new(96, 64, TrafficSide::Left, 2),
            1,
        ),
        (
            "seed-empty.shard",
            SceneGenerator::new(64, 64, TrafficSide::Right, 3),
            0,
        ),
    ];
    for (name, generator, frames) in shards {
        let mut w = ShardWriter::create(dir.join(name)).expect("create a seed shard");
        for i in 0..frames {
            let mut sample = generator.generate(i);
            sample.ignore.push(IgnoreRegion {
                x1: 4.0,
                y1: 4.5,
                x2: 20.0,
                y2: 12.0,
            });
            w.push(&sample).expect("encode a synthetic frame");
        }
        let info = w.finish().expect("finish a seed shard");
        println!("{name}: {} samples, {} bytes", info.samples, info.bytes);
    }
}
