//! Data-parallel training on the devices of one node (DDP): one model replica per device, each
//! trained on its part of every batch. After the backward pass the replicas average their
//! gradients (and loss values) with burn-collective's all-reduce, so each holds the same mean
//! gradient, takes the same decision (finite or not, clip factor) and applies the same update
//! with its own optimiser: the weights stay equal without being sent anywhere.
//!
//! The main thread drives replica 0 and does everything else (data, logging, checkpoints,
//! validation); replicas 1.. run in threads of their own and get their parts of each step's
//! micro-batches over a channel.
//!
//! Batch-norm running statistics are not averaged: each replica keeps those of its own part
//! (PyTorch's DDP without SyncBatchNorm keeps rank 0's too); checkpoints and validation use
//! replica 0's.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::ParamId;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use burn::vision::VisionBackend;
use percept_data::Batch;
use percept_model::{PerceptionNet, PerceptionNetConfig};

use crate::config::RunConfig;
use crate::optim::{GradCheck, RunOptimizer};
use crate::running_stats::{running_ids, RunningStats};
use crate::trainer::{batch_loss, LossValues};
use crate::TrainError;

/// What one optimisation step found.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The loss terms ([`LossValues`] order), averaged over micro-batches and replicas.
    pub values: Vec<f32>,
    pub check: GradCheck,
}

/// One model copy on one device, with its optimiser.
pub struct Replica<B: AutodiffBackend> {
    pub net: PerceptionNet<B>,
    pub optimizer: RunOptimizer<B>,
    pub device: B::Device,
    running_ids: Vec<ParamId>,
    /// This replica's id in the collective; `None` when training on one device.
    peer: Option<PeerId>,
}

fn collective_error(what: &str, e: collective::CollectiveError) -> TrainError {
    TrainError::Device(format!("data-parallel {what} failed: {e:?}"))
}

impl<B> Replica<B>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    /// The only replica of a single-device run.
    pub fn single(net: PerceptionNet<B>, optimizer: RunOptimizer<B>, device: B::Device) -> Self {
        Replica {
            running_ids: running_ids(&net),
            net,
            optimizer,
            device,
            peer: None,
        }
    }

    /// A replica on `device` equal to `self`: the same weights (and parameter ids, which the
    /// all-reduce matches gradients by) and the same optimiser state.
    ///
    /// A deep copy through burn's recorder, not `clone().fork()`: a clone shares the
    /// batch-norm `RunningState`s (and, on the same device, the autograd leaves) with `self`,
    /// so the replicas' statistics and graphs would mix.
    fn mirror(
        &self,
        device: B::Device,
        arch: &PerceptionNetConfig,
        config: &RunConfig,
    ) -> Result<Self, TrainError> {
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let copy_error = |e: burn::record::RecorderError| {
            TrainError::Device(format!("copying the model to {device:?}: {e}"))
        };
        let bytes = recorder
            .record(self.net.clone().into_record(), ())
            .map_err(copy_error)?;
        let net = arch
            .init::<B>(&device)
            .load_record(recorder.load(bytes, &device).map_err(copy_error)?);
        let state = self.optimizer.to_bytes()?.into_iter().collect();
        let optimizer = RunOptimizer::new(&net, &config.optimizer)?
            .load_bytes(state, &device)
            .map_err(|e| TrainError::Device(format!("copying the optimizer state: {e}")))?;
        Ok(Replica {
            running_ids: self.running_ids.clone(),
            net,
            optimizer,
            device,
            peer: None,
        })
    }

    /// One optimisation step on `micro`, this replica's part of each micro-batch of the step:
    /// forward and backward on each (the loss divided by their number, so the gradient is
    /// their mean), the all-reduce with the other replicas, the finite check and clip, and
    /// the update. A non-finite step leaves the weights and the batch-norm statistics as they
    /// were. `poison` multiplies the loss by NaN (fault injection for tests).
    pub fn step(
        mut self,
        micro: &[Batch],
        lr: f64,
        config: &RunConfig,
        num_classes: usize,
        poison: bool,
    ) -> Result<(Self, StepOutcome), TrainError> {
        let running = RunningStats::snapshot(&self.net, &self.running_ids);
        let mut accumulator = GradientsAccumulator::<PerceptionNet<B>>::new();
        let mut losses: Option<Tensor<B::InnerBackend, 1>> = None;
        let count = micro.len();
        for batch in micro {
            let mut parts = batch_loss(&self.net, batch, num_classes, config, &self.device);
            if poison {
                parts.total = parts.total.mul_scalar(f32::NAN);
            }
            let values = LossValues::tensor(&parts);
            losses = Some(match losses {
                Some(l) => l + values,
                None => values,
            });
            let objective = if count > 1 {
                parts.total.div_scalar(count as f32)
            } else {
                parts.total
            };
            let grads = GradientsParams::from_grads(objective.backward(), &self.net);
            accumulator.accumulate(&self.net, grads);
        }
        let mut grads = accumulator.grads();
        let mut losses = losses.expect("at least one micro-batch");
        if count > 1 {
            losses = losses.div_scalar(count as f32);
        }
        if let Some(peer) = self.peer {
            grads = grads
                .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Mean)
                .map_err(|e| collective_error("gradient all-reduce", e))?;
            let reduced = collective::all_reduce::<B::InnerBackend>(
                peer,
                losses.into_primitive().tensor(),
                ReduceOperation::Mean,
            )
            .map_err(|e| collective_error("loss all-reduce", e))?;
            losses = Tensor::from_primitive(TensorPrimitive::Float(reduced));
        }
        let (values, check) = self.optimizer.check_and_clip(&self.net, &mut grads, losses);
        self.net = if check.finite {
            self.optimizer.step(lr, self.net, grads)
        } else {
            running.restore(self.net)
        };
        Ok((self, StepOutcome { values, check }))
    }
}

