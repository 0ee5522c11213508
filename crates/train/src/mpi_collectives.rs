//! MPI as the launcher and control plane of a run over several processes (feature `mpi`, over
//! the system's Open MPI or MPICH): ranks, world size and local rank from MPI, host buffers
//! summed with `MPI_Allreduce`, and on CUDA the NCCL communicator's unique id broadcast from
//! rank 0 ([`crate::nccl`]).
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED` and every call holds one lock, so any
//! thread may call in; in practice the main thread, which drives the replica, does.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard};

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use crate::cluster::{Cluster, Collectives};
use crate::TrainError;

/// Host names longer than this are cut in the cluster's list (MPI's own limit is 256).
const HOST_BYTES: usize = 256;

/// MPI, initialised for this process; finalised when dropped. Keep it alive for as long as
/// the run: the binary holds it in `main`.
pub struct MpiRuntime {
    cluster: Cluster,
    // Dropped last: `MPI_Finalize`.
    _universe: Universe,
}

impl MpiRuntime {
    /// Initialises MPI (this process was started by `mpirun`/`srun`, or runs as a singleton)
    /// and learns the ranks: world, node-local, and every rank's host name.
    pub fn init() -> Result<MpiRuntime, TrainError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| TrainError::Device("MPI was already initialised".into()))?;
        if threading < Threading::Serialized {
            return Err(TrainError::Device(format!(
                "the MPI library offers thread level {threading:?}; percept needs Serialized \
                 (rebuild Open MPI/MPICH with thread support)"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        // The ranks sharing this node's memory: the local rank picks this process's GPU.
        let node = world.split_shared(world.rank());
        let local_rank = node.rank() as usize;
        drop(node);
        let name = mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into());
        let mut mine = [0u8; HOST_BYTES];
        let bytes = name.as_bytes();
        let n = bytes.len().min(HOST_BYTES);
        mine[..n].copy_from_slice(&bytes[..n]);
        let mut all = vec![0u8; HOST_BYTES * size];
        world.all_gather_into(&mine[..], &mut all[..]);
        let hosts = all
            .chunks(HOST_BYTES)
            .map(|h| {
                let end = h.iter().position(|b| *b == 0).unwrap_or(h.len());
                String::from_utf8_lossy(&h[..end]).into_owned()
            })
            .collect();
        // "Open MPI v4.1.4, package: ..." or "MPICH Version: 4.0.2\n...": the name and version.
        let library = mpi::environment::library_version()
            .ok()
            .and_then(|v| {
                let first = v.trim_matches(char::from(0)).lines().next()?;
                Some(first.split(',').next()?.trim().to_string())
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "MPI".into());
        let collectives = MpiCollectives {
            lock: Mutex::new(()),
            #[cfg(feature = "cuda")]
            rank,
            size,
            library,
            #[cfg(feature = "cuda")]
            nccl: Mutex::new(None),
        };
        Ok(MpiRuntime {
            cluster: Cluster::new(rank, size, local_rank, hosts, Arc::new(collectives)),
            _universe: universe,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Ends every rank of the job with `code` (after this rank failed: the others would wait
    /// in their next collective for ever).
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

struct MpiCollectives {
    /// MPI_THREAD_SERIALIZED: one call at a time.
    lock: Mutex<()>,
    #[cfg(feature = "cuda")]
    rank: usize,
    size: usize,
    library: String,
    /// The NCCL communicator, made at the first all-reduce of a CUDA tensor.
    #[cfg(feature = "cuda")]
    nccl: Mutex<Option<crate::nccl::NcclComm>>,
}

impl MpiCollectives {
    fn world(&self) -> (MutexGuard<'_, ()>, SimpleCommunicator) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        (guard, SimpleCommunicator::world())
    }
}

impl Collectives for MpiCollectives {
    fn all_reduce_sum(&self, values: &[f32]) -> Result<Vec<f32>, TrainError> {
        let (_guard, world) = self.world();
        let mut sum = vec![0f32; values.len()];
        // MPI counts are C ints: large vectors go in pieces.
        const PIECE: usize = i32::MAX as usize / 2;
        for (send, receive) in values.chunks(PIECE).zip(sum.chunks_mut(PIECE)) {
            world.all_reduce_into(send, receive, SystemOperation::sum());
        }
        Ok(sum)
    }

    #[cfg(feature = "cuda")]
    fn all_reduce_sum_on_device(&self, primitive: &mut dyn Any) -> Result<bool, TrainError> {
        let Some(tensor) = crate::nccl::cuda_tensor(primitive) else {
            return Ok(false);
        };
        let mut nccl = self.nccl.lock().unwrap_or_else(|p| p.into_inner());
        if nccl.is_none() {
            // Rank 0 draws the communicator's id; MPI carries it to every rank.
            use mpi::collective::Root;
            let mut id = if self.rank == 0 {
                crate::nccl::unique_id()?
            } else {
                [0u8; crate::nccl::UNIQUE_ID_BYTES]
            };
            {
                let (_guard, world) = self.world();
                world.process_at_rank(0).broadcast_into(&mut id[..]);
            }
            *nccl = Some(crate::nccl::NcclComm::new(
                id, self.rank, self.size, tensor,
            )?);
        }
        nccl.as_ref()
            .expect("made above")
            .all_reduce_sum_in_place(tensor)?;
        Ok(true)
    }

    #[cfg(not(feature = "cuda"))]
    fn all_reduce_sum_on_device(&self, _primitive: &mut dyn Any) -> Result<bool, TrainError> {
        Ok(false)
    }

    fn all_gather(&self, value: u64) -> Result<Vec<u64>, TrainError> {
        let (_guard, world) = self.world();
        let mut all = vec![0u64; self.size];
        world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }

    fn engine(&self) -> String {
        #[cfg(feature = "cuda")]
        if self.nccl.lock().map(|n| n.is_some()).unwrap_or(false) {
            return format!("NCCL (bootstrapped over {})", self.library);
        }
        self.library.clone()
    }
}
