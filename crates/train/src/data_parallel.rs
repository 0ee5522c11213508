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
//! Across processes ([`Cluster`], launched by `mpirun` or `srun`): one replica per process,
//! averaging through the cluster's engine (MPI, or NCCL for CUDA tensors) instead of
//! burn-collective. Every process draws the whole global batch but reads only its rank's part
//! ([`crate::loader::BatchBuilder::reading_only`]), so the run sees exactly what one process
//! would.
//!
//! Batch-norm running statistics are not averaged: each replica keeps those of its own part
//! (PyTorch's DDP without SyncBatchNorm keeps rank 0's too); checkpoints and validation use
//! replica 0's.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use burn::vision::VisionBackend;
use percept_data::Batch;
use percept_model::{PerceptionNet, PerceptionNetConfig};

use crate::cluster::Cluster;
use crate::config::RunConfig;
use crate::optim::RunOptimizer;
use crate::running_stats::running_ids;
pub use crate::step::StepOutcome;
use crate::step::{optimisation_step, PhaseHook, Reduce, StepState};
use crate::TrainError;

/// One model copy on one device, with its optimiser.
pub struct Replica<B: AutodiffBackend> {
    pub net: PerceptionNet<B>,
    pub optimizer: RunOptimizer<B>,
    pub device: B::Device,
    running_ids: Vec<ParamId>,
    /// This replica's id in the collective (devices of one node); `None` otherwise.
    peer: Option<PeerId>,
    /// The run's processes, when it spans several (this replica is this process's only one).
    cluster: Option<Cluster>,
    /// A fine-tune's distillation and L2-SP terms (single-device fine-tunes only).
    pub finetune: Option<crate::finetune::FinetuneTerms<B>>,
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
            cluster: None,
            finetune: None,
        }
    }

    /// This replica as one process's of a run over several: each step averages its
    /// gradients with the other ranks' through `cluster`.
    pub fn in_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// A replica on `device` equal to `self`: the same weights (and parameter ids) and the
    /// same optimiser state.
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
            cluster: None,
            finetune: None,
        })
    }

    /// One optimisation step ([`crate::step`]) on `micro`, this replica's part of each
    /// micro-batch of the step, its gradients averaged with the other replicas'.
    pub fn step(
        self,
        micro: &[Batch],
        lr: f64,
        config: &RunConfig,
        num_classes: usize,
        poison: bool,
    ) -> Result<(Self, StepOutcome), TrainError> {
        self.step_observed(micro, lr, config, num_classes, poison, &mut ())
    }

    /// [`step`](Self::step) with `hook` called at each phase boundary.
    pub fn step_observed(
        mut self,
        micro: &[Batch],
        lr: f64,
        config: &RunConfig,
        num_classes: usize,
        poison: bool,
        hook: &mut dyn PhaseHook,
    ) -> Result<(Self, StepOutcome), TrainError> {
        let peer = self.peer;
        let mut through_collective = |net: &PerceptionNet<B>, grads, losses| {
            all_reduce_mean(net, grads, losses, |flat| {
                let reduced = collective::all_reduce::<B::InnerBackend>(
                    peer.expect("a replica of the collective"),
                    flat.into_primitive().tensor(),
                    ReduceOperation::Mean,
                )
                .map_err(|e| collective_error("gradient all-reduce", e))?;
                Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
            })
        };
        let cluster = self.cluster.clone();
        let mut through_cluster = |net: &PerceptionNet<B>, grads, losses| {
            let cluster = cluster.as_ref().expect("a replica of a cluster");
            all_reduce_mean(net, grads, losses, |flat| cluster.mean(flat))
        };
        let reduce: Reduce<'_, B> = if peer.is_some() {
            Some(&mut through_collective)
        } else if self.cluster.is_some() {
            Some(&mut through_cluster)
        } else {
            None
        };
        let state = StepState {
            net: self.net,
            optimizer: &mut self.optimizer,
            device: &self.device,
            running_ids: &self.running_ids,
            finetune: self.finetune.as_ref(),
        };
        let (net, outcome) =
            optimisation_step(state, micro, lr, config, num_classes, poison, reduce, hook)?;
        self.net = net;
        Ok((self, outcome))
    }
}

/// Averages the gradients and the loss values over all replicas with one `mean` of one
/// vector: every gradient flattened, in the network's parameter order, then the losses.
///
/// burn's `GradientsParams::all_reduce` sends one tensor per parameter in the order of their
/// `ParamId`s, which are drawn at random in each process: between processes it paired
/// different parameters (burn-collective: `PeerSentIncoherentTensor`). The module order is
/// the same in every process, and one message per step is far fewer round trips.
fn all_reduce_mean<B: AutodiffBackend>(
    net: &PerceptionNet<B>,
    mut grads: GradientsParams,
    losses: Tensor<B::InnerBackend, 1>,
    mean: impl FnOnce(Tensor<B::InnerBackend, 1>) -> Result<Tensor<B::InnerBackend, 1>, TrainError>,
) -> Result<(GradientsParams, Tensor<B::InnerBackend, 1>), TrainError> {
    let mut gather = Gather::<B> {
        grads: &mut grads,
        parts: Vec::new(),
        shapes: Vec::new(),
    };
    net.visit(&mut gather);
    let Gather {
        mut parts, shapes, ..
    } = gather;
    let loss_count = losses.dims()[0];
    parts.push(losses);
    let reduced = mean(Tensor::cat(parts, 0))?;
    let total = reduced.dims()[0];
    let losses = reduced.clone().slice(total - loss_count..total);
    let mut scatter = Scatter::<B> {
        grads: &mut grads,
        flat: reduced,
        shapes: shapes.into_iter(),
        offset: 0,
    };
    net.visit(&mut scatter);
    Ok((grads, losses))
}

