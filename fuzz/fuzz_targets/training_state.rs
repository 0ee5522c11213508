//! Fuzzes the `training_state` reader (see `readers.rs` for the contract it checks).
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run training_state -- -max_total_time=300 -jobs=1 -workers=1`.
//! Seeds: `corpus/training_state/`, written by
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`.
#![no_main]

#[path = "../readers.rs"]
mod readers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| readers::training_state(data));
