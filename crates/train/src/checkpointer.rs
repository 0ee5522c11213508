//! Checkpoints as a run writes them: the model file (EMA weights when there are any), the
//! training state (raw weights, optimiser, EMA) and the commit record, each recorded in the
//! audit log; see [`crate::checkpoint`] for the files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use percept_data::{AuditEvent, AuditLog, SamplerState};
use percept_eval::model_file::{save_model, ModelCard};
use percept_model::PerceptionNet;

use crate::checkpoint::{CheckpointDir, CheckpointKind, NonfiniteSteps, RunState, TrainingState};
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
    /// The newest checkpoint written or resumed from.
    pub last: Option<(PathBuf, String)>,
}

impl Checkpointer<'_> {
    /// Saves checkpoint `name`: the model file (`eval_net`: the EMA weights when there are
    /// any), the training state, then the commit record.
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
    ) -> Result<(PathBuf, String), TrainError> {
        let files = self.dir.files(name);
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
        };
        self.dir.commit(name, &training, &state)?;
        self.last = Some((files.model.clone(), hash.clone()));
        Ok((files.model, hash))
    }

    pub fn last_description(&self) -> String {
        match &self.last {
            Some((path, _)) => format!("The last checkpoint, {}, is intact.", path.display()),
            None => "No checkpoint had been written yet.".into(),
        }
    }
}
