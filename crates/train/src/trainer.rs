//! The training loop: sampler -> prefetched, augmented micro-batches -> forward -> multi-task
//! loss -> backward (gradients summed over `grad_accumulation` micro-batches) -> finiteness
//! check and global-norm clip -> one burn optimiser per parameter group -> EMA; with the
//! learning-rate schedule, validation, checkpoints that resume bit for bit, `metrics.jsonl`,
//! progress, Ctrl-C, and every data decision in the run's audit log.
//!
//! # Exact resume
//!
//! Everything a step depends on is either saved with a checkpoint or a pure function of what
//! is: the raw weights and optimiser state (burn records, full precision), the schedule's burn
//! records, the EMA weights and update count, the sampler position (every augmentation draw
//! comes from an RNG seeded by its slot), the samples known to be bad, and the non-finite step
//! counters. Nothing else in a step is random (the network has no dropout). On the CPU backend a
//! run killed at any point and resumed from its last checkpoint ends with the same bits as one
//! that was never interrupted (`tests/resume.rs` kills a child process to check it).
//!
//! # The run object
//!
//! [`train`] is [`Run::start`] (fresh or resumed), then per step [`Run::step`] (data, the
//! optimisation step of [`crate::step`], EMA), [`Run::log`], [`Run::checkpoint`] and
//! [`Run::validate`], then [`Run::finish`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use percept_data::{AuditEvent, AuditHead, AuditLog, Batch};
use percept_eval::metrics_log::LossValues;
use percept_eval::model_file::{
    load_matching, read_model_card, BaseLink, ModelCard, Normalization, Provenance, MODEL_FORMAT,
};
use percept_model::{PerceptionNet, PerceptionNetConfig};
use serde::Serialize;

use crate::backend::BackendTask;
use crate::checkpoint::{
    decode_record, CheckpointDir, CheckpointKind, NonfiniteSteps, TrainingState,
};
pub use crate::checkpoint::{state_path, RunState};
use crate::checkpointer::{Checkpointer, Position};
use crate::cluster::Cluster;
use crate::config::RunConfig;
use crate::data::{audit, TrainingData};
use crate::data_parallel::{self, Replica, ReplicaWorkers, StepOutcome};
use crate::ema::WeightEma;
use crate::finetune::{FinetuneBase, FinetuneTerms};
use crate::loader::{BatchBuilder, BatchLoader, LoaderOptions};
use crate::optim::RunOptimizer;
use crate::run_log::{Pace, RunLog, StepRecord};
use crate::schedule::LearningRateSchedule;
use crate::step::loss_values;
use crate::validation::validate;
use crate::TrainError;
use percept_data::atomic_file::write_atomic;

/// What a run (or this part of it) produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    /// The last checkpoint's model file.
    pub checkpoint: PathBuf,
    pub checkpoint_hash: String,
    /// Steps done in total, and the step this process started from (0, or the checkpoint
    /// resumed from).
    pub steps: usize,
    pub start_step: usize,
    pub parameters: usize,
    pub final_losses: LossValues,
    /// Over this process's steps.
    pub images_per_second: f64,
    pub seconds: f64,
    /// Share of the wall time the step waited for data (0 when prefetch keeps up).
    pub data_wait_fraction: f64,
    /// Distinct samples skipped under the `skip` integrity policy (each is in the audit log).
    pub skipped_samples: usize,
    /// Steps skipped for a non-finite loss or gradient.
    pub nonfinite_steps: usize,
    /// Stopped by Ctrl-C: `checkpoint` holds the state to resume from.
    pub interrupted: bool,
    /// The audit log's head after the run ended.
    pub audit_head: AuditHead,
}

/// Test-only fault injection: these steps' losses are multiplied by NaN before backward, so
/// their gradients are non-finite too (the real path a diverging run takes).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub nonfinite_steps: BTreeSet<usize>,
}

