//! Fuzzes the `audit_log` reader (see `readers.rs` for the contract it checks).
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run audit_log -- -max_total_time=300 -jobs=1 -workers=1`.
//! Seeds: `corpus/audit_log/`, written by
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`.
#![no_main]

#[path = "../readers.rs"]
mod readers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| readers::audit_log(data));
