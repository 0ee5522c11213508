//! Checkpoints as a run writes them: the model file (EMA weights when there are any), the
//! training state (raw weights, optimiser, EMA) and the commit record, each recorded in the
//! audit log; see [`crate::checkpoint`] for the files.
//!
//! A checkpoint that cannot be written (disk full, a directory in the way) never stays half
//! written: its files are removed, the audit log gets a `checkpoint_failed` entry (not a
//! `checkpoint` one, unless only the commit record failed, which the failure entry then
//! withdraws), and `checkpoint.on_error` decides whether the run stops or trains on. The final
//! checkpoint is the run's result, so its failure always stops the run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use percept_data::{AuditEvent, AuditLog, SamplerState};
use percept_eval::model_file::{save_model, ModelCard};
use percept_model::PerceptionNet;

use crate::checkpoint::{
    CheckpointDir, CheckpointFiles, CheckpointKind, NonfiniteSteps, RunState, TrainingState,
};
use crate::config::CheckpointOnError;
use crate::data::audit;
use crate::ema::WeightEma;
use crate::optim::RunOptimizer;
use crate::schedule::ScheduleState;
use crate::TrainError;

/// Everything of a run's position that a checkpoint saves besides weights and optimiser.
pub struct Position {
    pub step: usize,
    pub sampler: Option<SamplerState>,
    pub schedule: ScheduleState,
    pub nonfinite: NonfiniteSteps,
    pub skipped_samples: usize,
    pub known_bad: BTreeSet<(usize, usize)>,
}

/// Writes checkpoints and records them in the audit log.
pub struct Checkpointer<'a> {
    pub dir: CheckpointDir,
    pub card: ModelCard,
    pub config_hash: String,
    pub audit: &'a mut AuditLog,
    /// The config's text ([`crate::checkpoint::config_text`]), recorded in each state.
    pub config_text: String,
    pub on_error: CheckpointOnError,
    /// The newest checkpoint written or resumed from: the last one known to be whole.
    pub last: Option<(PathBuf, String)>,
    /// The step the run resumed from, if it did.
    pub resumed_step: Option<usize>,
    /// Checkpoints this process wrote.
    pub written: BTreeSet<String>,
}

