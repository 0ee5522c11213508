//! A run spread over several processes (one per GPU, or one per node on CPU and wgpu sites),
//! launched by `mpirun` or `srun`: this process's place in it and the collective operations it
//! needs. The engine is MPI ([`crate::mpi_collectives`], feature `mpi`), with NCCL for CUDA
//! tensors ([`crate::nccl`], feature `cuda`).
//!
//! Every rank trains its own replica on its part of every global batch, and after the backward
//! pass the ranks sum their gradients (one flattened vector per step, in the network's
//! parameter order: [`crate::data_parallel`]) and divide by the world size, so every replica
//! applies the same update. Rank 0 writes `runs/<name>`, rank R `runs/<name>-rank<R>` (its own
//! checkpoints, metrics and audit log of the shards it read through the residency guard).

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::TrainError;

/// The collective operations of a run over several processes. Every rank calls each operation
/// the same number of times, in the same order, with buffers of the same length.
pub trait Collectives: Send + Sync {
    /// The sum of every rank's `values`.
    fn all_reduce_sum(&self, values: &[f32]) -> Result<Vec<f32>, TrainError>;

    /// Sums a device tensor over all ranks in place, without a copy to the host, when the
    /// engine reaches that backend's memory (NCCL for CUDA). `primitive` is an
    /// `Option<FloatTensorPrimitive>` of some backend; `Ok(false)`: not this engine's, use
    /// [`Collectives::all_reduce_sum`].
    fn all_reduce_sum_on_device(&self, primitive: &mut dyn Any) -> Result<bool, TrainError>;

    /// Every rank's `value`, in rank order.
    fn all_gather(&self, value: u64) -> Result<Vec<u64>, TrainError>;

    /// The engine, for logs: e.g. "Open MPI v4.1.4".
    fn engine(&self) -> String;
}

/// This process's place in a run over several processes.
#[derive(Clone)]
pub struct Cluster {
    /// This process's rank in `0..size`.
    pub rank: usize,
    /// Processes in the run.
    pub size: usize,
    /// This process's rank among those on its node (picks its GPU).
    pub local_rank: usize,
    /// Every rank's host name, in rank order.
    pub hosts: Vec<String>,
    collectives: Arc<dyn Collectives>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("local_rank", &self.local_rank)
            .field("engine", &self.collectives.engine())
            .finish()
    }
}

impl PartialEq for Cluster {
    fn eq(&self, other: &Self) -> bool {
        (self.rank, self.size, self.local_rank) == (other.rank, other.size, other.local_rank)
            && Arc::ptr_eq(&self.collectives, &other.collectives)
    }
}

impl Eq for Cluster {}

impl Cluster {
    pub fn new(
        rank: usize,
        size: usize,
        local_rank: usize,
        hosts: Vec<String>,
        collectives: Arc<dyn Collectives>,
    ) -> Cluster {
        Cluster {
            rank,
            size,
            local_rank,
            hosts,
            collectives,
        }
    }

    pub fn engine(&self) -> String {
        self.collectives.engine()
    }

    /// The sum of every rank's `values`.
    pub fn all_reduce_sum(&self, values: &[f32]) -> Result<Vec<f32>, TrainError> {
        self.collectives.all_reduce_sum(values)
    }

    /// Every rank's `value`, in rank order.
    pub fn all_gather(&self, value: u64) -> Result<Vec<u64>, TrainError> {
        self.collectives.all_gather(value)
    }

    /// The mean of `flat` over all ranks: summed on the device where the engine can (NCCL on
    /// CUDA), else through host memory, then divided by the world size.
    pub fn mean<B: Backend>(&self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError> {
        let device = flat.device();
        let n = flat.dims()[0];
        let mut primitive = Some(flat.into_primitive().tensor());
        let summed = if self.collectives.all_reduce_sum_on_device(&mut primitive)? {
            let primitive = primitive.expect("the engine hands the tensor back");
            Tensor::from_primitive(TensorPrimitive::Float(primitive))
        } else {
            let flat: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(
                primitive.expect("untouched by an engine that declined it"),
            ));
            let values = flat
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| TrainError::Device(format!("reading gradients: {e:?}")))?;
            let sum = self.all_reduce_sum(&values)?;
            Tensor::from_data(TensorData::new(sum, [n]), &device)
        };
        Ok(summed.div_scalar(self.size as f32))
    }

    /// Refuses a run whose ranks would start at different steps (some resumed from another
    /// checkpoint than the others), naming each rank's step and run directory.
    pub fn check_same_start(&self, start_step: usize, run_dir: &Path) -> Result<(), TrainError> {
        let steps = self.all_gather(start_step as u64)?;
        if steps.iter().all(|s| *s == steps[0]) {
            return Ok(());
        }
        let base = rank_zero_dir(run_dir, self.rank);
        let each: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(r, s)| format!("rank {r} at step {s} ({})", rank_dir(&base, r).display()))
            .collect();
        let common = steps.iter().min().copied().unwrap_or(0);
        Err(TrainError::Invalid(format!(
            "the ranks would resume from different steps: {}. Every rank must continue from the \
             same step, and no rank has trained: in each directory ahead, move the checkpoints \
             after step {common} (checkpoints/step-NNNNNN.*, and final.* if there) out of \
             checkpoints/, then resume again",
            each.join(", ")
        )))
    }
}