/// Trains a run, fresh or from a checkpoint; the task of [`crate::backend::dispatch`].
pub struct TrainTask<'a> {
    pub config: &'a RunConfig,
    /// The run directory (normally `config.run_dir()`).
    pub run_dir: PathBuf,
    pub data: TrainingData,
    pub audit: &'a mut AuditLog,
    /// The checkpoint to continue from.
    pub resume: Option<RunState>,
    pub faults: Faults,
    /// This process's place in a run over several processes (mpirun/srun).
    pub cluster: Option<Cluster>,
    /// The base model of a fine-tune (the config's `[finetune]`), opened and checked.
    pub finetune: Option<FinetuneBase>,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<TrainSummary, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        train::<B>(self, &[device])
    }

    fn run_on<B>(self, devices: Vec<B::Device>) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        train::<B>(self, &devices)
    }
}

/// Trains on `devices` (more than one: data-parallel, see [`crate::data_parallel`]).
fn train<B>(task: TrainTask<'_>, devices: &[B::Device]) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let config = task.config;
    let mut run = Run::<B>::start(task, devices)?;
    let mut interrupted = false;
    for step in run.start_step + 1..=config.train.steps {
        let record = run.step(step)?;
        run.log(&record)?;
        // Ctrl-C (or SIGTERM): finish this step, checkpoint it, stop.
        let stop = run.stop_after(step)?;
        run.checkpoint(step, stop)?;
        run.validate(step)?;
        run.log.advance();
        if stop {
            interrupted = true;
            break;
        }
    }
    run.finish(interrupted)
}

/// A run in progress: the replicas, the optimiser's schedule, the EMA, the data and where the
/// run stands, with what it writes.
struct Run<'a, B: AutodiffBackend> {
    config: &'a RunConfig,
    run_dir: PathBuf,
    device: B::Device,
    data: Arc<TrainingData>,
    /// `None` only inside [`Run::step`].
    replica: Option<Replica<B>>,
    workers: ReplicaWorkers,
    /// The run's other processes, when it spans several.
    cluster: Option<Cluster>,
    schedule: LearningRateSchedule,
    ema: Option<WeightEma<B::InnerBackend>>,
    position: Position,
    checkpointer: Checkpointer<'a>,
    /// `None` once finished (its threads stopped).
    batches: Option<BatchLoader>,
    log: RunLog,
    faults: Faults,
    parameters: usize,
    start_step: usize,
    /// Images per optimisation step over every replica of every process.
    images_per_step: usize,
    started: Instant,
    waited: Duration,
    last_losses: LossValues,
}

/// The network, optimiser state and position a run starts from.
struct Start<B: AutodiffBackend> {
    net: PerceptionNet<B>,
    optimizer: RunOptimizer<B>,
    schedule: LearningRateSchedule,
    ema: Option<WeightEma<B::InnerBackend>>,
    position: Position,
    /// The checkpoint resumed from.
    last_checkpoint: Option<(PathBuf, String)>,
}

