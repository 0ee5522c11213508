//! The `percept` command line: a thin layer over `percept::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use percept::commands;
use percept::data::Split;
use percept::eval::eval::MetricResolution;
use percept::model::{ModelSize, PerceptionNetConfig, RangeMethod};
use percept::onnx::{Decode, OnnxPrecision};
use percept::quickstart::{quickstart, QuickstartOptions};
use percept::synth::SynthOptions;
use percept::train::cluster::Cluster;
use percept::train::config_source::LayeredConfig;
use percept::train::onnx_export::{CalibrationRequest, OnnxExportRequest};
use percept::train::{DeviceSpec, Devices, RunConfig};

mod import_cmd;
use import_cmd::{run_import, ImportFormat};

#[derive(Parser)]
#[command(
    name = "percept",
    version,
    about = "Train, evaluate and export a multi-task driving perception network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--resolution` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Resolution {
    /// The images' own resolution: predictions mapped back out of the letterbox
    Original,
    /// The network's input resolution, on letterboxed images and labels
    Network,
}

impl Resolution {
    fn metric(self) -> MetricResolution {
        match self {
            Resolution::Original => MetricResolution::Original,
            Resolution::Network => MetricResolution::Network,
        }
    }
}

/// `percept export --format` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// safetensors weights with the model card in their metadata (percept's model file)
    Safetensors,
    /// An ONNX graph, batch norm folded, the model card in its metadata
    Onnx,
}

/// `percept export --precision` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportPrecision {
    /// float32 weights and arithmetic
    Fp32,
    /// float16 weights and arithmetic (float32 input and outputs)
    Fp16,
    /// int8 weights (per output channel) and activations (calibrated), QDQ format
    Int8,
}

/// `percept export --decode` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportDecode {
    /// The network's raw outputs only; the caller decodes
    Raw,
    /// Raw outputs plus `boxes` (input pixels) and `scores`
    Boxes,
    /// `boxes` and `scores` plus `detections` after ONNX NonMaxSuppression
    Nms,
}

