//! What each `percept` subcommand does, on the backend the user picked.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use indicatif::{ProgressBar, ProgressStyle};
use percept_data::{
    AuditEvent, AuditHead, AuditLog, AuditReport, Dataset, Manifest, Split, AUDIT_FILE,
};
use percept_model::{PerceptionModel, PerceptionNetConfig, Precision};
use percept_synth::{write_synthetic_dataset_for, SynthOptions};

use percept_data::atomic_file::write_atomic;
use percept_eval::eval::{
    evaluate, evaluate_matched, ClassMatch, EvalOptions, EvalReport, Evaluation, MetricResolution,
};
use percept_eval::model_file::{load_model, read_model_card, ModelCard};
use percept_eval::predict::{predict_image, read_image, write_prediction, Prediction};
use percept_eval::report::{write_report, ReportFiles};
use percept_train::backend::{dispatch, dispatch_on, BackendTask, DeviceSpec, Devices};
use percept_train::checkpoint::{CheckpointDir, CheckpointKind};
use percept_train::config::RunConfig;
use percept_train::data::{audit, open_for_site, TrainingData};
use percept_train::export::{export, ExportSummary};
use percept_train::finetune::FinetuneBase;
use percept_train::gpu_runtime::KernelCache;
use percept_train::onnx_export::{export_onnx, OnnxExportRequest, OnnxExportSummary};
use percept_train::trainer::{Faults, RunState, TrainSummary, TrainTask};
use percept_train::TrainError;

use crate::onnx_model::{load_if_onnx, OnnxModel};

/// An error and its causes as one line, joined by ": " as anyhow's `{:#}` joins them, but a
/// cause whose text is already in the line is left out: percept's errors put their source's
/// text in their own message and also return it as `source()` (which `{:#}` then printed a
/// second time: "No space left on device (os error 28): No space left on device (os error 28)").
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// A progress bar on a terminal, hidden elsewhere (batch logs stay clean).
pub fn progress(len: u64, prefix: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:24} {pos}/{len} ETA {eta}")
            .expect("valid template"),
    );
    bar.set_prefix(prefix);
    bar
}

/// `percept synth`: writes a synthetic dataset.
pub fn synth(options: &SynthOptions, out: &Path) -> Result<Manifest, TrainError> {
    synth_for(options, None, out)
}