/// Rank `rank`'s run directory for the run whose rank-0 directory is `base`: `base` itself
/// for rank 0, `<base>-rank<R>` beside it for the others.
pub fn rank_dir(base: &Path, rank: usize) -> PathBuf {
    if rank == 0 {
        return base.to_path_buf();
    }
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-rank{rank}"));
    base.with_file_name(name)
}

/// The rank-0 directory of rank `rank`'s `run_dir` ([`rank_dir`]'s inverse).
fn rank_zero_dir(run_dir: &Path, rank: usize) -> PathBuf {
    let suffix = format!("-rank{rank}");
    match run_dir.file_name().and_then(|n| n.to_str()) {
        Some(name) if rank > 0 && name.ends_with(&suffix) => {
            run_dir.with_file_name(&name[..name.len() - suffix.len()])
        }
        _ => run_dir.to_path_buf(),
    }
}

/// The world size an MPI launcher gave this process (`mpirun`, `mpiexec`, `srun`), read from
/// the environment each launcher sets, with the launcher's variable; `None` when not launched
/// by one.
pub fn launcher_world_size() -> Option<(usize, &'static str)> {
    const SIZES: [&str; 3] = [
        // Open MPI's mpirun.
        "OMPI_COMM_WORLD_SIZE",
        // MPICH's hydra, Intel MPI, and Slurm's srun with --mpi=pmi2.
        "PMI_SIZE",
        // Slurm's srun with --mpi=pmix.
        "PMIX_SIZE",
    ];
    SIZES.iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(|n| (n, *var))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::Flex;

    /// `n` ranks that all hold what this rank holds: the sum is `n x` the values, every
    /// gathered value this rank's.
    pub(crate) struct Mirrors(pub usize);

    impl Collectives for Mirrors {
        fn all_reduce_sum(&self, values: &[f32]) -> Result<Vec<f32>, TrainError> {
            Ok(values.iter().map(|v| v * self.0 as f32).collect())
        }
        fn all_reduce_sum_on_device(&self, _: &mut dyn Any) -> Result<bool, TrainError> {
            Ok(false)
        }
        fn all_gather(&self, value: u64) -> Result<Vec<u64>, TrainError> {
            Ok(vec![value; self.0])
        }
        fn engine(&self) -> String {
            "mirrors".into()
        }
    }

    /// Rank `rank` of `size`, `local_rank` on its node, over [`Mirrors`].
    pub(crate) fn mirrored(rank: usize, size: usize, local_rank: usize) -> Cluster {
        let hosts = (0..size).map(|r| format!("node{r}")).collect();
        Cluster::new(rank, size, local_rank, hosts, Arc::new(Mirrors(size)))
    }

    #[test]
    fn the_mean_goes_through_host_memory_when_the_engine_declines_the_device() {
        let device = Default::default();
        let values = vec![1.5f32, -2.0, 3.25, 0.0];
        let flat = Tensor::<Flex, 1>::from_data(TensorData::new(values.clone(), [4]), &device);
        let mean = mirrored(0, 3, 0).mean(flat).unwrap();
        // (3 x v) / 3 in f32: exactly v for these values.
        assert_eq!(mean.into_data().into_vec::<f32>().unwrap(), values);
    }

    #[test]
    fn ranks_at_the_same_step_start_and_the_refusal_names_each() {
        let cluster = mirrored(1, 2, 1);
        cluster
            .check_same_start(7, Path::new("runs/x-rank1"))
            .unwrap();
        // Two ranks that disagree (a gather that answers 3 and 5).
        struct Apart;
        impl Collectives for Apart {
            fn all_reduce_sum(&self, v: &[f32]) -> Result<Vec<f32>, TrainError> {
                Ok(v.to_vec())
            }
            fn all_reduce_sum_on_device(&self, _: &mut dyn Any) -> Result<bool, TrainError> {
                Ok(false)
            }
            fn all_gather(&self, _: u64) -> Result<Vec<u64>, TrainError> {
                Ok(vec![3, 5])
            }
            fn engine(&self) -> String {
                "apart".into()
            }
        }
        let apart = Cluster::new(1, 2, 0, vec!["a".into(), "b".into()], Arc::new(Apart));
        let e = apart
            .check_same_start(5, Path::new("runs/x-rank1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank 0 at step 3 (runs/x)")
                && e.contains("rank 1 at step 5 (runs/x-rank1)")
                && e.contains("after step 3"),
            "{e}"
        );
    }

    #[test]
    fn rank_directories_sit_beside_rank_zeros() {
        let base = Path::new("runs/base");
        assert_eq!(rank_dir(base, 0), PathBuf::from("runs/base"));
        assert_eq!(rank_dir(base, 3), PathBuf::from("runs/base-rank3"));
        assert_eq!(rank_zero_dir(&rank_dir(base, 3), 3), base);
        assert_eq!(rank_zero_dir(base, 0), base);
        // A directory that is not rank 3's is left as it is.
        assert_eq!(
            rank_zero_dir(Path::new("runs/x-rank2"), 3),
            Path::new("runs/x-rank2")
        );
    }
}