impl<'a, B> Run<'a, B>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    /// Builds the network (from `train.init` or the resumed checkpoint), the replicas, the
    /// data loader and the logs.
    fn start(task: TrainTask<'a>, devices: &[B::Device]) -> Result<Self, TrainError> {
        let TrainTask {
            config,
            run_dir,
            data,
            audit: audit_log,
            resume,
            faults,
            cluster,
            finetune,
        } = task;
        let device = devices[0].clone();
        if let Some(base) = &finetune {
            base.check_classes(data.classes())?;
            let f = config.finetune.as_ref().expect("a fine-tune's config");
            if (devices.len() > 1 || cluster.is_some())
                && (f.distillation.is_some() || f.l2sp.is_some())
            {
                return Err(TrainError::Invalid(
                    "finetune.distillation and finetune.l2sp run on one device for now: train \
                     on a single --device, or leave both out"
                        .into(),
                ));
            }
        }
        let arch = PerceptionNetConfig {
            size: config.model.size,
            num_classes: data.classes().len(),
            tasks: config.model.tasks,
        };
        arch.validate()
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut provenance = data.provenance(config);
        provenance.site_key = audit_log.signed_by().map(str::to_string);
        let net = initial_network::<B>(
            &arch,
            config,
            &run_dir,
            resume.as_ref(),
            finetune.as_ref(),
            &mut provenance,
            &device,
        )?;
        let parameters = net.num_params();
        log_model(config, &arch, parameters, data.len());
        let checkpoints = CheckpointDir::new(run_dir.join("checkpoints"));
        let data = Arc::new(data);
        let (start, sampler) = match &resume {
            None => (fresh_start(net, config)?, data.sampler(config)?),
            Some(state) => (
                resume_start(net, config, state, &checkpoints, &device)?,
                data.resume_sampler(config, state.sampler.clone())?,
            ),
        };
        log_groups(&start.optimizer);
        let start_step = start.position.step;
        let net = crate::finetune::freeze(start.net, config);
        let terms = match &finetune {
            Some(base) => FinetuneTerms::new(base, config, &net, &device)?,
            None => None,
        };
        let mut replica = Replica::single(net, start.optimizer, device.clone());
        replica.finetune = terms;
        if let Some(c) = &cluster {
            // Every rank continues from the same step, or none does.
            c.check_same_start(start_step, &run_dir)?;
        }
        let workers =
            ReplicaWorkers::start(&mut replica, devices, &arch, config, cluster.as_ref())?;
        log_replicas(config, &workers, cluster.as_ref());
        let world = workers.world_size();
        let batches = spawn_loader(config, &data, sampler, &start.position, &workers)?;
        let epoch = start.position.sampler.as_ref().map_or(0, |s| s.epoch);
        let log = RunLog::open(
            config,
            &run_dir,
            resume.as_ref().map(|s| s.step),
            start_step,
            epoch,
        )?;
        let checkpointer = Checkpointer {
            dir: checkpoints,
            card: ModelCard {
                format: MODEL_FORMAT.into(),
                architecture: arch,
                classes: data.classes().to_vec(),
                input: config.model.input.clone(),
                normalization: Normalization::default(),
                decode: config.eval.decode(),
                eval_resolution: config.eval.resolution,
                provenance,
            },
            config_hash: config.hash(),
            audit: audit_log,
            config_text: crate::checkpoint::config_text(config),
            on_error: config.checkpoint.on_error,
            last: start.last_checkpoint,
            resumed_step: resume.as_ref().map(|s| s.step),
            written: BTreeSet::new(),
        };
        Ok(Run {
            config,
            run_dir,
            device,
            data,
            replica: Some(replica),
            workers,
            cluster,
            schedule: start.schedule,
            ema: start.ema,
            position: start.position,
            checkpointer,
            batches: Some(batches),
            log,
            faults,
            parameters,
            start_step,
            images_per_step: config.train.batch_size * config.train.grad_accumulation * world,
            started: Instant::now(),
            waited: Duration::ZERO,
            last_losses: LossValues::default(),
        })
    }

    fn replica(&self) -> &Replica<B> {
        self.replica.as_ref().expect("a replica outside a step")
    }

    /// Step `step`: its micro-batches, the optimisation step on every replica, the EMA and
    /// the non-finite accounting (too many in a row stops the run).
    /// Whether to stop after `step` (Ctrl-C or SIGTERM): on every rank of a run over several
    /// processes, when any was asked (mpirun forwards the signal to each, not at the same
    /// instant), so all checkpoint the same step and none waits for the others' next one.
    fn stop_after(&self, step: usize) -> Result<bool, TrainError> {
        let asked = crate::interrupt::stop_requested() && step < self.config.train.steps;
        match &self.cluster {
            Some(c) => Ok(c.all_gather(asked as u64)?.iter().any(|a| *a != 0)),
            None => Ok(asked),
        }
    }

    fn step(&mut self, step: usize) -> Result<StepRecord, TrainError> {
        let config = self.config;
        let lr = self.schedule.step();
        let local = self.workers.local_replicas();
        let mut parts = self.micro_batches(local)?;
        let poison = self.faults.nonfinite_steps.contains(&step);
        let own = std::mem::take(&mut parts[0]);
        self.workers.send(parts, lr, poison)?;
        let replica = self.replica.take().expect("a replica outside a step");
        let (replica, outcome) = replica.step(&own, lr, config, self.num_classes(), poison)?;
        self.replica = Some(replica);
        if step == self.start_step + 1 {
            log_first_step_kernels(self.started.elapsed());
        }
        let StepOutcome { values, check } = outcome;
        let tasks = config.model.tasks;
        let terms = self.replica().finetune.as_ref();
        let losses = loss_values(
            &values,
            [
                tasks.detection,
                tasks.detection,
                tasks.detection,
                tasks.drivable,
                tasks.lanes,
                terms.is_some_and(|t| t.teacher.is_some()),
                terms.is_some_and(|t| t.l2sp.is_some()),
            ],
        );
        self.position.step = step;
        let grad_norm = if check.finite {
            if let Some(e) = self.ema.as_mut() {
                e.update(self.replica.as_ref().expect("replica").net.valid());
            }
            self.position.nonfinite.in_a_row = 0;
            self.last_losses = losses;
            Some(check.norm)
        } else {
            self.nonfinite(step, &losses, check.norm)?;
            None
        };
        self.position.schedule = self.schedule.state::<B>();
        Ok(StepRecord {
            step,
            lr,
            grad_norm,
            losses,
            epoch: self.position.sampler.as_ref().map_or(0, |s| s.epoch),
            skipped_samples: self.position.skipped_samples,
            nonfinite_steps: self.position.nonfinite.total,
        })
    }

    fn num_classes(&self) -> usize {
        self.checkpointer.card.classes.len()
    }

    /// This step's `grad_accumulation` micro-batches, split into the local replicas' parts;
    /// skipped samples go to the audit log.
    fn micro_batches(&mut self, local: usize) -> Result<Vec<Vec<Batch>>, TrainError> {
        let accumulation = self.config.train.grad_accumulation;
        let mut parts: Vec<Vec<Batch>> = vec![Vec::with_capacity(accumulation); local];
        for _ in 0..accumulation {
            let wait = Instant::now();
            let loaded = self
                .batches
                .as_ref()
                .expect("a loader until finish")
                .next()?;
            self.waited += wait.elapsed();
            for s in &loaded.skipped {
                tracing::warn!(
                    "skipped sample {} of {} in dataset {}: {}",
                    s.index,
                    s.shard,
                    s.dataset,
                    s.reason
                );
                self.position.known_bad.insert(s.slot);
                audit(
                    self.checkpointer.audit,
                    AuditEvent::SampleSkipped {
                        dataset: s.dataset.clone(),
                        shard: s.shard.clone(),
                        index: s.index as u64,
                        sample_id: None,
                        reason: s.reason.clone(),
                    },
                )?;
            }
            self.position.skipped_samples += loaded.skipped.len();
            // This process's ranks' parts of the global micro-batch, one per local replica.
            for (own, part) in parts.iter_mut().zip(loaded.batch.split(local)) {
                own.push(part);
            }
            self.position.sampler = Some(loaded.sampler_state);
        }
        Ok(parts)
    }

    /// Counts a skipped (non-finite) step; too many in a row is an error naming the last
    /// intact checkpoint.
    fn nonfinite(&mut self, step: usize, losses: &LossValues, norm: f32) -> Result<(), TrainError> {
        let n = &mut self.position.nonfinite;
        n.total += 1;
        n.in_a_row += 1;
        tracing::warn!(
            "step {step}: non-finite loss ({}) or gradient norm ({norm}); step skipped ({} in a \
             row, {} in all)",
            losses.total,
            n.in_a_row,
            n.total
        );
        if n.in_a_row >= self.config.train.max_nonfinite_steps {
            self.log.abandon();
            return Err(TrainError::NonFinite {
                step,
                in_a_row: n.in_a_row,
                last_checkpoint: self.checkpointer.last_description(),
            });
        }
        Ok(())
    }

    /// Throughput so far.
    fn pace(&self, step: usize) -> Pace {
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = step - self.start_step;
        Pace {
            images_per_second: (done * self.images_per_step) as f64 / elapsed.max(1e-9),
            elapsed_seconds: elapsed,
            data_wait_fraction: self.waited.as_secs_f64() / elapsed.max(1e-9),
        }
    }

    /// The step's metrics lines, TensorBoard scalars and progress.
    fn log(&mut self, record: &StepRecord) -> Result<(), TrainError> {
        let pace = self.pace(record.step);
        self.log.step(record, &pace)
    }

    /// A periodic checkpoint when one is due, or the interrupted run's last one (`stop`).
    fn checkpoint(&mut self, step: usize, stop: bool) -> Result<(), TrainError> {
        let c = &self.config.checkpoint;
        let periodic =
            c.every > 0 && step.is_multiple_of(c.every) && step < self.config.train.steps;
        if periodic || stop {
            // After a failed write (`on_error = "continue"`) nothing is pruned.
            if self
                .save(&format!("step-{step:06}"), CheckpointKind::Periodic, None)?
                .is_some()
            {
                self.checkpointer.prune(c.keep_last, c.keep_best)?;
            }
        }
        Ok(())
    }

    fn save(
        &mut self,
        name: &str,
        kind: CheckpointKind,
        score: Option<f64>,
    ) -> Result<Option<(PathBuf, String)>, TrainError> {
        let replica = self.replica.as_ref().expect("a replica outside a step");
        self.checkpointer.save(
            name,
            kind,
            &replica.net,
            self.ema.as_ref(),
            &replica.optimizer,
            &self.position,
            score,
        )
    }

    /// Validation when due (every `validation.every` steps and at the last), of the EMA
    /// weights when there are any; a score among the best saves a `best` checkpoint.
    fn validate(&mut self, step: usize) -> Result<(), TrainError> {
        let v = self.config.validation.every;
        if v == 0 || (!step.is_multiple_of(v) && step != self.config.train.steps) {
            return Ok(());
        }
        let (weights, name) = match &self.ema {
            Some(e) => (e.weights().clone(), "ema"),
            None => (self.replica().net.valid(), "raw"),
        };
        let (result, examples) = validate(
            &weights,
            &self.checkpointer.card,
            self.data.validation(),
            self.config,
            step,
            name,
            &self.device,
        )?;
        self.log.validation(&result)?;
        for (k, example) in examples.iter().enumerate() {
            self.log
                .example(&format!("val/{name}/example-{k}"), step, &example.overlay);
        }
        let (keep_last, keep) = (
            self.config.checkpoint.keep_last,
            self.config.checkpoint.keep_best,
        );
        if let Some(score) = result.score {
            if self.checkpointer.dir.is_among_best(score, keep)
                && self
                    .save(
                        &format!("best-{step:06}"),
                        CheckpointKind::Best,
                        Some(score),
                    )?
                    .is_some()
            {
                self.checkpointer.prune(keep_last, keep)?;
            }
        }
        Ok(())
    }

    /// Stops the replicas, writes the final checkpoint (unless interrupted: the last one
    /// holds the state), the audit log's end and `summary.json`.
    fn finish(mut self, interrupted: bool) -> Result<TrainSummary, TrainError> {
        self.log.finish();
        self.batches = None;
        self.workers.stop()?;
        data_parallel::finish(self.replica())?;
        let seconds = self.started.elapsed().as_secs_f64();
        let steps_done = self.position.step;
        let (checkpoint, checkpoint_hash) = if interrupted {
            // The checkpoint of the interruption, or (when it failed under `on_error =
            // "continue"`) the last one before it.
            self.checkpointer.last.clone().ok_or_else(|| {
                TrainError::Invalid(format!(
                    "interrupted at step {steps_done} before any checkpoint could be written: \
                     nothing to resume from in {}",
                    self.run_dir.display()
                ))
            })?
        } else {
            // A failed final checkpoint is an error whatever `on_error` says.
            let saved = self
                .save("final", CheckpointKind::Final, None)?
                .ok_or_else(|| {
                    TrainError::Invalid("the final checkpoint was not written".into())
                })?;
            let c = &self.config.checkpoint;
            self.checkpointer.prune(c.keep_last, c.keep_best)?;
            saved
        };
        let audit_head = audit(
            self.checkpointer.audit,
            AuditEvent::RunEnd {
                steps: steps_done as u64,
                skipped_samples: self.position.skipped_samples as u64,
                status: if interrupted {
                    format!("interrupted at step {steps_done}; resumable")
                } else {
                    "completed".into()
                },
            },
        )?;
        let done = steps_done - self.start_step;
        let summary = TrainSummary {
            run_dir: self.run_dir.clone(),
            checkpoint,
            checkpoint_hash,
            steps: steps_done,
            start_step: self.start_step,
            parameters: self.parameters,
            final_losses: self.last_losses,
            images_per_second: (done * self.images_per_step) as f64 / seconds.max(1e-9),
            seconds,
            data_wait_fraction: self.waited.as_secs_f64() / seconds.max(1e-9),
            skipped_samples: self.position.skipped_samples,
            nonfinite_steps: self.position.nonfinite.total,
            interrupted,
            audit_head,
        };
        write_atomic(
            self.run_dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)
                .expect("serialises")
                .as_bytes(),
        )?;
        Ok(summary)
    }
}