/// `percept synth --country`: writes a synthetic dataset of a country's roads, labelled in
/// its class list (`options.region` must be the profile's code); without a country, [`synth`].
pub fn synth_for(
    options: &SynthOptions,
    country: Option<&percept_data::CountryProfile>,
    out: &Path,
) -> Result<Manifest, TrainError> {
    let bar = progress((options.train + options.val) as u64, "synth");
    let manifest =
        write_synthetic_dataset_for(out, options, country, &|n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    Ok(manifest)
}

/// Sets the policy of the dataset just written to `out`: its sites may be in `regions` (the
/// data's own region first, added when missing). Codes are checked before anything changes.
pub fn set_processing_regions(
    manifest: &mut Manifest,
    regions: &[String],
    out: &Path,
) -> Result<(), TrainError> {
    let mut list = vec![manifest.region.clone()];
    for r in regions {
        let r = r.trim().to_ascii_uppercase();
        if !percept_data::manifest::is_region_code(&r) {
            return Err(TrainError::Invalid(format!(
                "--processing-regions: {r:?} is not an ISO 3166-1 alpha-2 code such as DE or US"
            )));
        }
        if !list.contains(&r) {
            list.push(r);
        }
    }
    manifest.policy.processing_regions = list;
    manifest.save(out.join(percept_data::MANIFEST_FILE))?;
    Ok(())
}

/// `percept train`: a fresh run. Opens the run's audit log, records the start, clears and opens
/// the data (every guard decision and shard check recorded), trains, and records how the run
/// ended. A run directory that already holds checkpoints is refused: resume it, or pick
/// another name.
///
/// Several `devices` train data-parallel: each takes `train.batch_size` images of every
/// micro-batch.
pub fn train(config: &RunConfig, devices: impl Into<Devices>) -> Result<TrainSummary, TrainError> {
    train_with(config, devices, Faults::default())
}

/// [`train`] with injected faults (tests).
pub fn train_with(
    config: &RunConfig,
    devices: impl Into<Devices>,
    faults: Faults,
) -> Result<TrainSummary, TrainError> {
    let devices = devices.into();
    check_precision(config, &devices, "run config")?;
    let rank_config;
    let config = match devices.cluster() {
        // Each rank keeps its own run directory (checkpoints, metrics and the audit log of
        // the shards it read): rank 0 `runs/<name>`, rank R `runs/<name>-rank<R>`.
        Some(c) if c.rank > 0 => {
            rank_config = RunConfig {
                name: format!("{}-rank{}", config.name, c.rank),
                ..config.clone()
            };
            &rank_config
        }
        _ => config,
    };
    let run_dir = config.run_dir();
    let checkpoints = CheckpointDir::new(run_dir.join("checkpoints"));
    if let Some(found) = checkpoints.list().first() {
        return Err(TrainError::Invalid(format!(
            "{} already has checkpoints ({} among them): continue it with `percept train \
             --resume {}`, or give the new run another name (or delete the directory)",
            run_dir.display(),
            found.files.model.display(),
            run_dir.display()
        )));
    }
    // The site's trust store and key, and a fine-tune's base model and profile, are checked
    // before anything of the run is written.
    percept_train::site::residency_guard(&config.site)?;
    percept_train::site::site_key(&config.site)?;
    let finetune = open_finetune(config)?;
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::Io {
        path: run_dir.clone(),
        source: e,
    })?;
    let removed = remove_temporaries(&run_dir)?;
    let mut log = percept_train::site::open_audit_log(&run_dir, &config.site)?;
    write_atomic(run_dir.join(RUN_CONFIG_FILE), config.to_toml().as_bytes())?;
    audit(&mut log, run_start(config))?;
    record_removed(&mut log, removed)?;
    run_training(config, run_dir, &mut log, &devices, None, finetune, faults)
}

/// The base model and country profile of a config's `[finetune]` (none without one).
fn open_finetune(config: &RunConfig) -> Result<Option<FinetuneBase>, TrainError> {
    let Some(f) = &config.finetune else {
        return Ok(None);
    };
    let profile = crate::countries::resolve_profile(&f.profile, None)?;
    FinetuneBase::open(config, profile).map(Some)
}

/// Removes the temporary files that killed writes left in a run's directory (they are never
/// data: an atomic write that did not finish left the file it was replacing as it was) and
/// logs each.
fn remove_temporaries(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let removed = percept_data::atomic_file::remove_temporaries(run_dir)?;
    for path in &removed {
        tracing::info!(
            "removed {}, the temporary file of a write that never finished",
            path.display()
        );
    }
    Ok(removed)
}

/// Records the temporary files [`remove_temporaries`] removed, if any.
fn record_removed(log: &mut AuditLog, removed: Vec<PathBuf>) -> Result<(), TrainError> {
    if !removed.is_empty() {
        audit(
            log,
            AuditEvent::TemporariesRemoved {
                files: removed.iter().map(|p| p.display().to_string()).collect(),
            },
        )?;
    }
    Ok(())
}

/// Refuses `train.precision = "bf16"` on wgpu, which has no bfloat16 (WGSL does not have the
/// type), before anything of the run is written.
fn check_precision(config: &RunConfig, devices: &Devices, source: &str) -> Result<(), TrainError> {
    if config.train.precision == Precision::Bf16 && devices.specs()[0] == DeviceSpec::Wgpu {
        return Err(TrainError::Invalid(format!(
            "{source}: train.precision = \"bf16\" needs a cuda device (wgpu has no bfloat16): \
             train on --device cuda:N, or set train.precision = \"f32\" for wgpu"
        )));
    }
    Ok(())
}

