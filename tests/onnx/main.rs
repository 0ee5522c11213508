//! ONNX export: parity in ONNX Runtime, metadata and provenance, and the refusals; exports run
//! in ONNX Runtime from Rust by `percept eval` and `percept predict`. One test binary: each
//! binary under tests/ links all of burn, so fewer of them build and link faster.

#[path = "../common/mod.rs"]
mod common;
mod export_refusals;
mod parity;
mod runtime;