/// One step's work for a replica thread: its part of each micro-batch.
struct Job {
    micro: Vec<Batch>,
    lr: f64,
    poison: bool,
}

/// Replicas 1.. of a data-parallel run, each in its own thread; replica 0 stays with the
/// caller, who calls [`ReplicaWorkers::send`] before its own [`Replica::step`] every step.
pub struct ReplicaWorkers {
    jobs: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<Result<(), TrainError>>>,
}

impl ReplicaWorkers {
    /// Mirrors `main` (replica 0) onto `devices[1..]` and joins all of them into one
    /// collective. With one device there is nothing to start.
    pub fn start<B>(
        main: &mut Replica<B>,
        devices: &[B::Device],
        arch: &PerceptionNetConfig,
        config: &RunConfig,
    ) -> Result<ReplicaWorkers, TrainError>
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let world = devices.len();
        let num_classes = arch.num_classes;
        let mut workers = ReplicaWorkers {
            jobs: Vec::new(),
            threads: Vec::new(),
        };
        if world < 2 {
            return Ok(workers);
        }
        // A run that failed earlier in this process may have left peers registered.
        collective::reset_collective::<B::InnerBackend>();
        let collective = CollectiveConfig::default().with_num_devices(world);
        let config = Arc::new(config.clone());
        for (rank, device) in devices.iter().enumerate().skip(1) {
            let mut replica = main.mirror(device.clone(), arch, &config)?;
            let peer = PeerId::from(rank as u32);
            replica.peer = Some(peer);
            let (send, receive) = sync_channel::<Job>(1);
            let (config, collective) = (config.clone(), collective.clone());
            let thread = std::thread::Builder::new()
                .name(format!("percept-replica-{rank}"))
                .spawn(move || {
                    collective::register::<B::InnerBackend>(
                        peer,
                        replica.device.clone(),
                        collective,
                    )
                    .map_err(|e| collective_error("registration", e))?;
                    run_replica(replica, receive, &config, num_classes)
                })
                .map_err(|e| TrainError::Device(format!("starting replica {rank}: {e}")))?;
            workers.jobs.push(send);
            workers.threads.push(thread);
        }
        let peer = PeerId::from(0);
        collective::register::<B::InnerBackend>(peer, main.device.clone(), collective)
            .map_err(|e| collective_error("registration", e))?;
        main.peer = Some(peer);
        Ok(workers)
    }

    /// Replicas, the caller's included.
    pub fn world_size(&self) -> usize {
        self.jobs.len() + 1
    }

    /// Hands each replica thread its parts of this step's micro-batches; `parts[r]` holds
    /// replica `r`'s part of each micro-batch (`parts[0]` stays with the caller).
    pub fn send(
        &mut self,
        parts: Vec<Vec<Batch>>,
        lr: f64,
        poison: bool,
    ) -> Result<(), TrainError> {
        for (rank, micro) in parts.into_iter().enumerate().skip(1) {
            if self.jobs[rank - 1].send(Job { micro, lr, poison }).is_err() {
                // The thread ended: its error says why.
                return Err(self
                    .stop()
                    .err()
                    .unwrap_or_else(|| TrainError::Device(format!("replica {rank} stopped"))));
            }
        }
        Ok(())
    }

    /// Ends the replica threads and returns the first error one of them met.
    pub fn stop(&mut self) -> Result<(), TrainError> {
        self.jobs.clear();
        let mut first = Ok(());
        for (i, thread) in self.threads.drain(..).enumerate() {
            let result = thread
                .join()
                .unwrap_or_else(|_| Err(TrainError::Device(format!("replica {} panicked", i + 1))));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for ReplicaWorkers {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A replica thread: steps until the channel closes.
fn run_replica<B>(
    mut replica: Replica<B>,
    jobs: Receiver<Job>,
    config: &RunConfig,
    num_classes: usize,
) -> Result<(), TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let peer = replica.peer.expect("registered");
    while let Ok(job) = jobs.recv() {
        replica = replica
            .step(&job.micro, job.lr, config, num_classes, job.poison)?
            .0;
    }
    collective::finish_collective::<B::InnerBackend>(peer)
        .map_err(|e| collective_error("finishing", e))
}

/// Ends replica 0's part in the collective (after [`ReplicaWorkers::stop`]).
pub fn finish<B>(main: &Replica<B>) -> Result<(), TrainError>
where
    B: AutodiffBackend,
{
    match main.peer {
        Some(peer) => collective::finish_collective::<B::InnerBackend>(peer)
            .map_err(|e| collective_error("finishing", e)),
        None => Ok(()),
    }
}
