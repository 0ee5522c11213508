//! NCCL on one GPU: the all-reduce of a single rank leaves the gradients as they were, both
//! called directly and through `Cluster::mean` (the path data-parallel training takes).
//!
//! Needs an Nvidia GPU and NCCL (libnccl.so.2 on the library path), so CI only compiles it:
//! `cargo test -p percept-train --features cuda --test nccl -- --nocapture --test-threads 1`.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use percept_train::cluster::{Cluster, Collectives};
use percept_train::nccl::{cuda_tensor, unique_id, NcclComm};
use percept_train::TrainError;

/// `1 + 0.5 * (i % 7)`, computed on the GPU by fused kernels still queued when NCCL is called.
fn pattern(n: usize, device: &CudaDevice) -> Tensor<Cuda, 1> {
    Tensor::<Cuda, 1, Int>::arange(0..n as i64, device)
        .remainder_scalar(7)
        .float()
        .mul_scalar(0.5)
        .add_scalar(1.0)
}

fn expected(n: usize) -> Vec<f32> {
    (0..n).map(|i| 1.0 + 0.5 * (i % 7) as f32).collect()
}

fn values(tensor: Tensor<Cuda, 1>) -> Vec<f32> {
    tensor.into_data().into_vec::<f32>().expect("f32 values")
}

#[test]
fn one_rank_all_reduce_leaves_the_tensor_as_it_was() {
    let device = CudaDevice::new(0);
    // percept's nano and small gradients are a few million floats; one odd size checks the tail.
    for n in [1usize, 1_000_003, 1 << 22] {
        let mut primitive = Some(pattern(n, &device).into_primitive().tensor());
        let tensor = cuda_tensor(&mut primitive).expect("a tensor of burn's CUDA backend");
        let comm = NcclComm::new(unique_id().expect("an NCCL id"), 0, 1, tensor)
            .expect("a one-rank communicator");
        for round in 0..3 {
            let start = Instant::now();
            comm.all_reduce_sum_in_place(tensor)
                .expect("the all-reduce");
            println!(
                "NCCL all-reduce, 1 rank, {n} f32 (round {round}): {:.3} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
        let summed: Tensor<Cuda, 1> =
            Tensor::from_primitive(TensorPrimitive::Float(primitive.expect("still there")));
        assert_eq!(values(summed), expected(n), "{n} elements");
    }
}

/// One rank whose engine is NCCL; the host path is refused, so a test that passes went
/// through the GPU.
struct OneGpu {
    comm: Mutex<Option<NcclComm>>,
    on_device: AtomicUsize,
}

impl Collectives for OneGpu {
    fn all_reduce_sum(&self, _values: &[f32]) -> Result<Vec<f32>, TrainError> {
        Err(TrainError::Device(
            "host all-reduce called for a CUDA tensor".into(),
        ))
    }

    fn all_reduce_sum_on_device(&self, primitive: &mut dyn Any) -> Result<bool, TrainError> {
        let Some(tensor) = cuda_tensor(primitive) else {
            return Ok(false);
        };
        let mut comm = self.comm.lock().unwrap();
        if comm.is_none() {
            *comm = Some(NcclComm::new(unique_id()?, 0, 1, tensor)?);
        }
        comm.as_ref().unwrap().all_reduce_sum_in_place(tensor)?;
        self.on_device.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    fn all_gather(&self, value: u64) -> Result<Vec<u64>, TrainError> {
        Ok(vec![value])
    }

    fn engine(&self) -> String {
        "NCCL, one rank".into()
    }
}

#[test]
fn cluster_mean_of_a_cuda_tensor_is_summed_by_nccl_on_the_gpu() {
    let device = CudaDevice::new(0);
    let engine = Arc::new(OneGpu {
        comm: Mutex::new(None),
        on_device: AtomicUsize::new(0),
    });
    let cluster = Cluster::new(0, 1, 0, vec!["gpu".into()], engine.clone());
    let n = 3_000_017;
    for _ in 0..2 {
        let mean = cluster.mean(pattern(n, &device)).expect("the mean");
        assert_eq!(mean.dims(), [n]);
        assert_eq!(values(mean), expected(n));
    }
    assert_eq!(engine.on_device.load(Ordering::SeqCst), 2);
}
