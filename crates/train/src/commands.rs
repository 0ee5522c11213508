//! What each `percept` subcommand does, on the backend the user picked.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use indicatif::{ProgressBar, ProgressStyle};
use percept_data::{write_synthetic_dataset, Dataset, Manifest, Split, SynthOptions};
use percept_model::PerceptionNetConfig;

use crate::backend::{dispatch, BackendTask, DeviceSpec};
use crate::config::RunConfig;
use crate::data::{open_for_site, TrainingData};
use crate::eval::{evaluate, EvalReport};
use crate::export::{export, ExportSummary};
use crate::fsutil::write_atomic;
use crate::model_file::{load_model, read_model_card, ModelCard};
use crate::predict::{predict_image, read_image, write_prediction, Prediction};
use crate::trainer::{TrainSummary, TrainTask};
use crate::TrainError;

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
    let bar = progress((options.train + options.val) as u64, "synth");
    let manifest = write_synthetic_dataset(out, options, &|n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    Ok(manifest)
}

/// `percept train`.
pub fn train(config: &RunConfig, device: DeviceSpec) -> Result<TrainSummary, TrainError> {
    let data = TrainingData::open(config)?;
    dispatch(device, TrainTask { config, data })?
}

struct EvalTask<'a> {
    model: &'a Path,
    dataset: &'a Dataset,
    batch_size: usize,
}

impl BackendTask for EvalTask<'_> {
    type Output = Result<EvalReport, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let (net, card) = load_model::<B::InnerBackend>(self.model, &device)?;
        check_classes(&card, self.dataset, self.model)?;
        let bar = progress(self.dataset.len() as u64, "eval");
        let report = evaluate(&net, &card, self.dataset, self.batch_size, &device, &bar);
        bar.finish_and_clear();
        report
    }
}

fn check_classes(card: &ModelCard, dataset: &Dataset, model: &Path) -> Result<(), TrainError> {
    if card.classes.as_slice() != dataset.classes() {
        return Err(TrainError::Data(format!(
            "model {} detects {:?} but the dataset's classes are {:?}: evaluate on a dataset \
             with the model's class list",
            model.display(),
            card.classes,
            dataset.classes()
        )));
    }
    Ok(())
}

/// `percept eval`: evaluates a model file on a dataset split at `site` (default: the site the
/// model was trained at), writes the JSON report to `out` when given.
pub fn eval(
    model: &Path,
    data: &Path,
    split: Split,
    site: Option<&str>,
    batch_size: usize,
    out: Option<&Path>,
    device: DeviceSpec,
) -> Result<EvalReport, TrainError> {
    let card = read_model_card(model)?;
    let site = site.unwrap_or(&card.provenance.site_region);
    let dataset = open_for_site(data, split, site)?;
    let report = dispatch(
        device,
        EvalTask {
            model,
            dataset: &dataset,
            batch_size,
        },
    )??;
    if let Some(out) = out {
        let json = serde_json::to_string_pretty(&report).expect("serialises");
        write_atomic(out, json.as_bytes())?;
    }
    Ok(report)
}

struct UntrainedEvalTask<'a> {
    card: &'a ModelCard,
    dataset: &'a Dataset,
    seed: u64,
}

impl BackendTask for UntrainedEvalTask<'_> {
    type Output = Result<EvalReport, TrainError>;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        B::seed(&device, self.seed);
        let net = PerceptionNetConfig::init::<B>(&self.card.architecture, &device).valid();
        let bar = progress(self.dataset.len() as u64, "eval (untrained)");
        let report = evaluate(&net, self.card, self.dataset, 8, &device, &bar);
        bar.finish_and_clear();
        report
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
    dispatch(
        device,
        UntrainedEvalTask {
            card,
            dataset,
            seed,
        },
    )?
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

/// `percept export`.
pub fn export_model(
    checkpoint: &Path,
    out: &Path,
    device: DeviceSpec,
) -> Result<ExportSummary, TrainError> {
    dispatch(device, ExportTask { checkpoint, out })?
}

struct PredictTask<'a> {
    model: &'a Path,
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
        let (net, card) = load_model::<B::InnerBackend>(self.model, &device)?;
        let image = read_image(self.image)?;
        let prediction = predict_image(&net, &card, &image, self.image, &device);
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
    dispatch(
        device,
        PredictTask {
            model,
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
