//! Fuzzes `ShardReader`: whatever the bytes, opening and reading a shard gives a `DataError`
//! naming the shard (and the sample), never a panic, an out-of-bounds read or an unbounded
//! allocation; and every sample that reads is one a writer accepts (see `readers::shard`).
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run shard_reader -- -max_total_time=600 -jobs=1`
//! (with `-jobs`, libFuzzer logs to `fuzz-N.log` in the working directory, which `fuzz/`
//! ignores). The seeds are the `seed-*` shards in `corpus/shard_reader/`;
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus` rewrites them.
#![no_main]

#[path = "../readers.rs"]
mod readers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| readers::shard(data));