/// Takes each parameter's gradient out of `grads`, flattened, in visiting order.
struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    /// Per parameter visited: its gradient's shape, `None` for one without a gradient.
    shapes: Vec<Option<Vec<usize>>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = self.grads.remove::<B::InnerBackend, D>(param.id);
        self.shapes.push(grad.as_ref().map(|g| g.dims().to_vec()));
        if let Some(grad) = grad {
            let n = grad.shape().num_elements();
            self.parts.push(grad.reshape([n]));
        }
    }
}

/// Puts the reduced gradients back into `grads`, in the order [`Gather`] took them.
struct Scatter<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<B::InnerBackend, 1>,
    shapes: std::vec::IntoIter<Option<Vec<usize>>>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(Some(shape)) = self.shapes.next() else {
            return;
        };
        let n: usize = shape.iter().product();
        let dims: [usize; D] = shape
            .try_into()
            .expect("the gradient's rank is the parameter's");
        let grad = self
            .flat
            .clone()
            .slice(self.offset..self.offset + n)
            .reshape(dims);
        self.offset += n;
        self.grads.register::<B::InnerBackend, D>(param.id, grad);
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
    /// Replicas in the whole run, every node's.
    world: usize,
    /// Global rank of this node's replica 0.
    first_rank: usize,
}

impl ReplicaWorkers {
    /// Mirrors `main` (replica 0) onto `devices[1..]` and joins all of them into one
    /// collective; with a `cluster`, `main` (this process's one replica) averages with the
    /// other ranks' instead. With one device and no cluster there is nothing to start.
    pub fn start<B>(
        main: &mut Replica<B>,
        devices: &[B::Device],
        arch: &PerceptionNetConfig,
        config: &RunConfig,
        cluster: Option<&Cluster>,
    ) -> Result<ReplicaWorkers, TrainError>
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let local = devices.len();
        let num_classes = arch.num_classes;
        let (world, first_rank) = match cluster {
            Some(c) => (c.size, c.rank),
            None => (local, 0),
        };
        let mut workers = ReplicaWorkers {
            jobs: Vec::new(),
            threads: Vec::new(),
            world,
            first_rank,
        };
        if let Some(cluster) = cluster {
            if local > 1 {
                return Err(TrainError::Invalid(format!(
                    "--devices names {local} devices, but a run launched by mpirun/srun trains \
                     one device per rank: start one rank per GPU (e.g. mpirun -np 8 with 4 \
                     GPUs a node) with --device cuda, and each rank takes cuda:<local rank>"
                )));
            }
            main.cluster = Some(cluster.clone());
            return Ok(workers);
        }
        if world < 2 {
            return Ok(workers);
        }
        let config = Arc::new(config.clone());
        // A run that failed earlier in this process may have left peers registered.
        collective::reset_collective::<B::InnerBackend>();
        let collective = CollectiveConfig::default().with_num_devices(local);
        for (rank, device) in devices.iter().enumerate().skip(1) {
            let mut replica = main.mirror(device.clone(), arch, &config)?;
            let peer = PeerId::from(rank as u32);
            replica.peer = Some(peer);
            let collective = collective.clone();
            workers.spawn(rank, config.clone(), move |receive, config| {
                collective::register::<B::InnerBackend>(peer, replica.device.clone(), collective)
                    .map_err(|e| collective_error("registration", e))?;
                run_replica(replica, receive, &config, num_classes)
            })?;
        }
        let peer = PeerId::from(0);
        collective::register::<B::InnerBackend>(peer, main.device.clone(), collective)
            .map_err(|e| collective_error("registration", e))?;
        main.peer = Some(peer);
        Ok(workers)
    }

    /// Runs replica `rank` (of this node) in a thread of its own, fed over a channel.
    fn spawn(
        &mut self,
        rank: usize,
        config: Arc<RunConfig>,
        body: impl FnOnce(Receiver<Job>, Arc<RunConfig>) -> Result<(), TrainError> + Send + 'static,
    ) -> Result<(), TrainError> {
        let (send, receive) = sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name(format!("percept-replica-{rank}"))
            .spawn(move || body(receive, config))
            .map_err(|e| TrainError::Device(format!("starting replica {rank}: {e}")))?;
        self.jobs.push(send);
        self.threads.push(thread);
        Ok(())
    }

    /// Replicas in the whole run (every process's, the caller's included).
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// This process's replicas, the caller's included.
    pub fn local_replicas(&self) -> usize {
        self.jobs.len() + 1
    }

    /// Global rank of this process's first replica (the caller's): it trains on parts
    /// `first_rank()..first_rank() + local_replicas()` of each global micro-batch.
    pub fn first_rank(&self) -> usize {
        self.first_rank
    }

    /// Hands each replica thread its parts of this step's micro-batches; `parts[r]` holds
    /// this node's replica `r`'s part of each micro-batch (`parts[0]` stays with the caller).
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
    while let Ok(job) = jobs.recv() {
        replica = replica
            .step(&job.micro, job.lr, config, num_classes, job.poison)?
            .0;
    }
    finish(&replica)
}

/// Ends a replica's part in the collective (replica 0's after [`ReplicaWorkers::stop`]).
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