/// The audit event that starts a run (or starts it over).
fn run_start(config: &RunConfig) -> AuditEvent {
    AuditEvent::RunStart {
        run: config.name.clone(),
        config_hash: config.hash(),
        site_region: config.site.region.clone(),
        site_name: config.site.name.clone(),
        // Filled in by a signing log.
        site_key: None,
        percept_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The resolved config a run was started with, in its run directory.
pub const RUN_CONFIG_FILE: &str = "config.toml";

fn run_training(
    config: &RunConfig,
    run_dir: PathBuf,
    log: &mut AuditLog,
    devices: &Devices,
    resume: Option<RunState>,
    finetune: Option<FinetuneBase>,
    faults: Faults,
) -> Result<TrainSummary, TrainError> {
    if devices.specs()[0] != DeviceSpec::Cpu {
        percept_train::gpu_runtime::init(&KernelCache::resolve(config.kernel_cache.as_deref()))?;
    }
    let result = TrainingData::open(config, log).and_then(|data| {
        dispatch_on(
            devices,
            TrainTask {
                config,
                run_dir,
                data,
                audit: &mut *log,
                resume,
                faults,
                cluster: devices.cluster().cloned(),
                finetune,
            },
        )?
    });
    if let Err(e) = &result {
        // Best effort: the run already failed; a failing log append must not hide why.
        let _ = log.append(AuditEvent::RunEnd {
            steps: 0,
            skipped_samples: 0,
            status: format!("failed: {e}"),
        });
    }
    result
}

/// `percept train --resume`: continues the run in `run_dir` from its newest intact checkpoint
/// (passing over torn or modified ones with a warning), with the config the run was started
/// with (`run_dir/config.toml`). When finished checkpoints exist but none can be used
/// (damaged, or the config edited since) it refuses, naming each and why, and changes nothing;
/// a run killed before it finished a checkpoint starts over from step 0, which loses nothing.
///
/// A config edited only in [`percept_train::checkpoint::RESUME_MUTABLE_KEYS`] resumes, each
/// change recorded in the audit log. Checkpoints newer than the one resumed from (unusable, or
/// it would have been chosen) are moved to `checkpoints/unusable/`, so the resumed run neither
/// overwrites nor prunes them. Temporary files of killed writes are removed first.
pub fn resume(run_dir: &Path, devices: impl Into<Devices>) -> Result<TrainSummary, TrainError> {
    resume_with(run_dir, devices, Faults::default())
}

/// [`resume`] with injected faults (tests).
pub fn resume_with(
    run_dir: &Path,
    devices: impl Into<Devices>,
    faults: Faults,
) -> Result<TrainSummary, TrainError> {
    let devices = devices.into();
    // Every rank of a run over several processes is given rank 0's directory.
    let rank_run_dir;
    let run_dir = match devices.cluster() {
        Some(c) => {
            rank_run_dir = percept_train::cluster::rank_dir(run_dir, c.rank);
            rank_run_dir.as_path()
        }
        None => run_dir,
    };
    let config_path = run_dir.join(RUN_CONFIG_FILE);
    if !config_path.exists() {
        return Err(TrainError::Invalid(format!(
            "{} has no {RUN_CONFIG_FILE}: give the directory of a run started with `percept \
             train --config` (runs/<name>)",
            run_dir.display()
        )));
    }
    let config = RunConfig::load(&config_path)?;
    check_precision(&config, &devices, &config_path.display().to_string())?;
    let checkpoints = CheckpointDir::new(run_dir.join("checkpoints"));
    let (usable, rejected) = checkpoints.latest_usable(&config);
    let (state, changes) = match usable {
        Some((state, changes)) => (Some(state), changes),
        None => (None, Vec::new()),
    };
    // A checkpoint without its commit record was never finished (the process died writing
    // it); one with a record holds work.
    let committed = checkpoints.list().iter().any(|f| f.files.state.exists());
    if state.is_none() && committed {
        // Starting over would throw the run's work away, and pruning would then delete the
        // checkpoints a person could still repair: refuse, and touch nothing.
        return Err(TrainError::Invalid(format!(
            "{} cannot be resumed: no checkpoint can be used, and none was changed or deleted:\n  \
             {}\nRestore the damaged files (or the run's config.toml, if it was edited), or \
             start a new run under another name (`percept train --config FILE --set \
             name=NEW`).",
            run_dir.display(),
            rejected.join("\n  ")
        )));
    }
    for w in &rejected {
        tracing::warn!("{w}; resuming from an older checkpoint");
    }
    if let Some(s) = &state {
        if s.kind == CheckpointKind::Final {
            return Err(TrainError::Invalid(format!(
                "{} finished at step {} ({}): there is nothing to resume; to train further, \
                 start a new run",
                run_dir.display(),
                s.step,
                checkpoints.files("final").model.display()
            )));
        }
    }
    let finetune = open_finetune(&config)?;
    if let (Some(base), Some(s)) = (&finetune, &state) {
        let checkpoint = checkpoints.files(s.checkpoint.trim_end_matches(".safetensors"));
        base.check_resumed(&read_model_card(&checkpoint.model)?.provenance)?;
    }
    // Refusals are behind: from here on the run goes on.
    let removed = remove_temporaries(run_dir)?;
    let mut log = percept_train::site::open_audit_log(run_dir, &config.site)?;
    record_removed(&mut log, removed)?;
    match &state {
        Some(s) => {
            // Every checkpoint ranked above the one resumed from was passed over: keep it
            // out of the resumed run's way.
            let newer: Vec<String> = checkpoints
                .list()
                .into_iter()
                .map(|f| f.name)
                .take_while(|n| format!("{n}.safetensors") != s.checkpoint)
                .collect();
            if !newer.is_empty() {
                let aside = checkpoints.set_aside(&newer)?;
                tracing::warn!(
                    "moved the unusable checkpoints {} to {}: the resumed run would overwrite them",
                    newer.join(", "),
                    aside.display()
                );
            }
            tracing::info!(
                "resuming {} at step {} from {}",
                run_dir.display(),
                s.step,
                s.checkpoint
            );
            audit(
                &mut log,
                AuditEvent::RunResumed {
                    run: config.name.clone(),
                    from_checkpoint: checkpoints.path().join(&s.checkpoint).display().to_string(),
                    step: s.step as u64,
                },
            )?;
            for c in changes {
                tracing::info!(
                    "{} changed since the checkpoint: {} (was {}); it cannot alter the results",
                    c.key,
                    c.new,
                    c.old
                );
                audit(
                    &mut log,
                    AuditEvent::ConfigChanged {
                        key: c.key,
                        old: c.old,
                        new: c.new,
                    },
                )?;
            }
        }
        None => {
            tracing::warn!(
                "{} has no intact checkpoint: starting over from step 0",
                run_dir.display()
            );
            audit(&mut log, run_start(&config))?;
        }
    }
    run_training(
        &config,
        run_dir.to_path_buf(),
        &mut log,
        &devices,
        state,
        finetune,
        faults,
    )
}

struct EvalTask<'a> {
    model: &'a Path,
    /// The model when it is an ONNX export, already in ONNX Runtime.
    onnx: Option<&'a OnnxModel>,
    dataset: &'a Dataset,
    options: EvalOptions,
}

impl BackendTask for EvalTask<'_> {
    type Output = Result<Evaluation, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        match self.onnx {
            Some((model, card)) => self.evaluate::<B::InnerBackend>(model, card, &device),
            None => {
                let (net, card) = load_model::<B::InnerBackend>(self.model, &device)?;
                self.evaluate(&net, &card, &device)
            }
        }
    }
}