#[derive(Subcommand)]
enum Command {
    /// Synthetic data -> training -> evaluation -> export -> prediction, into runs/quickstart/
    Quickstart {
        /// Device: cpu, wgpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Training steps (default: the smoke config's)
        #[arg(long)]
        steps: Option<usize>,
        /// Synthetic training scenes
        #[arg(long, default_value_t = 2000)]
        train_samples: usize,
        /// Synthetic held-out scenes
        #[arg(long, default_value_t = 200)]
        val_samples: usize,
        /// Parent directory of the run
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
    },
    /// Write a synthetic dataset (shards + manifest) of procedural road scenes
    Synth {
        /// Output dataset directory
        #[arg(long)]
        out: PathBuf,
        /// Region the data belongs to (ISO 3166-1 alpha-2); sets the traffic side
        #[arg(long, default_value = "DE")]
        region: String,
        /// Draw a country's roads by its profile: a built-in code (CN, DE, GB, IN, JP, US) or
        /// the path of a profile file (.toml, like configs/countries/jp.toml). Scenes get its
        /// traffic side, centre-line colour, edge lines, sign families and new vehicle
        /// classes; boxes are labelled in its class list; the region is its code
        #[arg(long, value_name = "CODE_OR_FILE", conflicts_with = "region")]
        country: Option<String>,
        /// Training scenes
        #[arg(long, default_value_t = 2000)]
        train: usize,
        /// Held-out scenes
        #[arg(long, default_value_t = 200)]
        val: usize,
        /// Frame width in pixels
        #[arg(long, default_value_t = 320)]
        width: u32,
        /// Frame height in pixels
        #[arg(long, default_value_t = 192)]
        height: u32,
        /// Seed: the same seed gives the same scenes
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Scenes per shard file
        #[arg(long, default_value_t = 256)]
        samples_per_shard: usize,
        /// Dataset name in the manifest (default: synthetic-<region>, or synthetic-<code>
        /// with --country)
        #[arg(long)]
        name: Option<String>,
        /// Regions whose sites may process the data, comma-separated (the manifest's policy;
        /// default: only the data's own region), e.g. US,DE
        #[arg(long, value_name = "CODES", value_delimiter = ',')]
        processing_regions: Vec<String>,
    },
    /// Import a public dataset from disk into region-tagged shards (resumable)
    Import {
        #[command(subcommand)]
        format: ImportFormat,
    },
    /// Train from a run config (TOML), or resume a run from its newest checkpoint
    Train {
        /// Run config (TOML), e.g. configs/smoke.toml; follows its `extends` chain
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Override a config key, e.g. --set train.lr=0.002 (repeatable; VALUE is a TOML
        /// value, or else a string)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue the run in RUN_DIR (runs/<name>) from its newest intact checkpoint, with
        /// the config it started with
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Device: cpu, wgpu, cuda or cuda:N; a list (cuda:0,cuda:1) trains data-parallel,
        /// train.batch_size images per device. Under mpirun/srun (one process per GPU): cuda
        /// gives each rank cuda:<local rank>, a list each local rank its entry
        #[arg(long, visible_alias = "devices", default_value = "cpu")]
        device: String,
    },
    /// Fine-tune a base model for one country (a config with [finetune]: profile, freezing,
    /// distillation, L2-SP), then compare base and fine-tuned on the country's held-out split
    Finetune {
        /// Base model (a checkpoint or export of the global or another country's model)
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        base: Option<PathBuf>,
        /// Fine-tune config (TOML) with a [finetune] table, e.g. configs/finetune-jp.toml
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Override a config key, e.g. --set finetune.freeze=backbone (repeatable)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue the fine-tune in RUN_DIR from its newest intact checkpoint (same base file)
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Device: cpu, wgpu, cuda or cuda:N (distillation and L2-SP run on one device)
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Print or check a run config as resolved: `extends` chain, --set overrides, defaults
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Evaluate a checkpoint or export on a dataset split
    Eval {
        /// Model file (checkpoint or export): safetensors, or ONNX (run in ONNX Runtime, on the
        /// CPU)
        #[arg(long)]
        model: PathBuf,
        /// Dataset directory
        #[arg(long)]
        data: PathBuf,
        /// Split: train or val
        #[arg(long, default_value = "val")]
        split: String,
        /// Site region to check the data's policy against (default: the model's training site)
        #[arg(long)]
        site: Option<String>,
        /// Images per forward pass
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Write the report as JSON here
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write a Markdown and HTML report (per-class AP chart, PR curves, example overlays)
        /// into this directory
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// Example prediction overlays in the report, spread evenly over the split
        #[arg(long, default_value_t = 12)]
        examples: usize,
        /// Compute metrics at the images' original resolution or at network resolution
        /// (default: the model's eval.resolution from its run config)
        #[arg(long, value_enum)]
        resolution: Option<Resolution>,
        /// Device: cpu, wgpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Export a checkpoint for deployment: a safetensors model file (verified by reloading) or
    /// an ONNX graph (fp32, fp16, or INT8 calibrated on frames the site may process)
    Export {
        /// Checkpoint, e.g. runs/<name>/checkpoints/final.safetensors
        #[arg(long)]
        checkpoint: PathBuf,
        /// Output file
        #[arg(long)]
        out: PathBuf,
        /// File format
        #[arg(long, value_enum, default_value = "safetensors")]
        format: ExportFormat,
        /// ONNX: number format of the weights and the arithmetic
        #[arg(long, value_enum, default_value = "fp32")]
        precision: ExportPrecision,
        /// ONNX: operator set version, 13 to 21 (older toolchains read older sets)
        #[arg(long, default_value_t = percept::onnx::DEFAULT_OPSET)]
        opset: i64,
        /// ONNX: post-processing inside the graph
        #[arg(long, value_enum, default_value = "boxes")]
        decode: ExportDecode,
        /// INT8: dataset whose frames calibrate the activation ranges (the site's residency
        /// guard must allow it)
        #[arg(long, value_name = "DIR")]
        calibration_data: Option<PathBuf>,
        /// INT8: split of the calibration dataset: train or val
        #[arg(long, default_value = "train")]
        calibration_split: String,
        /// INT8: calibration frames, spread evenly over the split
        #[arg(long, default_value_t = 256)]
        calibration_frames: usize,
        /// INT8: range of each activation: `max` or `percentile:P` of |x|
        #[arg(long, default_value = "percentile:99.99")]
        calibration_method: String,
        /// INT8: site region the calibration data's policy is checked against (default: the
        /// model's training site)
        #[arg(long)]
        site: Option<String>,
        /// Device: cpu, wgpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Run a model on a JPEG/PNG image: overlay PNG + detections JSON
    Predict {
        /// Model file (export or checkpoint): safetensors, or ONNX (run in ONNX Runtime, on the
        /// CPU)
        #[arg(long)]
        model: PathBuf,
        /// Input image (JPEG or PNG)
        #[arg(long)]
        image: PathBuf,
        /// Output directory for <stem>.overlay.png and <stem>.detections.json
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Device: cpu, wgpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Check a run's audit log: the hash chain, its signatures and the heads pinned to it
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Make Ed25519 keys: a data steward's (signs manifests) or a site's (signs audit logs)
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Sign a dataset's manifest with a data steward's secret key (a site's trust store then
    /// accepts it for the steward's regions)
    Sign {
        /// Dataset directory (with manifest.json) or the manifest itself
        dataset: PathBuf,
        /// The steward's secret key file (from `percept keys new`)
        #[arg(long)]
        key: PathBuf,
    },
    /// Show a model file's card: classes, input, decoding and provenance (datasets, regions,
    /// the keys that signed its data and its run's audit log)
    ///
    /// The provenance is a chain, newest first: this file, the model it was fine-tuned from,
    /// and so on back to the first global run. A link whose nested provenance was edited
    /// after it was recorded is reported and the command fails (status 1).
    Inspect {
        /// Model file (export or checkpoint)
        model: PathBuf,
        /// The base model file: check its blake3 is the one recorded and its card's
        /// provenance is the one nested in the chain
        #[arg(long, value_name = "BASE_FILE")]
        base: Option<PathBuf>,
    },
    /// Evaluations side by side: eval.json reports joined into one table (task metrics and
    /// AP@0.5 per class, each report's difference from the first), printed as Markdown
    ///
    /// With --out, also writes compare.md, compare.html, compare.json and a per-class AP
    /// chart (PNG and SVG). Classes are matched by name; a class a report lacks shows "–".
    Compare {
        /// eval.json files (`percept eval --out` or `--report`); the first is the reference
        #[arg(required = true, num_args = 2.., value_name = "EVAL_JSON")]
        reports: Vec<PathBuf>,
        /// A name for each report, in order (repeat once per report; default: its path)
        #[arg(long = "label", value_name = "NAME")]
        labels: Vec<String>,
        /// Write the comparison files into this directory
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Draw a run's training curves from its metrics.jsonl as PNG and SVG charts
    Plot {
        /// Run directory (runs/<name>), or its metrics.jsonl
        #[arg(value_name = "RUN_DIR")]
        run: PathBuf,
        /// Output directory (default: RUN_DIR/plots)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Loss axis: log when every loss is positive (auto), log, or linear with spikes
        /// clipped
        #[arg(long, default_value = "auto", value_parser = ["auto", "log", "linear"])]
        loss_scale: String,
    },
    /// Compile and autotune the GPU kernels a run of a config needs, into the kernel cache
    ///
    /// Runs the config's training step and validation at its shapes on synthetic scenes, so that
    /// a node image prepared once starts training without compiling or tuning; nothing is
    /// written to a run.
    Warmup {
        #[command(flatten)]
        config: ConfigArgs,
        /// Device: wgpu, cuda or cuda:N
        #[arg(long)]
        device: String,
        /// Training steps to run (the first compiles; later ones show what is left)
        #[arg(long, default_value_t = 2)]
        steps: usize,
        /// Detection classes (default: from the manifest of the config's first dataset)
        #[arg(long)]
        classes: Option<usize>,
        /// Where to write the synthetic scenes it trains on (removed afterwards)
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Also write the report as JSON here
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Measure throughput
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Print parameter counts and GFLOPs of the model sizes
    Info {
        /// Number of detection classes
        #[arg(long, default_value_t = 7)]
        classes: usize,
        /// Input width (a multiple of 32)
        #[arg(long, default_value_t = 640)]
        width: usize,
        /// Input height (a multiple of 32)
        #[arg(long, default_value_t = 384)]
        height: usize,
        /// Device to build the networks on: cpu, wgpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// A run config and its overrides.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Run config (TOML); follows its `extends` chain
    #[arg(long)]
    config: PathBuf,
    /// Override a config key, e.g. --set train.lr=0.002 (repeatable; VALUE is a TOML value, or
    /// else a string)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the resolved config as TOML, every default filled in
    Show(ConfigArgs),
    /// Check a config: print "FILE: ok", or every problem (unknown keys, wrong types, invalid
    /// values) with its key and source, and exit with status 1
    Check(ConfigArgs),
}

#[derive(Subcommand)]
enum AuditAction {
    /// Verify the chain of runs/<name>/audit.jsonl; report the first broken, edited,
    /// reordered or missing entry, or that it holds
    Verify {
        /// Run directory (runs/<name>) or an audit.jsonl
        run: PathBuf,
        /// The site's public key (.pub): every entry must be signed by it
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A head written by `percept audit export-head`: the log must still extend it
        #[arg(long, value_name = "FILE")]
        head: Option<PathBuf>,
    },
    /// Print the signed head of a signed log (entries, last hash, the site's signature), to
    /// anchor outside the site; `audit verify --head FILE` checks the log still extends it
    ExportHead {
        /// Run directory (runs/<name>) or an audit.jsonl
        run: PathBuf,
        /// Also write it to this file
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Write a new secret key (owner-only) to FILE and its public key to FILE.pub
    New {
        /// Secret key file to create (never overwritten)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Who holds it, e.g. cn-data-office or shanghai-site
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Input pipeline (read + verify + decode + augment + batch) against JPEG decoding alone
    Data {
        /// Synthetic frames to write and read
        #[arg(long, default_value_t = 64)]
        frames: usize,
        /// Stored frame size, WIDTHxHEIGHT
        #[arg(long, default_value = "1280x720")]
        source: String,
        /// Network input size, WIDTHxHEIGHT
        #[arg(long, default_value = "640x384")]
        input: String,
        /// Images per batch
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Thread counts to measure, comma-separated (default: 1 and every core)
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Passes over the frames per measurement
        #[arg(long, default_value_t = 2)]
        passes: usize,
        /// Share of mosaic samples in the pipeline
        #[arg(long, default_value_t = 0.0)]
        mosaic: f32,
        /// Where to write the scratch dataset (removed afterwards)
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Also write the report as JSON here
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import throughput and peak memory: synthetic frames in BDD100K's layout imported at
    /// each thread count
    Import {
        /// Synthetic frames to write and import
        #[arg(long, default_value_t = 1000)]
        frames: usize,
        /// Frame size, WIDTHxHEIGHT
        #[arg(long, default_value = "1280x720")]
        size: String,
        /// Thread counts to measure, comma-separated (default: 1 and every core)
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Source records per shard
        #[arg(long, default_value_t = 500)]
        samples_per_shard: usize,
        /// Where to write the scratch data (removed afterwards)
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Also write the report as JSON here
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Training step speed and memory: forward + loss + backward + clip + AdamW on a fixed
    /// batch (with a per-phase breakdown), then fed by the real input pipeline
    Train {
        /// Model size
        #[arg(long, default_value = "nano", value_parser = ["nano", "small", "medium"])]
        model: String,
        /// Device: cpu, wgpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Images per step
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Input width (a multiple of 32)
        #[arg(long, default_value_t = 320)]
        width: u32,
        /// Input height (a multiple of 32)
        #[arg(long, default_value_t = 192)]
        height: u32,
        /// Timed steps per measurement
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps before each measurement (after the first step, timed on its own)
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Detection classes of the network
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Arithmetic of the convolutions (train.precision): f32, or bf16 on CUDA
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
        precision: String,
        /// Kernels of the convolutions (train.conv): auto (percept's on the CPU, im2col on cuda,
        /// burn's on wgpu), burn (burn's, autotuned per shape on GPUs) or im2col
        #[arg(long, default_value = "auto", value_parser = ["auto", "burn", "im2col"])]
        conv: String,
        /// CPU: threads the backend computes on (the rayon pool the step runs in), also the
        /// data workers; default: every core
        #[arg(long)]
        threads: Option<usize>,
        /// Stored size of the synthetic frames, WIDTHxHEIGHT (default: the input size)
        #[arg(long)]
        source: Option<String>,
        /// Where to write the scratch dataset (removed afterwards)
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Also write the report as JSON here
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The gradient all-reduce of a run over several processes, for each model size's gradient
    /// (run under the launcher: mpirun -np 2 percept bench all-reduce)
    AllReduce {
        /// Model sizes whose gradient to reduce, comma-separated
        #[arg(long, default_value = "nano,small", value_delimiter = ',', value_parser = ["nano", "small", "medium"])]
        models: Vec<String>,
        /// Device the gradient lives on: cpu, wgpu, cuda or cuda:N (cuda: NCCL)
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Timed all-reduces per size
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Untimed all-reduces before them
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Also write the report as JSON here (rank 0)
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

/// Parses `WIDTHxHEIGHT`.
fn size(flag: &str, s: &str) -> Result<(u32, u32)> {
    let parsed = s
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0);
    parsed.with_context(|| format!("{flag} {s:?}: give WIDTHxHEIGHT, e.g. 1280x720"))
}

/// The thread counts a benchmark measures: those given, or 1 and every core.
fn thread_counts(given: Vec<usize>) -> Vec<usize> {
    if !given.is_empty() {
        return given;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        vec![1, cores]
    } else {
        vec![1]
    }
}

fn device(s: &str) -> Result<DeviceSpec> {
    s.parse::<DeviceSpec>().context("--device")
}

/// Ctrl-C during training: the first asks the run to save a checkpoint after the current step
/// and stop (resumable with --resume); a second exits at once with status 130.
fn stop_on_ctrl_c() -> Result<()> {
    let pressed = std::sync::atomic::AtomicBool::new(false);
    ctrlc::set_handler(move || {
        if pressed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        percept::train::interrupt::request_stop();
        eprintln!(
            "\ninterrupt: saving a checkpoint after the current step, then stopping (Ctrl-C \
             again to stop at once, without saving)"
        );
    })
    .context("cannot install the Ctrl-C handler")
}

/// `--set` with `--resume`: refused, since a resumed `what` keeps the config it started with;
/// `hint` follows the message.
fn reject_set_on_resume(
    set: &[String],
    run: &std::path::Path,
    what: &str,
    hint: &str,
) -> Result<()> {
    if !set.is_empty() {
        anyhow::bail!(
            "--set cannot be used with --resume: a resumed {what} keeps the config it started \
             with ({}){hint}",
            run.join("config.toml").display()
        );
    }
    Ok(())
}

/// A run stopped by Ctrl-C, after [`exit_if_interrupted`] said how to continue it: exit
/// status 130 (MPI finalised first, under mpirun).
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A run stopped by Ctrl-C: say where its checkpoint is and how to continue it (`percept
/// <command> --resume RUN_DIR`), then end with [`Interrupted`].
fn exit_if_interrupted(s: &percept::train::trainer::TrainSummary, command: &str) -> Result<()> {
    if s.interrupted {
        println!(
            "interrupted after step {}: checkpoint {}; continue with `percept {command} \
             --resume {}`",
            s.steps,
            s.checkpoint.display(),
            s.run_dir.display()
        );
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Runs `cli`'s command; `cluster`: this process's place in a run over several processes
/// (mpirun/srun with more than one rank), which only training and its benchmarks take part in.
fn run(cli: Cli, cluster: Option<Cluster>) -> Result<()> {
    if let Some(c) = cluster.as_ref().filter(|c| c.size > 1) {
        let spread = matches!(
            cli.command,
            Command::Train { .. }
                | Command::Bench {
                    what: BenchWhat::Train { .. } | BenchWhat::AllReduce { .. }
                }
        );
        if !spread {
            anyhow::bail!(
                "launched as rank {} of {} (mpirun/srun), but only `percept train`, `percept \
                 bench train` and `percept bench all-reduce` run over several processes: run \
                 this command once, without mpirun",
                c.rank,
                c.size
            );
        }
    }
    match cli.command {
        Command::Quickstart {
            device: d,
            steps,
            train_samples,
            val_samples,
            runs_dir,
        } => {
            let a = quickstart(&QuickstartOptions {
                runs_dir,
                device: device(&d)?,
                steps,
                train_samples,
                val_samples,
            })?;
            println!(
                "\nheld-out evaluation, trained model:\n{}",
                a.trained.table()
            );
            println!(
                "untrained model (same architecture and seed):\n{}",
                a.untrained.table()
            );
            println!("artefacts:");
            let audit_log = a.run_dir.join(percept::data::AUDIT_FILE);
            for (what, p) in [
                ("synthetic dataset", &a.data),
                ("run directory", &a.run_dir),
                ("metrics", &a.metrics),
                ("audit log", &audit_log),
                ("checkpoint", &a.checkpoint),
                ("eval report", &a.eval_report),
                ("eval report (HTML)", &a.report_dir.join("report.html")),
                ("export", &a.export),
                ("input image", &a.input_image),
                ("overlay", &a.overlay),
                ("detections", &a.detections),
            ] {
                println!("  {what:<18} {}", p.display());
            }
        }
        Command::Synth {
            out,
            region,
            country,
            train,
            val,
            width,
            height,
            seed,
            samples_per_shard,
            name,
            processing_regions,
        } => {
            let profile = country
                .map(|c| percept::countries::resolve_profile(&c, None))
                .transpose()?;
            let region = profile.as_ref().map_or(region, |p| p.code.clone());
            if let Some(p) = &profile {
                let global: Vec<String> = percept::synth::SYNTH_CLASSES
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                let mapping = p.mapping(&global)?;
                // The profile's own spelling of each value ("red-triangle").
                let name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
                println!(
                    "country {} ({}): {} traffic, {} centre lines, edge lines {}, {} warning \
                     signs, {} stop signs",
                    p.code,
                    p.name,
                    p.traffic.side.name(),
                    name(serde_json::to_value(p.markings.centre_line)?),
                    name(serde_json::to_value(p.markings.edge_lines)?),
                    name(serde_json::to_value(p.signs.warning)?),
                    name(serde_json::to_value(p.signs.stop)?)
                );
                println!("classes: {}", p.class_names().join(", "));
                for line in mapping.describe() {
                    println!("  {line}");
                }
            }
            let options = SynthOptions {
                name: name.unwrap_or_else(|| format!("synthetic-{}", region.to_lowercase())),
                region,
                width,
                height,
                train,
                val,
                seed,
                samples_per_shard,
            };
            let mut manifest = commands::synth_for(&options, profile.as_ref(), &out)?;
            if !processing_regions.is_empty() {
                commands::set_processing_regions(&mut manifest, &processing_regions, &out)?;
            }
            println!(
                "wrote {} ({} shards, {} train + {} val scenes, region {}, processed in {}, \
                 manifest {})",
                out.display(),
                manifest.shards.len(),
                train,
                val,
                manifest.region,
                manifest.policy.processing_regions.join(", "),
                manifest.hash()
            );
        }
        Command::Import { format } => run_import(format)?,
        Command::Config {
            action: ConfigAction::Show(args),
        } => {
            let layered = LayeredConfig::load(&args.config, &args.set)?;
            let layers: Vec<String> = layered.layers().iter().map(|l| l.to_string()).collect();
            let config = layered.into_config()?;
            println!(
                "# resolved from {} (later overriding earlier), defaults filled in",
                layers.join(", ")
            );
            print!("{}", config.to_toml());
        }
        Command::Config {
            action: ConfigAction::Check(args),
        } => {
            RunConfig::load_layered(&args.config, &args.set)?;
            println!("{}: ok", args.config.display());
        }
        Command::Finetune {
            base,
            config,
            set,
            resume,
            device,
        } => {
            let devices: Devices = device.parse().context("--device")?;
            stop_on_ctrl_c()?;
            let outcome = match (config, base, resume) {
                (_, _, Some(run)) => {
                    reject_set_on_resume(&set, &run, "fine-tune", "")?;
                    percept::finetune_cmd::finetune_resume(&run, devices)?
                }
                (Some(path), Some(base), None) => {
                    let mut config = RunConfig::load_layered(&path, &set)?;
                    percept::finetune_cmd::check_finetune_config(
                        &config,
                        &path.display().to_string(),
                    )?;
                    if let Some(f) = config.finetune.as_mut() {
                        f.base = Some(base);
                    }
                    percept::finetune_cmd::finetune(&config, devices)?
                }
                _ => anyhow::bail!("give --base MODEL and --config FILE, or --resume RUN_DIR"),
            };
            let s = &outcome.summary;
            exit_if_interrupted(s, "finetune")?;
            println!(
                "fine-tuned {} steps in {:.0} s ({:.1} images/s); checkpoint {}",
                s.steps,
                s.seconds,
                s.images_per_second,
                s.checkpoint.display()
            );
            for r in &outcome.reports {
                println!(
                    "\nbase vs fine-tuned on {} (held-out split):\n\n{}",
                    r.dataset.display(),
                    r.comparison.markdown()
                );
                for f in &r.files {
                    println!("wrote {}", f.display());
                }
            }
        }
        Command::Train {
            config,
            set,
            resume,
            device: d,
        } => {
            let mut devices: Devices = d.parse().context("--devices")?;
            if let Some(c) = cluster.filter(|c| c.size > 1) {
                devices = devices.on_cluster(c)?;
            }
            let s = match (config, resume) {
                (_, Some(run)) => {
                    reject_set_on_resume(
                        &set,
                        &run,
                        "run",
                        "; start a new run with --config to change it",
                    )?;
                    stop_on_ctrl_c()?;
                    commands::resume(&run, devices)?
                }
                (Some(config), None) => {
                    let config = RunConfig::load_layered(&config, &set)?;
                    stop_on_ctrl_c()?;
                    commands::train(&config, devices)?
                }
                (None, None) => anyhow::bail!("give --config FILE or --resume RUN_DIR"),
            };
            exit_if_interrupted(&s, "train")?;
            println!(
                "trained {} steps in {:.0} s ({:.1} images/s, {:.0}% waiting for data); \
                 checkpoint {}; metrics {}; audit log {}",
                s.steps,
                s.seconds,
                s.images_per_second,
                100.0 * s.data_wait_fraction,
                s.checkpoint.display(),
                s.run_dir.join("metrics.jsonl").display(),
                s.run_dir.join(percept::data::AUDIT_FILE).display()
            );
            if s.skipped_samples > 0 {
                println!(
                    "skipped {} damaged samples (integrity = \"skip\"); each is in the audit log",
                    s.skipped_samples
                );
            }
            if s.nonfinite_steps > 0 {
                println!(
                    "skipped {} steps with a non-finite loss or gradient (see the warnings above \
                     and nonfinite_steps in metrics.jsonl)",
                    s.nonfinite_steps
                );
            }
        }
        Command::Eval {
            model,
            data,
            split,
            site,
            batch_size,
            out,
            report,
            examples,
            resolution,
            device: d,
        } => {
            let split: Split = split.parse().context("--split")?;
            let outcome = commands::eval(&commands::EvalRequest {
                site: site.as_deref(),
                batch_size,
                resolution: resolution.map(Resolution::metric),
                json: out.as_deref(),
                report_dir: report.as_deref(),
                examples,
                device: device(&d)?,
                ..commands::EvalRequest::new(&model, &data, split)
            })?;
            print!("{}", outcome.report.table());
            if let Some(out) = out {
                println!("JSON report: {}", out.display());
            }
            if let Some(files) = outcome.files {
                println!(
                    "report: {} and {} ({} charts, {} example overlays)",
                    files.markdown.display(),
                    files.html.display(),
                    files.charts.len(),
                    files.examples.len()
                );
            }
        }
        Command::Export {
            checkpoint,
            out,
            format,
            precision,
            opset,
            decode,
            calibration_data,
            calibration_split,
            calibration_frames,
            calibration_method,
            site,
            device: d,
        } => {
            if format == ExportFormat::Onnx {
                let split: Split = calibration_split.parse().context("--calibration-split")?;
                let method = RangeMethod::parse(&calibration_method)
                    .map_err(|e| anyhow::anyhow!("--calibration-method {e}"))?;
                let precision = match precision {
                    ExportPrecision::Fp32 => OnnxPrecision::Fp32,
                    ExportPrecision::Fp16 => OnnxPrecision::Fp16,
                    ExportPrecision::Int8 => OnnxPrecision::Int8,
                };
                let request = OnnxExportRequest {
                    precision,
                    opset,
                    decode: match decode {
                        ExportDecode::Raw => Decode::Raw,
                        ExportDecode::Boxes => Decode::Boxes,
                        ExportDecode::Nms => Decode::Nms,
                    },
                    calibration: calibration_data.as_deref().map(|data| CalibrationRequest {
                        data,
                        split,
                        frames: calibration_frames,
                        method,
                        site: site.as_deref(),
                    }),
                };
                let s = commands::export_onnx_model(&checkpoint, &out, &request, device(&d)?)?;
                println!(
                    "exported {} (ONNX opset {}, {}, decode {}, {} nodes, {:.1} MB, blake3 {}), \
                     trained on regions {:?}; read back and checked",
                    s.path.display(),
                    s.record.opset,
                    s.record.precision.name(),
                    s.record.decode.name(),
                    s.nodes,
                    s.bytes as f64 / 1e6,
                    s.hash,
                    s.card.provenance.regions
                );
                if let Some(q) = &s.card.provenance.quantization {
                    println!(
                        "  INT8 ranges ({}) from {} frames of {} ({}, manifest {}); only the \
                         ranges are in the file",
                        q.method,
                        q.frames,
                        q.dataset.name,
                        q.dataset.region,
                        q.dataset.manifest_hash
                    );
                }
                return Ok(());
            }
            let onnx_only = [
                (precision != ExportPrecision::Fp32, "--precision"),
                (opset != percept::onnx::DEFAULT_OPSET, "--opset"),
                (decode != ExportDecode::Boxes, "--decode"),
                (calibration_data.is_some(), "--calibration-data"),
                (site.is_some(), "--site"),
            ];
            if let Some((_, flag)) = onnx_only.iter().find(|(given, _)| *given) {
                anyhow::bail!("{flag} is for --format onnx; a safetensors export keeps the checkpoint's f32 weights as they are");
            }
            let s = commands::export_model(&checkpoint, &out, device(&d)?)?;
            println!(
                "exported {} ({:.2} M parameters, blake3 {}), trained on regions {:?}; reload \
                 verified bit-identical",
                s.path.display(),
                s.parameters as f64 / 1e6,
                s.hash,
                s.card.provenance.regions
            );
        }
        Command::Predict {
            model,
            image,
            out_dir,
            device: d,
        } => {
            let (png, json) = commands::prediction_paths(&image, &out_dir);
            let p = commands::predict(&model, &image, &png, &json, device(&d)?)?;
            println!(
                "{} detections; overlay {}; detections {}",
                p.detections.len(),
                png.display(),
                json.display()
            );
        }
        Command::Audit {
            action: AuditAction::Verify { run, key, head },
        } => {
            let anchors = commands::AuditAnchors {
                key: key.as_deref(),
                head: head.as_deref(),
            };
            let v = commands::audit_verify(&run, anchors)?;
            println!(
                "audit log {}: the chain holds ({} entries, head {})",
                v.log.display(),
                v.report.entries,
                v.report.head.hash
            );
            match (&v.report.signed_by, v.key_checked) {
                (Some(k), true) => println!("  every entry is signed by the site key {k}"),
                (Some(k), false) => println!(
                    "  every entry is signed by {k}, the key the log names; pass --key SITE.pub \
                     to check it is the site's"
                ),
                (None, _) => println!("  unsigned (the run's config named no site.key)"),
            }
            for pin in &v.pins {
                println!("  head pinned by {} is in the log", pin.display());
            }
            let kinds: Vec<String> = v
                .report
                .events_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!("  events: {}", kinds.join(", "));
        }
        Command::Audit {
            action: AuditAction::ExportHead { run, out },
        } => {
            let head = percept::seals::export_head(&run, out.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&head)?);
        }
        Command::Keys {
            action: KeysAction::New { out, name },
        } => {
            let k = percept::seals::new_key(&out, &name)?;
            println!(
                "secret key {} (owner-only; keep it off run directories and never share it)\n\
                 public key {} (fingerprint {})\n\n\
                 For a steward, a site's trust store accepts it with:\n\
                 [[steward]]\nname = {:?}\nregions = [\"XX\"]  # the regions it signs for\n\
                 public_key = \"{}\"\n\n\
                 For a site, name it in the run config: [site] key = {:?}",
                k.secret.display(),
                k.public.display(),
                k.fingerprint,
                name,
                k.public_hex,
                k.secret.display().to_string()
            );
        }
        Command::Sign { dataset, key } => {
            let s = percept::seals::sign_dataset(&dataset, &key)?;
            println!(
                "signed {} (dataset `{}`, region {}) with {}{}",
                s.manifest.display(),
                s.name,
                s.region,
                s.fingerprint,
                s.replaced
                    .map(|k| format!("; replaced the signature of {k}"))
                    .unwrap_or_default()
            );
        }
        Command::Inspect { model, base } => {
            use percept::eval::model_file::{chain_breaks, check_base_file, describe_card};
            let card = if percept::onnx_model::is_onnx(&model)? {
                // An ONNX export: its card and export record are in the graph's metadata.
                let bytes = std::fs::read(&model).with_context(|| model.display().to_string())?;
                let graph = percept::onnx::read_model(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: not an ONNX model ({e})", model.display()))?;
                let json = percept::onnx::model_card_json(&graph).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no `{}` metadata: not a percept ONNX export",
                        model.display(),
                        percept::onnx::MODEL_CARD_KEY
                    )
                })?;
                let export_key = percept::train::onnx_export::ONNX_EXPORT_KEY;
                let meta = percept::onnx::metadata(&graph);
                if let Some((_, record)) = meta.iter().find(|(k, _)| k == export_key) {
                    println!("onnx        {record}");
                }
                percept::eval::model_file::card_from_json(json, &model)?
            } else {
                percept::eval::model_file::read_model_card(&model)?
            };
            print!("{}", describe_card(&card));
            let mut problems = chain_breaks(&card);
            if let Some(base) = base {
                match check_base_file(&card, &base) {
                    Ok(checked) => println!("{checked}"),
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if !problems.is_empty() {
                anyhow::bail!(
                    "model file {}: the provenance does not verify:\n  {}",
                    model.display(),
                    problems.join("\n  ")
                );
            }
        }
        Command::Compare {
            reports,
            labels,
            out,
        } => {
            use percept::eval::compare::{compare_reports, read_eval_report, write_comparison};
            if !labels.is_empty() && labels.len() != reports.len() {
                anyhow::bail!(
                    "--label: {} labels for {} reports; give one per report, in order, or none",
                    labels.len(),
                    reports.len()
                );
            }
            let mut labelled = Vec::with_capacity(reports.len());
            for (i, path) in reports.iter().enumerate() {
                let label = labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| path.display().to_string());
                labelled.push((label, read_eval_report(path)?));
            }
            let comparison = compare_reports(&labelled);
            print!("{}", comparison.markdown());
            if let Some(out) = out {
                let files = write_comparison(&comparison, &out)?;
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                println!("wrote {}", names.join(", "));
            }
        }
        Command::Plot {
            run,
            out,
            loss_scale,
        } => {
            let options = percept::eval::plot::PlotOptions {
                loss_scale: loss_scale.parse()?,
            };
            let s = percept::eval::plot::plot_run(&run, out.as_deref(), &options)?;
            println!(
                "{}: {} step, {} epoch and {} validation lines",
                s.metrics.display(),
                s.step_lines,
                s.epoch_lines,
                s.validation_lines
            );
            for chart in &s.charts {
                println!(
                    "wrote {} ({} series, {} points)",
                    chart.path.display(),
                    chart.series.len(),
                    chart.points()
                );
            }
        }
        Command::Bench {
            what:
                BenchWhat::Data {
                    frames,
                    source,
                    input,
                    batch_size,
                    threads,
                    passes,
                    mosaic,
                    scratch,
                    out,
                },
        } => {
            let (source_width, source_height) = size("--source", &source)?;
            let (width, height) = size("--input", &input)?;
            let threads = thread_counts(threads);
            let options = percept::bench::DataBenchOptions {
                frames,
                source_width,
                source_height,
                width,
                height,
                batch_size,
                threads,
                passes,
                mosaic_probability: mosaic,
                scratch: scratch.unwrap_or_else(percept::bench::default_scratch),
            };
            let report = percept::bench::bench_data(&options, &|line| tracing::info!("{line}"))?;
            print!("{}", report.table());
            if let Some(out) = out {
                percept::data::atomic_file::write_atomic(&out, report.to_json().as_bytes())?;
            }
        }
        Command::Bench {
            what:
                BenchWhat::Import {
                    frames,
                    size: frame_size,
                    threads,
                    samples_per_shard,
                    scratch,
                    out,
                },
        } => {
            let (width, height) = size("--size", &frame_size)?;
            let options = percept::import::bench::ImportBenchOptions {
                frames,
                width,
                height,
                threads: thread_counts(threads),
                samples_per_shard,
                scratch: scratch.unwrap_or_else(percept::bench::default_scratch),
            };
            let report =
                percept::import::bench::bench_import(&options, &|line| tracing::info!("{line}"))
                    .map_err(anyhow::Error::msg)?;
            print!("{}", report.table());
            if let Some(out) = out {
                percept::data::atomic_file::write_atomic(&out, report.to_json().as_bytes())?;
            }
        }
        Command::Bench {
            what:
                BenchWhat::Train {
                    model,
                    device: d,
                    batch,
                    width,
                    height,
                    steps,
                    warmup,
                    classes,
                    precision,
                    conv,
                    threads,
                    source,
                    scratch,
                    json,
                },
        } => {
            use percept::bench_train::{bench_train, TrainBenchOptions};
            // Under mpirun/srun: this rank's device and its place; rank 0 reports. One rank
            // keeps its cluster too: every step then goes through the all-reduce, so
            // `mpirun -np 1` times what the engine costs on one device.
            let rank0 = cluster.as_ref().is_none_or(|c| c.rank == 0);
            let mut devices = Devices::from(device(&d)?);
            if let Some(c) = &cluster {
                devices = devices.on_cluster(c.clone())?;
            }
            let device = devices.specs()[0];
            let model_size = ModelSize::ALL
                .into_iter()
                .find(|s| s.name() == model)
                .context("--model: use nano, small or medium")?;
            let (source_width, source_height) = match source {
                Some(s) => size("--source", &s)?,
                None => (width, height),
            };
            let options = TrainBenchOptions {
                width,
                height,
                source_width,
                source_height,
                steps,
                warmup,
                classes,
                precision: precision
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--precision: {e}"))?,
                conv: conv
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--conv: {e}"))?,
                threads,
                scratch: scratch.unwrap_or_else(percept::bench::default_scratch),
                progress: rank0,
                cluster: cluster.clone(),
                ..TrainBenchOptions::new(model_size, device, batch)
            };
            let report = bench_train(&options)?;
            if rank0 {
                print!("{}", report.table());
                if let Some(json) = json {
                    percept::data::atomic_file::write_atomic(&json, report.to_json().as_bytes())?;
                }
            }
        }
        Command::Bench {
            what:
                BenchWhat::AllReduce {
                    models,
                    device: d,
                    rounds,
                    warmup,
                    json,
                },
        } => {
            use percept::bench_all_reduce::{bench_all_reduce, AllReduceBenchOptions};
            let Some(cluster) = cluster else {
                anyhow::bail!(
                    "percept bench all-reduce runs under an MPI launcher (mpirun -np 2 percept \
                     bench all-reduce){}",
                    if cfg!(feature = "mpi") {
                        ""
                    } else {
                        ", from a percept built with --features mpi"
                    }
                );
            };
            let sizes = models
                .iter()
                .map(|m| ModelSize::ALL.into_iter().find(|s| s.name() == m))
                .collect::<Option<Vec<_>>>()
                .context("--models: use nano, small or medium")?;
            // This rank's device, as in training (cuda: cuda:<local rank>).
            let device = Devices::from(device(&d)?)
                .on_cluster(cluster.clone())?
                .specs()[0];
            let options = AllReduceBenchOptions {
                sizes,
                device,
                rounds,
                warmup,
            };
            let report = bench_all_reduce(&options, &cluster)?;
            if cluster.rank == 0 {
                print!("{}", report.table());
                if let Some(json) = json {
                    percept::data::atomic_file::write_atomic(&json, report.to_json().as_bytes())?;
                }
            }
        }
        Command::Warmup {
            config: args,
            device: d,
            steps,
            classes,
            scratch,
            json,
        } => {
            use percept::warmup::{warmup, WarmupOptions};
            let config = RunConfig::load_layered(&args.config, &args.set)?;
            let report = warmup(&WarmupOptions {
                config,
                config_source: args.config.display().to_string(),
                device: device(&d)?,
                steps,
                classes,
                scratch: scratch.unwrap_or_else(percept::bench::default_scratch),
            })?;
            print!("{}", report.table());
            if let Some(json) = json {
                percept::data::atomic_file::write_atomic(&json, report.to_json().as_bytes())?;
            }
        }
        Command::Info {
            classes,
            width,
            height,
            device: d,
        } => {
            percept::model::check_input_size(height, width)?;
            println!("size     parameters   GFLOPs @ {width}x{height}");
            for size in ModelSize::ALL {
                let config = PerceptionNetConfig::new(size, classes);
                let params = commands::parameter_count(&config, device(&d)?)?;
                println!(
                    "{:<8} {:>8.2} M   {:>8.2}",
                    size.name(),
                    params as f64 / 1e6,
                    config.gflops(height, width)
                );
            }
        }
    }
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: index 15 of `mi_option_t` in v3's `mimalloc.h` (and
/// v2's). The Rust bindings do not name it; a test checks its default, which no other has.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory the process frees for its own reuse instead of returning it to the OS a second
/// later (mimalloc's default). A training step frees and allocates the same large buffers every
/// step (activations, im2col columns, gradients), and returned pages come back through page
/// faults that zero them: measured on 2 cores, nano at batch 8, 197 000 faults in a `bench
/// train` run against 1 300, and about 20% of the step. `MIMALLOC_PURGE_DELAY`, when set, wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads its options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    percept::train::backend::report_panics();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // percept's own progress at info; burn/cubecl (kernel autotuning) only when
                // they warn, unless RUST_LOG asks for more.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,percept=info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let launched = percept::train::cluster::launcher_world_size();
    #[cfg(feature = "mpi")]
    let mpi = match launched {
        Some(_) => match percept::train::mpi_collectives::MpiRuntime::init() {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("error: starting MPI: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    #[cfg(feature = "mpi")]
    let cluster = mpi.as_ref().map(|m| m.cluster().clone());
    #[cfg(not(feature = "mpi"))]
    let cluster: Option<Cluster> = match launched {
        // Several copies of a build without MPI would each run the whole job, into the same
        // run directory.
        Some((n, var)) if n > 1 => {
            eprintln!(
                "error: started by an MPI launcher as one of {n} processes ({var}={n}), but this \
                 percept was built without MPI: build it with `cargo build --release --features \
                 mpi` (needs libopenmpi-dev or libmpich-dev, and libclang-dev), or run one \
                 process"
            );
            return ExitCode::FAILURE;
        }
        _ => None,
    };
    let rank = cluster
        .as_ref()
        .filter(|c| c.size > 1)
        .map(|c| format!(" (rank {} of {} on {})", c.rank, c.size, c.hosts[c.rank]));
    match run(cli, cluster) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        Err(e) => {
            eprintln!(
                "error{}: {}",
                rank.as_deref().unwrap_or(""),
                percept::commands::error_text(e.as_ref())
            );
            // The other ranks would wait in their next collective for ever.
            #[cfg(feature = "mpi")]
            if let (Some(mpi), Some(_)) = (&mpi, &rank) {
                mpi.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // `main` has not run in the test harness: the documented default, 1000 ms.
        assert_eq!(get(), 1000);
        keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
