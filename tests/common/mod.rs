//! Helpers shared by the end-to-end tests.

// Each test crate uses a subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use percept::eval::model_file::{InputSize, ModelCard, Normalization, Provenance, MODEL_FORMAT};
use percept::model::{DecodeOptions, ModelSize, PerceptionNetConfig};
use percept::synth::{write_synthetic_dataset, SynthOptions};
use percept::train::config::RunConfig;

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

/// A nano run `run` under `<dir>/runs` at a site in `site`: batch 2, a metrics line and a
/// checkpoint every step; `data_extra` adds keys to `[data]`.
pub fn run_config(
    dir: &Path,
    datasets: &[&Path],
    site: &str,
    steps: usize,
    data_extra: &str,
) -> RunConfig {
    let datasets: Vec<String> = datasets
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let text = format!(
        r#"
name = "run"
runs_dir = "{runs}"
[site]
region = "{site}"
name = "test-site"
[model]
size = "nano"
input = {{ width = {W}, height = {H} }}
[data]
datasets = [{datasets}]
{data_extra}
[train]
steps = {steps}
batch_size = 2
seed = 5
lr = 0.002
[optimizer]
weight_decay = 0.0
[schedule]
kind = "constant"
[checkpoint]
every = 1
keep_last = 0
[logging]
every = 1
"#,
        runs = dir.join("runs").display(),
        datasets = datasets.join(", "),
    );
    RunConfig::parse(&text, Path::new("test.toml")).unwrap()
}

/// What a run of the `percept` binary printed.
pub struct Output {
    pub ok: bool,
    /// The exit status (`None`: ended by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A run that trains exactly like another over the same global batch, however it is split:
/// plain SGD (update = lr x gradient), `accumulation` micro-batches a step, no checkpoints
/// but the final one.
pub fn sgd_config(
    dir: &Path,
    data: &Path,
    name: &str,
    steps: usize,
    accumulation: usize,
) -> RunConfig {
    let mut c = run_config(dir, &[data], "DE", steps, "");
    c.name = name.into();
    c.optimizer.kind = percept::train::config::OptimizerKind::Sgd;
    c.optimizer.momentum = 0.0;
    c.train.lr = 0.05;
    c.train.grad_accumulation = accumulation;
    c.checkpoint.every = 0;
    c.validate().unwrap();
    c
}

/// Runs the `percept` binary.
pub fn percept(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_percept"))
        .args(args)
        .output()
        .unwrap();
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `loss` object of each `step` line of a run's `metrics.jsonl`.
pub fn step_loss_objects(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].clone())
        .collect()
}

/// The drivable-area plus lane terms of each step line: the part of the loss whose targets do
/// not move as the network learns (detection's quality targets do).
pub fn step_segmentation_losses(run: &Path) -> Vec<f64> {
    step_loss_objects(run)
        .iter()
        .map(|l| l["drivable"].as_f64().unwrap() + l["lanes"].as_f64().unwrap())
        .collect()
}

/// The `loss.total` of each `step` line of a run's `metrics.jsonl`.
pub fn step_losses(run: &Path) -> Vec<f64> {
    step_loss_objects(run)
        .iter()
        .map(|l| l["total"].as_f64().unwrap())
        .collect()
}

/// A provenance of a run at `site_name` in `site_region` over `regions`' data: no datasets, no
/// base, config hash all zeros, `steps` steps, percept version "test".
pub fn provenance(
    site_region: &str,
    site_name: &str,
    regions: &[&str],
    steps: usize,
) -> Provenance {
    Provenance {
        site_region: site_region.into(),
        site_name: site_name.into(),
        datasets: Vec::new(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        config_hash: "0".repeat(64),
        base_checkpoint: None,
        steps,
        audit_head: None,
        site_key: None,
        percept_version: "test".into(),
        base: None,
        finetune: None,
        quantization: None,
    }
}

/// The card of a nano network of `classes` for the test datasets' input (`W` x `H`), default
/// normalization, decoding and eval resolution, with `provenance`.
pub fn model_card(classes: &[String], provenance: Provenance) -> ModelCard {
    ModelCard {
        format: MODEL_FORMAT.into(),
        architecture: PerceptionNetConfig::new(ModelSize::Nano, classes.len()),
        classes: classes.to_vec(),
        input: InputSize {
            width: W as usize,
            height: H as usize,
        },
        normalization: Normalization::default(),
        decode: DecodeOptions::default(),
        eval_resolution: Default::default(),
        provenance,
    }
}