impl EvalTask<'_> {
    fn evaluate<B: VisionBackend>(
        &self,
        net: &impl PerceptionModel<B>,
        card: &ModelCard,
        device: &B::Device,
    ) -> Result<Evaluation, TrainError> {
        let class_match = check_classes(card, self.dataset, self.model)?;
        if let Some(m) = &class_match {
            for line in m.describe() {
                tracing::info!("{line}");
            }
        }
        let bar = progress(self.dataset.len() as u64, "eval");
        let evaluation = evaluate_matched(
            net,
            card,
            self.dataset,
            class_match.as_ref(),
            &self.options,
            device,
            &bar,
        );
        bar.finish_and_clear();
        Ok(evaluation?)
    }
}

/// How the model's classes are scored on the dataset's: `None` when the lists are the same;
/// through the model's fine-tune class mapping or by name when they differ
/// ([`ClassMatch::between`]); an error naming both lists when they share no class.
fn check_classes(
    card: &ModelCard,
    dataset: &Dataset,
    model: &Path,
) -> Result<Option<ClassMatch>, TrainError> {
    ClassMatch::between(card, dataset.classes()).map_err(|e| {
        TrainError::Data(format!(
            "model {}: {}",
            model.display(),
            match e {
                percept_eval::EvalError::Data(message) => message,
                other => other.to_string(),
            }
        ))
    })
}