/// The network a run starts from: seeded, then `train.init`'s weights (a fresh run) or, on
/// resume, the provenance of the checkpoint's (its weights are loaded by [`resume_start`]).
fn initial_network<B: AutodiffBackend>(
    arch: &PerceptionNetConfig,
    config: &RunConfig,
    run_dir: &std::path::Path,
    resume: Option<&RunState>,
    finetune: Option<&FinetuneBase>,
    provenance: &mut Provenance,
    device: &B::Device,
) -> Result<PerceptionNet<B>, TrainError> {
    let net: PerceptionNet<B> = arch.init_seeded(config.train.seed, device);
    if let Some(base) = finetune {
        merge_provenance(provenance, &base.card.provenance);
        provenance.base_checkpoint = Some(base.hash.clone());
        provenance.base = Some(Box::new(base.link()));
        let f = config.finetune.as_ref().expect("a fine-tune's config");
        provenance.finetune = Some(base.record(f));
        if resume.is_some() {
            return Ok(net);
        }
        for line in base.mapping.describe() {
            tracing::info!("class mapping: {line}");
        }
        tracing::info!(
            "fine-tuning {} (blake3 {}) for {} ({}): freeze {}, distillation {}, L2-SP {}",
            base.path.display(),
            &base.hash[..12],
            base.profile.name,
            base.profile.code,
            f.freeze.name(),
            f.distillation
                .map_or("off".to_string(), |d| format!("weight {}", d.weight)),
            f.l2sp.map_or("off".to_string(), |a| format!("alpha {a}"))
        );
        return base.student(net);
    }
    match (resume, &config.train.init) {
        // The checkpoint's provenance already includes the starting weights'.
        (Some(state), _) => {
            let model = run_dir.join("checkpoints").join(&state.checkpoint);
            let saved = read_model_card(&model)?.provenance;
            merge_provenance(provenance, &saved);
            provenance.base_checkpoint = saved.base_checkpoint;
            provenance.base = saved.base;
            Ok(net)
        }
        (None, Some(init)) => {
            let (loaded, report) = load_matching(net, init)?;
            tracing::info!(
                "starting from {} (blake3 {}): {} tensors loaded, {} kept at their initial values{}",
                init.display(),
                &report.hash[..12],
                report.loaded,
                report.kept.len(),
                summarize_kept(&report.kept)
            );
            merge_provenance(provenance, &report.card.provenance);
            provenance.base_checkpoint = Some(report.hash);
            provenance.base = Some(Box::new(BaseLink::of(&report.card)));
            Ok(loaded)
        }
        (None, None) => Ok(net),
    }
}

