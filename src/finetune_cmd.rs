//! `percept finetune`: a country fine-tune (a training run whose config has `[finetune]`:
//! base model, country profile, freezing, distillation, L2-SP; see `percept_train::finetune`),
//! then the base and the fine-tuned model side by side on the country's held-out split.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use percept_data::{ClassOrigin, Split};
use percept_eval::compare::{compare_reports, write_comparison, Comparison};
use percept_eval::model_file::{save_model, ModelCard};
use percept_model::{PerceptionNet, PerceptionNetConfig};
use percept_train::backend::Devices;
use percept_train::config::RunConfig;
use percept_train::finetune::FinetuneBase;
use percept_train::trainer::TrainSummary;
use percept_train::TrainError;

use crate::commands::{self, EvalRequest};

/// Folder of the before/after report in the run directory.
pub const BEFORE_AFTER_DIR: &str = "before-after";

/// What a fine-tune produced.
pub struct FinetuneOutcome {
    pub summary: TrainSummary,
    /// Per dataset of the run: its name, the comparison and the files written (none when the
    /// run was interrupted).
    pub reports: Vec<BeforeAfter>,
}

/// Base vs fine-tuned on one dataset's held-out split.
pub struct BeforeAfter {
    pub dataset: PathBuf,
    pub comparison: Comparison,
    pub files: Vec<PathBuf>,
}

/// `percept finetune --base MODEL --config FILE`: `config` must have a `[finetune]` table
/// (`finetune.base` set from `--base`). Trains, then reports.
pub fn finetune(
    config: &RunConfig,
    devices: impl Into<Devices>,
) -> Result<FinetuneOutcome, TrainError> {
    check_finetune_config(config, "the config")?;
    let summary = commands::train(config, devices)?;
    finish(config, summary)
}

/// `percept finetune --resume RUN_DIR`.
pub fn finetune_resume(
    run_dir: &Path,
    devices: impl Into<Devices>,
) -> Result<FinetuneOutcome, TrainError> {
    let config_path = run_dir.join(commands::RUN_CONFIG_FILE);
    if config_path.exists() {
        let config = RunConfig::load(&config_path)?;
        check_finetune_config(&config, &config_path.display().to_string())?;
    }
    let summary = commands::resume(run_dir, devices)?;
    let config = RunConfig::load(&config_path)?;
    finish(&config, summary)
}

/// Refuses a config without `[finetune]`; `what` names it in the message.
pub fn check_finetune_config(config: &RunConfig, what: &str) -> Result<(), TrainError> {
    if config.finetune.is_none() {
        return Err(TrainError::Invalid(format!(
            "{what} has no [finetune] table: a fine-tune names its country profile \
             (finetune.profile = \"JP\", or a profile file) and may set freeze, distillation \
             and l2sp; see configs/finetune-jp.toml. `percept train` trains without one"
        )));
    }
    Ok(())
}

fn finish(config: &RunConfig, summary: TrainSummary) -> Result<FinetuneOutcome, TrainError> {
    let reports = if summary.interrupted {
        Vec::new()
    } else {
        before_after(config, &summary)?
    };
    Ok(FinetuneOutcome { summary, reports })
}

/// Evaluates the base and the fine-tuned model on every dataset's held-out split at the run's
/// site, and writes each side-by-side table into `RUN_DIR/before-after/` (a subfolder per
/// dataset when the run has several).
///
/// The base is scored as the fine-tune started from it: its class rows mapped to the
/// country's classes (a renamed class keeps its detections under the country's name; a new
/// class has its fresh, untrained rows), so both columns score the same classes.
fn before_after(
    config: &RunConfig,
    summary: &TrainSummary,
) -> Result<Vec<BeforeAfter>, TrainError> {
    let base = mapped_base(config, &summary.run_dir.join(BEFORE_AFTER_DIR))?;
    let several = config.data.datasets.len() > 1;
    let mut out = Vec::new();
    for dataset in &config.data.datasets {
        let evaluate = |model: &Path| {
            let mut request = EvalRequest::new(model, dataset, Split::Val);
            request.site = Some(&config.site.region);
            request.batch_size = config.validation.batch_size;
            commands::eval(&request).map(|o| o.report)
        };
        let before = evaluate(&base)?;
        let after = evaluate(&summary.checkpoint)?;
        let comparison = compare_reports(&[
            ("base".to_string(), before),
            ("fine-tuned".to_string(), after),
        ]);
        let dir = if several {
            let name = dataset
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dataset".into());
            summary.run_dir.join(BEFORE_AFTER_DIR).join(name)
        } else {
            summary.run_dir.join(BEFORE_AFTER_DIR)
        };
        let files = write_comparison(&comparison, &dir)?;
        out.push(BeforeAfter {
            dataset: dataset.clone(),
            comparison,
            files,
        });
    }
    Ok(out)
}

/// The base model with its class rows mapped to the country's classes, as the fine-tune's
/// first step saw it (same seed for the new classes' rows): the base file itself when the
/// mapping keeps every class in place, else a model file written into `dir`.
fn mapped_base(config: &RunConfig, dir: &Path) -> Result<PathBuf, TrainError> {
    let f = config.finetune.as_ref().expect("a fine-tune's config");
    let profile = crate::countries::resolve_profile(&f.profile, None)?;
    let base = FinetuneBase::open(config, profile)?;
    let identity = base.mapping.classes.len() == base.card.classes.len()
        && base
            .mapping
            .classes
            .iter()
            .enumerate()
            .all(|(i, (name, origin))| {
                *origin == ClassOrigin::Kept(i) && *name == base.card.classes[i]
            });
    if identity {
        return Ok(base.path);
    }
    let arch = PerceptionNetConfig {
        num_classes: base.mapping.classes.len(),
        ..base.card.architecture.clone()
    };
    let net: PerceptionNet<Flex> = arch.init_seeded(config.train.seed, &Default::default());
    let net = base.student(net)?;
    let card = ModelCard {
        architecture: arch,
        classes: base.mapping.class_names(),
        ..base.card.clone()
    };
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let path = dir.join(format!(
        "base-as-{}.safetensors",
        base.profile.code.to_lowercase()
    ));
    save_model(&net, &card, &path)?;
    Ok(path)
}