/// What `percept eval` evaluates and where it writes.
#[derive(Debug, Clone)]
pub struct EvalRequest<'a> {
    /// Model file (checkpoint or export).
    pub model: &'a Path,
    /// Dataset directory.
    pub data: &'a Path,
    pub split: Split,
    /// Site region the data's policy is checked against (default: the model's training site).
    pub site: Option<&'a str>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Where metrics are computed (default: the model card's `eval_resolution`).
    pub resolution: Option<MetricResolution>,
    /// Write the JSON report here.
    pub json: Option<&'a Path>,
    /// Write the Markdown/HTML report (charts, example overlays) into this directory.
    pub report_dir: Option<&'a Path>,
    /// Example overlays in the report.
    pub examples: usize,
    pub device: DeviceSpec,
}

impl<'a> EvalRequest<'a> {
    /// Evaluates `model` on `data`'s `split` at the model's site, on the CPU, at the card's
    /// resolution, writing nothing.
    pub fn new(model: &'a Path, data: &'a Path, split: Split) -> Self {
        EvalRequest {
            model,
            data,
            split,
            site: None,
            batch_size: 8,
            resolution: None,
            json: None,
            report_dir: None,
            examples: 12,
            device: DeviceSpec::Cpu,
        }
    }
}

/// An evaluation and the report files written for it.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub report: EvalReport,
    /// The Markdown/HTML report, when one was asked for.
    pub files: Option<ReportFiles>,
}

/// `percept eval`: evaluates a model file on a dataset split at the request's site (default:
/// the site the model was trained at); writes the JSON report and the Markdown/HTML report
/// when asked.
pub fn eval(request: &EvalRequest) -> Result<EvalOutcome, TrainError> {
    let onnx = load_if_onnx(request.model, request.device)?;
    let card = match &onnx {
        Some((_, card)) => card.clone(),
        None => read_model_card(request.model)?,
    };
    let site = request.site.unwrap_or(&card.provenance.site_region);
    let dataset = open_for_site(request.data, request.split, site)?;
    let options = EvalOptions {
        max_images: 0,
        batch_size: request.batch_size,
        resolution: request.resolution.unwrap_or(card.eval_resolution),
        examples: if request.report_dir.is_some() {
            request.examples
        } else {
            0
        },
    };
    let evaluation = dispatch(
        request.device,
        EvalTask {
            model: request.model,
            onnx: onnx.as_ref(),
            dataset: &dataset,
            options,
        },
    )??;
    if let Some(out) = request.json {
        let json = serde_json::to_string_pretty(&evaluation.report).expect("serialises");
        write_atomic(out, json.as_bytes())?;
    }
    let files = match request.report_dir {
        Some(dir) => {
            let title = format!(
                "{} on {} ({})",
                request.model.display(),
                request.data.display(),
                request.split
            );
            Some(write_report(&evaluation, dir, &title)?)
        }
        None => None,
    };
    Ok(EvalOutcome {
        report: evaluation.report,
        files,
    })
}