fn fresh_start<B: AutodiffBackend>(
    net: PerceptionNet<B>,
    config: &RunConfig,
) -> Result<Start<B>, TrainError> {
    let schedule = LearningRateSchedule::new(config)?;
    Ok(Start {
        optimizer: RunOptimizer::new(&net, &config.optimizer)?,
        ema: config.train.ema.map(|c| WeightEma::new(c, net.valid(), 0)),
        position: Position {
            step: 0,
            sampler: None,
            schedule: schedule.state::<B>(),
            nonfinite: NonfiniteSteps::default(),
            skipped_samples: 0,
            known_bad: BTreeSet::new(),
        },
        schedule,
        net,
        last_checkpoint: None,
    })
}

/// The raw weights, optimiser, schedule, EMA and position of the checkpoint `state` names.
fn resume_start<B: AutodiffBackend>(
    net: PerceptionNet<B>,
    config: &RunConfig,
    state: &RunState,
    checkpoints: &CheckpointDir,
    device: &B::Device,
) -> Result<Start<B>, TrainError> {
    let files = checkpoints.files(
        state
            .checkpoint
            .strip_suffix(".safetensors")
            .unwrap_or(&state.checkpoint),
    );
    let bad = |message: String| TrainError::ModelFile {
        path: files.training.clone(),
        message,
    };
    let bytes = std::fs::read(&files.training).map_err(|e| TrainError::Io {
        path: files.training.clone(),
        source: e,
    })?;
    let saved = TrainingState::from_bytes(&bytes).map_err(bad)?;
    let net = net.load_record(
        decode_record::<B, _>(&saved.model, device)
            .map_err(|e| bad(format!("raw weights: {e}")))?,
    );
    let optimizer = RunOptimizer::new(&net, &config.optimizer)?
        .load_bytes(saved.optimizer, device)
        .map_err(bad)?;
    let schedule = LearningRateSchedule::new(config)?
        .restore::<B>(&state.schedule)
        .map_err(bad)?;
    let ema = match (config.train.ema, saved.ema, state.ema_updates) {
        (Some(c), Some(weights), Some(updates)) => {
            let weights = net.valid().load_record(
                decode_record::<B::InnerBackend, _>(&weights, device)
                    .map_err(|e| bad(format!("EMA weights: {e}")))?,
            );
            Some(WeightEma::new(c, weights, updates))
        }
        (None, None, None) => None,
        _ => return Err(bad("the EMA state does not match train.ema".into())),
    };
    Ok(Start {
        net,
        optimizer,
        schedule,
        ema,
        position: Position {
            step: state.step,
            sampler: Some(state.sampler.clone()),
            schedule: state.schedule.clone(),
            nonfinite: state.nonfinite,
            skipped_samples: state.skipped_samples,
            known_bad: state.known_bad.iter().copied().collect(),
        },
        last_checkpoint: Some((files.model.clone(), state.checkpoint_hash.clone())),
    })
}

