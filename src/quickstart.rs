//! `percept quickstart`: the whole path on synthetic data, on the built-in smoke config:
//! synth -> train -> eval (trained and untrained) -> export -> predict.

use std::path::{Path, PathBuf};

use percept_data::Split;

use percept_synth::SynthOptions;
use serde::Serialize;

use crate::commands;
use percept_data::atomic_file::save_png_atomic;
use percept_eval::eval::EvalReport;
use percept_eval::model_file::read_model_card;
use percept_train::backend::DeviceSpec;
use percept_train::config::RunConfig;
use percept_train::data::open_for_site;
use percept_train::TrainError;

/// The smoke config, built in so the quickstart runs from anywhere.
pub const SMOKE_CONFIG: &str = include_str!("../configs/smoke.toml");

/// Settings of a quickstart.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// Parent of the run directory (`<runs_dir>/quickstart`).
    pub runs_dir: PathBuf,
    pub device: DeviceSpec,
    /// Training steps (default: the smoke config's).
    pub steps: Option<usize>,
    pub train_samples: usize,
    pub val_samples: usize,
}

impl Default for QuickstartOptions {
    fn default() -> Self {
        QuickstartOptions {
            runs_dir: PathBuf::from("runs"),
            device: DeviceSpec::Cpu,
            steps: None,
            train_samples: 2000,
            val_samples: 200,
        }
    }
}

/// Where each artefact of a quickstart is.
#[derive(Debug, Clone, Serialize)]
pub struct QuickstartArtefacts {
    pub data: PathBuf,
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub metrics: PathBuf,
    pub eval_report: PathBuf,
    /// The Markdown/HTML evaluation report (`report.md`, `report.html`, charts, examples).
    pub report_dir: PathBuf,
    pub export: PathBuf,
    pub input_image: PathBuf,
    pub overlay: PathBuf,
    pub detections: PathBuf,
    pub trained: EvalReport,
    pub untrained: EvalReport,
}

/// Whether `dir` already holds a complete, verified synthetic dataset made with `options`.
fn reusable(dir: &Path, options: &SynthOptions) -> bool {
    let open = |split| open_for_site(dir, split, &options.region).ok();
    match (open(Split::Train), open(Split::Val)) {
        (Some(train), Some(val)) => {
            let m = train.manifest();
            m.name == options.name
                && m.region == options.region
                && train.len() == options.train
                && val.len() == options.val
                && train
                    .get(0)
                    .is_ok_and(|s| s.image.dimensions() == (options.width, options.height))
        }
        _ => false,
    }
}

/// Runs the quickstart, logging each stage.
pub fn quickstart(options: &QuickstartOptions) -> Result<QuickstartArtefacts, TrainError> {
    let mut config = RunConfig::parse(SMOKE_CONFIG, Path::new("<built-in smoke config>"))?;
    config.name = "quickstart".into();
    config.runs_dir = options.runs_dir.clone();
    if let Some(steps) = options.steps {
        config.train.steps = steps;
    }
    let run_dir = config.run_dir();
    let data = run_dir.join("data");
    config.data.datasets = vec![data.clone()];
    config
        .validate()
        .map_err(|m| TrainError::Invalid(format!("quickstart: {m}")))?;

    let synth = SynthOptions {
        name: "synthetic-quickstart".into(),
        region: config.site.region.clone(),
        width: config.model.input.width as u32,
        height: config.model.input.height as u32,
        train: options.train_samples,
        val: options.val_samples,
        seed: config.train.seed,
        samples_per_shard: 256,
    };
    tracing::info!(
        "1/5 synth: {} train + {} held-out scenes ({}x{}, region {}) -> {}",
        synth.train,
        synth.val,
        synth.width,
        synth.height,
        synth.region,
        data.display()
    );
    if reusable(&data, &synth) {
        tracing::info!(
            "reusing the synthetic dataset already in {}",
            data.display()
        );
    } else {
        if data.exists() {
            // Only ever the quickstart's own data directory, made by an earlier quickstart
            // with other settings or interrupted.
            std::fs::remove_dir_all(&data).map_err(|e| TrainError::Io {
                path: data.clone(),
                source: e,
            })?;
        }
        commands::synth(&synth, &data)?;
    }

    let checkpoints = run_dir.join("checkpoints");
    if checkpoints.exists() {
        // Only ever the quickstart's own checkpoints, from an earlier quickstart: it is a demo
        // that starts over each time (real runs refuse to, and resume instead).
        tracing::info!(
            "replacing the earlier quickstart's {}",
            checkpoints.display()
        );
        std::fs::remove_dir_all(&checkpoints).map_err(|e| TrainError::Io {
            path: checkpoints.clone(),
            source: e,
        })?;
    }
    tracing::info!(
        "2/5 train: {} steps of {} images on {}",
        config.train.steps,
        config.train.batch_size,
        options.device
    );
    let summary = commands::train(&config, options.device)?;
    tracing::info!(
        "trained in {:.0} s ({:.1} images/s), final {}",
        summary.seconds,
        summary.images_per_second,
        serde_json::to_string(&summary.final_losses).unwrap_or_default()
    );

    tracing::info!("3/5 eval on the held-out split (trained and untrained)");
    let eval_report = run_dir.join("eval.json");
    let report_dir = run_dir.join("report");
    let trained = commands::eval(&commands::EvalRequest {
        json: Some(&eval_report),
        report_dir: Some(&report_dir),
        device: options.device,
        ..commands::EvalRequest::new(&summary.checkpoint, &data, Split::Val)
    })?
    .report;
    let card = read_model_card(&summary.checkpoint)?;
    let val = open_for_site(&data, Split::Val, &config.site.region)?;
    let untrained = commands::eval_untrained(&card, &val, config.train.seed, options.device)?;

    tracing::info!("4/5 export");
    let export = run_dir.join("export").join("model.safetensors");
    commands::export_model(&summary.checkpoint, &export, options.device)?;

    tracing::info!("5/5 predict on a held-out scene");
    let input_image = run_dir.join("predict").join("held-out-0.png");
    let sample = val.get(0)?;
    save_png_atomic(&sample.image, &input_image)?;
    let (overlay, detections) = commands::prediction_paths(&input_image, &run_dir.join("predict"));
    commands::predict(&export, &input_image, &overlay, &detections, options.device)?;

    Ok(QuickstartArtefacts {
        data,
        metrics: run_dir.join("metrics.jsonl"),
        checkpoint: summary.checkpoint,
        run_dir,
        eval_report,
        report_dir,
        export,
        input_image,
        overlay,
        detections,
        trained,
        untrained,
    })
}