struct UntrainedEvalTask<'a> {
    card: &'a ModelCard,
    dataset: &'a Dataset,
    seed: u64,
}

impl BackendTask for UntrainedEvalTask<'_> {
    type Output = Result<Evaluation, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let net =
            PerceptionNetConfig::init_seeded::<B>(&self.card.architecture, self.seed, &device)
                .valid();
        let bar = progress(self.dataset.len() as u64, "eval (untrained)");
        let options = EvalOptions {
            max_images: 0,
            batch_size: 8,
            resolution: self.card.eval_resolution,
            examples: 0,
        };
        let evaluation = evaluate(&net, self.card, self.dataset, &options, &device, &bar);
        bar.finish_and_clear();
        Ok(evaluation?)
    }
}

/// Evaluates a freshly initialised network of `card`'s architecture: the baseline that
/// training must beat.
pub fn eval_untrained(
    card: &ModelCard,
    dataset: &Dataset,
    seed: u64,
    device: DeviceSpec,
) -> Result<EvalReport, TrainError> {
    let evaluation = dispatch(
        device,
        UntrainedEvalTask {
            card,
            dataset,
            seed,
        },
    )??;
    Ok(evaluation.report)
}

struct ExportTask<'a> {
    checkpoint: &'a Path,
    out: &'a Path,
}

impl BackendTask for ExportTask<'_> {
    type Output = Result<ExportSummary, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        export::<B::InnerBackend>(self.checkpoint, self.out, &device)
    }
}

struct OnnxExportTask<'a> {
    checkpoint: &'a Path,
    out: &'a Path,
    request: &'a OnnxExportRequest<'a>,
    log: Option<&'a mut AuditLog>,
}

impl BackendTask for OnnxExportTask<'_> {
    type Output = Result<OnnxExportSummary, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let bar = progress(0, "calibrate");
        let summary = export_onnx::<B::InnerBackend>(
            self.checkpoint,
            self.out,
            self.request,
            &device,
            &bar,
            self.log,
        );
        bar.finish_and_clear();
        summary
    }
}

/// `percept export --format onnx`: as [`export_model`], and an INT8 export's calibration
/// dataset is cleared by the guard (its decision in the run's audit log) before a frame is read.
pub fn export_onnx_model(
    checkpoint: &Path,
    out: &Path,
    request: &OnnxExportRequest,
    device: DeviceSpec,
) -> Result<OnnxExportSummary, TrainError> {
    let mut log = run_audit_log(checkpoint)?;
    let summary = dispatch(
        device,
        OnnxExportTask {
            checkpoint,
            out,
            request,
            log: log.as_mut(),
        },
    )??;
    record_export(log.as_mut(), checkpoint, out, &summary.hash)?;
    Ok(summary)
}

/// Records an export of `checkpoint` to `out` (file hash `hash`) in the run's audit log, if any.
fn record_export(
    log: Option<&mut AuditLog>,
    checkpoint: &Path,
    out: &Path,
    hash: &str,
) -> Result<(), TrainError> {
    if let Some(log) = log {
        audit(
            log,
            AuditEvent::Export {
                path: out.display().to_string(),
                hash: hash.to_string(),
                source: checkpoint.display().to_string(),
            },
        )?;
    }
    Ok(())
}

