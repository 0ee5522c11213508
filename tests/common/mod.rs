//! Helpers shared by the end-to-end tests.

// Each test crate uses a subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use percept::data::{write_synthetic_dataset, SynthOptions};

/// Frame and network size of the test datasets.
pub const W: u32 = 96;
pub const H: u32 = 64;

/// Writes a synthetic dataset `test-<region>` with `train` + 4 held-out scenes into
/// `<dir>/synth-<region>`.
pub fn synth(dir: &Path, region: &str, train: usize, seed: u64) -> PathBuf {
    let out = dir.join(format!("synth-{region}"));
    let options = SynthOptions {
        name: format!("test-{region}"),
        region: region.into(),
        width: W,
        height: H,
        train,
        val: 4,
        seed,
        samples_per_shard: 8,
    };
    write_synthetic_dataset(&out, &options, &|_| {}).unwrap();
    out
}

/// What a run of the `percept` binary printed.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `percept` binary.
pub fn percept(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_percept"))
        .args(args)
        .output()
        .unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