/// The loader of this process's part of every micro-batch, from the run's position on.
fn spawn_loader(
    config: &RunConfig,
    data: &Arc<TrainingData>,
    sampler: percept_data::RegionSampler,
    position: &Position,
    workers: &ReplicaWorkers,
) -> Result<BatchLoader, TrainError> {
    let world = workers.world_size();
    let (local, first_rank) = (workers.local_replicas(), workers.first_rank());
    let builder = BatchBuilder::new(
        data.clone(),
        sampler,
        LoaderOptions {
            // Every replica's part of each micro-batch, in replica order.
            batch_size: config.train.batch_size * world,
            width: config.model.input.width as u32,
            height: config.model.input.height as u32,
            augment: config.data.augment.clone(),
            prefetch_batches: config.data.prefetch_batches,
            workers: config.data.workers,
        },
    )?
    .with_known_bad(position.known_bad.iter().copied())
    // Only this process's replicas' parts of each global micro-batch are read and decoded.
    .reading_only(
        first_rank * config.train.batch_size..(first_rank + local) * config.train.batch_size,
    )?;
    let remaining = config.train.steps.saturating_sub(position.step);
    Ok(BatchLoader::spawn(
        builder,
        remaining * config.train.grad_accumulation,
    ))
}

fn log_model(config: &RunConfig, arch: &PerceptionNetConfig, parameters: usize, samples: usize) {
    tracing::info!(
        "model {} with {} classes: {:.2} M parameters, {:.2} GFLOPs per {}x{} image; {} training samples; {} images per step",
        config.model.size.name(),
        arch.num_classes,
        parameters as f64 / 1e6,
        arch.gflops(config.model.input.height, config.model.input.width),
        config.model.input.width,
        config.model.input.height,
        samples,
        config.train.batch_size * config.train.grad_accumulation
    );
}