impl Checkpointer<'_> {
    /// Saves checkpoint `name`: the model file (`eval_net`: the EMA weights when there are
    /// any), the training state, then the commit record. A failure removes what was written
    /// and is recorded; then, under `checkpoint.on_error = "continue"` (not for the final
    /// checkpoint), `Ok(None)`, otherwise an error naming the file and the reason.
    #[allow(clippy::too_many_arguments)]
    pub fn save<B: AutodiffBackend>(
        &mut self,
        name: &str,
        kind: CheckpointKind,
        net: &PerceptionNet<B>,
        ema: Option<&WeightEma<B::InnerBackend>>,
        optimizer: &RunOptimizer<B>,
        position: &Position,
        score: Option<f64>,
    ) -> Result<Option<(PathBuf, String)>, TrainError> {
        let files = self.dir.files(name);
        match self.write(&files, name, kind, net, ema, optimizer, position, score) {
            Ok(saved) => {
                self.written.insert(name.to_string());
                self.last = Some(saved.clone());
                Ok(Some(saved))
            }
            Err(error) => self.failed(name, &files, position.step, kind, error),
        }
    }

    /// Removes what a failed checkpoint left, records the failure, and stops or goes on.
    fn failed(
        &mut self,
        name: &str,
        files: &CheckpointFiles,
        step: usize,
        kind: CheckpointKind,
        error: TrainError,
    ) -> Result<Option<(PathBuf, String)>, TrainError> {
        let mut message = error.to_string();
        if let Err(e) = self.dir.remove(name) {
            message.push_str(&format!("; removing its files failed too: {e}"));
        }
        let action = match kind {
            CheckpointKind::Final => CheckpointOnError::Stop,
            _ => self.on_error,
        };
        tracing::error!(
            "checkpoint {} (step {step}) could not be written: {message}; checkpoint.on_error \
             = \"{}\"",
            files.model.display(),
            action.name()
        );
        let recorded = audit(
            self.audit,
            AuditEvent::CheckpointFailed {
                path: files.model.display().to_string(),
                step: step as u64,
                error: message.clone(),
                action: action.name().into(),
            },
        );
        if let Err(e) = recorded {
            message.push_str(&format!("; recording the failure failed too: {e}"));
        } else if action == CheckpointOnError::Continue {
            return Ok(None);
        }
        Err(TrainError::Checkpoint {
            path: files.model.clone(),
            step,
            message,
            last_checkpoint: self.last_description(),
            run_dir: self
                .dir
                .path()
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            is_final: kind == CheckpointKind::Final,
        })
    }

    /// Prunes by `keep_last` and `keep_best`, never the last checkpoint known to be whole,
    /// nor one newer than the checkpoint the run resumed from that this process did not
    /// write (a person may still repair it).
    pub fn prune(&self, keep_last: usize, keep_best: usize) -> Result<Vec<String>, TrainError> {
        let mut keep: Vec<String> = self
            .last
            .iter()
            .filter_map(|(path, _)| path.file_name()?.to_str()?.strip_suffix(".safetensors"))
            .map(str::to_string)
            .collect();
        if let Some(from) = self.resumed_step {
            for found in self.dir.list() {
                let newer = !matches!(&found.state, Ok(s) if s.step <= from);
                if newer && !self.written.contains(&found.name) {
                    keep.push(found.name);
                }
            }
        }
        self.dir.retain(keep_last, keep_best, &keep)
    }

    /// The writes of [`save`](Self::save).
    #[allow(clippy::too_many_arguments)]
    fn write<B: AutodiffBackend>(
        &mut self,
        files: &CheckpointFiles,
        name: &str,
        kind: CheckpointKind,
        net: &PerceptionNet<B>,
        ema: Option<&WeightEma<B::InnerBackend>>,
        optimizer: &RunOptimizer<B>,
        position: &Position,
        score: Option<f64>,
    ) -> Result<(PathBuf, String), TrainError> {
        let mut card = self.card.clone();
        card.provenance.steps = position.step;
        card.provenance.audit_head = Some(self.audit.head());
        let raw;
        let eval_net = match ema {
            Some(e) => e.weights(),
            None => {
                raw = net.valid();
                &raw
            }
        };
        let hash = save_model(eval_net, &card, &files.model)?;
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let record_err = |e: burn::record::RecorderError| TrainError::ModelFile {
            path: files.training.clone(),
            message: format!("could not serialise the training state: {e}"),
        };
        let training = TrainingState {
            model: recorder
                .record(net.clone().into_record(), ())
                .map_err(record_err)?,
            optimizer: optimizer.to_bytes()?.into_iter().collect(),
            ema: ema
                .map(|e| recorder.record(e.weights().clone().into_record(), ()))
                .transpose()
                .map_err(record_err)?,
        }
        .to_bytes();
        let training_hash = blake3::hash(&training).to_hex().to_string();
        // Both files are on disk before the audit log says there is a checkpoint.
        self.dir.write_training(name, &training)?;
        let audit_head = audit(
            self.audit,
            AuditEvent::Checkpoint {
                path: files.model.display().to_string(),
                step: position.step as u64,
                hash: hash.clone(),
                training_state_hash: Some(training_hash.clone()),
            },
        )?;
        let state = RunState {
            step: position.step,
            kind,
            checkpoint: format!("{name}.safetensors"),
            checkpoint_hash: hash.clone(),
            training_state: format!("{name}.train.safetensors"),
            training_state_hash: training_hash,
            config_hash: self.config_hash.clone(),
            sampler: position
                .sampler
                .clone()
                .expect("a checkpoint follows at least one step"),
            schedule: position.schedule.clone(),
            ema_updates: ema.map(|e| e.updates()),
            nonfinite: position.nonfinite,
            skipped_samples: position.skipped_samples,
            known_bad: position.known_bad.iter().copied().collect(),
            score,
            audit_head,
            config: Some(self.config_text.clone()),
        };
        self.dir.write_state(name, &state)?;
        Ok((files.model.clone(), hash))
    }

    pub fn last_description(&self) -> String {
        match &self.last {
            Some((path, _)) => format!("The last checkpoint, {}, is intact.", path.display()),
            None => "No checkpoint had been written yet.".into(),
        }
    }
}