/// The audit log of the run whose `checkpoints/` holds `checkpoint`, opened (and, for a signed
/// log, its site key loaded) before anything is written; `None` for a checkpoint elsewhere.
fn run_audit_log(checkpoint: &Path) -> Result<Option<AuditLog>, TrainError> {
    let run_dir = checkpoint
        .parent()
        .filter(|dir| dir.file_name().is_some_and(|n| n == "checkpoints"))
        .and_then(Path::parent)
        .filter(|run| run.join(AUDIT_FILE).exists());
    let log = match run_dir {
        // The run's own config names its site key; a signed log takes only signed entries.
        Some(run_dir) if run_dir.join(RUN_CONFIG_FILE).exists() => {
            let config = RunConfig::load(&run_dir.join(RUN_CONFIG_FILE))?;
            Some(percept_train::site::open_audit_log(run_dir, &config.site)?)
        }
        Some(run_dir) => Some(
            AuditLog::open(run_dir.join(AUDIT_FILE))
                .map_err(|e| TrainError::Audit(e.to_string()))?,
        ),
        None => None,
    };
    Ok(log)
}

/// `percept export`. When the checkpoint is in a run's `checkpoints/`, the export is recorded
/// in that run's audit log, which is opened (and, for a signed log, its site key loaded) before
/// anything is written.
pub fn export_model(
    checkpoint: &Path,
    out: &Path,
    device: DeviceSpec,
) -> Result<ExportSummary, TrainError> {
    let mut log = run_audit_log(checkpoint)?;
    let summary = dispatch(device, ExportTask { checkpoint, out })??;
    record_export(log.as_mut(), checkpoint, out, &summary.hash)?;
    Ok(summary)
}

/// What `percept audit verify` established.
#[derive(Debug, Clone)]
pub struct AuditVerification {
    pub log: PathBuf,
    pub report: AuditReport,
    /// Files whose pinned audit head the log matches (checkpoint states, the run summary).
    pub pins: Vec<PathBuf>,
    /// Whether the signatures were checked against a site key given apart from the log
    /// (`--key` or a `--head` file), not only the key the log names.
    pub key_checked: bool,
}

/// Where a signed log must come from: the site's public key (`--key`) and an anchored head
/// (`--head`, written by `percept audit export-head`), both optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditAnchors<'a> {
    pub key: Option<&'a Path>,
    pub head: Option<&'a Path>,
}

/// The audit log of `run`: the run directory's `audit.jsonl`, or `run` itself when it is a
/// file; an error naming it when it does not exist.
pub fn audit_log_path(run: &Path) -> Result<PathBuf, TrainError> {
    let log = if run.is_dir() {
        run.join(AUDIT_FILE)
    } else {
        run.to_path_buf()
    };
    if !log.exists() {
        return Err(TrainError::Audit(format!(
            "{} does not exist; give a run directory (runs/<name>) or its audit.jsonl",
            log.display()
        )));
    }
    Ok(log)
}