fn log_groups<B: AutodiffBackend>(optimizer: &RunOptimizer<B>) {
    for g in optimizer.groups() {
        tracing::debug!(
            "parameter group {}: {} tensors, {} values, lr x{}, weight decay {}",
            g.name,
            g.params.len(),
            g.elements,
            g.lr_factor,
            g.weight_decay
        );
    }
}

fn log_replicas(config: &RunConfig, workers: &ReplicaWorkers, cluster: Option<&Cluster>) {
    let world = workers.world_size();
    if let Some(c) = cluster {
        tracing::info!(
            "rank {} of {world} (on {}, local rank {}), {}: {} images per rank per micro-batch",
            c.rank,
            c.hosts.get(c.rank).map_or("?", String::as_str),
            c.local_rank,
            c.engine(),
            config.train.batch_size
        );
    } else if world > 1 {
        tracing::info!(
            "data-parallel on {world} devices: {} images per device per micro-batch",
            config.train.batch_size
        );
    }
}

/// On a GPU: what the first step compiled and tuned (a warm kernel cache makes it none).
fn log_first_step_kernels(took: Duration) {
    if let Some(k) = crate::gpu_runtime::counts() {
        tracing::info!(
            "first step: {:.1} s, {} kernels compiled ({} not compiled by a warm-up), {} autotune \
             keys tuned ({} candidates timed)",
            took.as_secs_f64(),
            k.compiled,
            k.not_warmed.unwrap_or(k.compiled),
            k.keys_tuned,
            k.candidates_timed
        );
    }
}

/// Adds the datasets and regions of the weights a run started from to its own provenance:
/// they trained the weights too.
fn merge_provenance(provenance: &mut Provenance, base: &Provenance) {
    for d in &base.datasets {
        if !provenance
            .datasets
            .iter()
            .any(|x| x.manifest_hash == d.manifest_hash)
        {
            provenance.datasets.push(d.clone());
        }
    }
    provenance.regions.extend(base.regions.iter().cloned());
    provenance.regions.sort();
    provenance.regions.dedup();
}

/// `: detection_head.cls.2.weight, detection_head.cls.2.bias, ...` (at most 4 names).
fn summarize_kept(kept: &[String]) -> String {
    if kept.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = kept.iter().take(4).map(String::as_str).collect();
    let more = if kept.len() > 4 { ", ..." } else { "" };
    format!(": {}{more}", shown.join(", "))
}