/// `percept audit verify`: checks the hash chain of a run's audit log (`run` is the run
/// directory or the log itself), then that the log still holds every head pinned by the run's
/// checkpoint states and summary (so deleted trailing entries are caught too).
///
/// A signed log's every entry is checked against the key its first entry names; with `--key`
/// (the site's `.pub` file) that key must be the site's, and with `--head` the log must still
/// extend the anchored head and be signed by the head's key.
pub fn audit_verify(run: &Path, anchors: AuditAnchors) -> Result<AuditVerification, TrainError> {
    let log = audit_log_path(run)?;
    let run_dir = if run.is_dir() {
        run.to_path_buf()
    } else {
        run.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let audit_err = |e: percept_data::AuditError| TrainError::Audit(e.to_string());
    let mut report = percept_data::audit::verify(&log).map_err(audit_err)?;
    let mut key_checked = false;
    if let Some(key) = anchors.key {
        let (key, _) = percept_data::PublicKey::load(key)?;
        report = percept_data::audit::verify_signed_by(&log, &key).map_err(audit_err)?;
        key_checked = true;
    }
    let mut pinned: Vec<(PathBuf, AuditHead)> = Vec::new();
    if let Some(head_file) = anchors.head {
        let (head, key) = percept_data::audit::SignedHead::load(head_file).map_err(audit_err)?;
        percept_data::audit::verify_signed_by(&log, &key).map_err(audit_err)?;
        key_checked = true;
        pinned.push((head_file.to_path_buf(), head.head()));
    }
    let states = run_dir.join("checkpoints");
    if let Ok(entries) = std::fs::read_dir(&states) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".state.json"))
            .collect();
        files.sort();
        for file in files {
            let state = RunState::load(&file)?;
            pinned.push((file, state.audit_head));
        }
    }
    let summary = run_dir.join("summary.json");
    if summary.exists() {
        let text = std::fs::read_to_string(&summary).map_err(|e| TrainError::Io {
            path: summary.clone(),
            source: e,
        })?;
        let head = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value::<AuditHead>(v["audit_head"].clone()).ok())
            .ok_or_else(|| TrainError::Audit(format!("{} has no audit_head", summary.display())))?;
        pinned.push((summary, head));
    }
    for (file, head) in &pinned {
        percept_data::audit::verify_against(&log, head).map_err(|e| {
            TrainError::Audit(format!(
                "{e} (the head was pinned by {} at entry {})",
                file.display(),
                head.entries
            ))
        })?;
    }
    Ok(AuditVerification {
        log,
        report,
        pins: pinned.into_iter().map(|(f, _)| f).collect(),
        key_checked,
    })
}

struct PredictTask<'a> {
    model: &'a Path,
    /// The model when it is an ONNX export, already in ONNX Runtime.
    onnx: Option<&'a OnnxModel>,
    image: &'a Path,
    png: &'a Path,
    json: &'a Path,
}

impl BackendTask for PredictTask<'_> {
    type Output = Result<Prediction, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let image = read_image(self.image)?;
        let (prediction, card) = match self.onnx {
            Some((model, card)) => (
                predict_image::<B::InnerBackend>(model, card, &image, self.image, &device),
                card.clone(),
            ),
            None => {
                let (net, card) = load_model::<B::InnerBackend>(self.model, &device)?;
                (
                    predict_image(&net, &card, &image, self.image, &device),
                    card,
                )
            }
        };
        write_prediction(&prediction, &image, &card, self.png, self.json)?;
        Ok(prediction)
    }
}

/// Default output paths of `percept predict` for an image: `<stem>.overlay.png` and
/// `<stem>.detections.json` in `out_dir`.
pub fn prediction_paths(image: &Path, out_dir: &Path) -> (PathBuf, PathBuf) {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    (
        out_dir.join(format!("{stem}.overlay.png")),
        out_dir.join(format!("{stem}.detections.json")),
    )
}

/// `percept predict`: writes the overlay PNG and the detections JSON.
pub fn predict(
    model: &Path,
    image: &Path,
    png: &Path,
    json: &Path,
    device: DeviceSpec,
) -> Result<Prediction, TrainError> {
    let onnx = load_if_onnx(model, device)?;
    dispatch(
        device,
        PredictTask {
            model,
            onnx: onnx.as_ref(),
            image,
            png,
            json,
        },
    )?
}

struct ParameterCountTask<'a>(&'a PerceptionNetConfig);

impl BackendTask for ParameterCountTask<'_> {
    type Output = usize;
    fn run<B>(self, device: B::Device) -> usize
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        use burn::module::Module;
        self.0.init::<B::InnerBackend>(&device).num_params()
    }
}

/// Parameters of a network of `config`.
pub fn parameter_count(
    config: &PerceptionNetConfig,
    device: DeviceSpec,
) -> Result<usize, TrainError> {
    dispatch(device, ParameterCountTask(config))
}
