//! NCCL all-reduce of CUDA tensors in place, for a run over several processes (feature `cuda`;
//! with `mpi`, [`crate::mpi_collectives`] brings rank 0's communicator id to every rank).
//! NCCL itself (libnccl.so.2) is opened at run time by cudarc, so
//! the build needs neither NCCL nor CUDA.
//!
//! burn's CUDA backend is fused: a gradient vector is a fusion tensor. It is resolved to the
//! cubecl tensor that holds its buffer (running any queued kernels), the device is synchronised,
//! NCCL sums the buffer in place on a stream of its own in the same (primary) CUDA context,
//! and that stream is synchronised before the tensor is used again. One all-reduce per step
//! of a few to a few hundred megabytes: the two synchronisations cost little against it.

use std::any::Any;
use std::ffi::c_void;
use std::sync::Arc;

use burn::tensor::DType;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_fusion::FusionTensor;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result as nccl, sys};

use crate::TrainError;

/// A float tensor of burn's fused CUDA backend (`burn::backend::Cuda`).
pub type CudaFloat = FusionTensor<FusionCubeRuntime<CudaRuntime>>;
type CudaCube = CubeBackend<CudaRuntime, f32, i32, u8>;

/// Bytes of an `ncclUniqueId`.
pub const UNIQUE_ID_BYTES: usize = 128;

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Device(format!(
        "NCCL {what} failed: {e:?} (is libnccl.so.2 installed and on the library path? \
         NCCL_DEBUG=INFO says more)"
    ))
}

/// The CUDA tensor in `primitive` (an `Option` of some backend's float primitive), if it is
/// one of burn's CUDA backend.
pub fn cuda_tensor(primitive: &mut dyn Any) -> Option<&mut CudaFloat> {
    primitive.downcast_mut::<Option<CudaFloat>>()?.as_mut()
}

/// A fresh communicator id (rank 0 draws it, every rank joins with it).
pub fn unique_id() -> Result<[u8; UNIQUE_ID_BYTES], TrainError> {
    let id = nccl::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
    Ok(id.internal.map(|c| c as u8))
}

/// This rank's NCCL communicator, on the GPU of the tensors it reduces.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device: usize,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; `MpiCollectives` keeps it behind a mutex.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    /// Joins the communicator `id` as `rank` of `size`, on the GPU that holds `tensor`. Every
    /// rank calls this at the same point (it blocks until all have joined).
    pub fn new(
        id: [u8; UNIQUE_ID_BYTES],
        rank: usize,
        size: usize,
        tensor: &CudaFloat,
    ) -> Result<NcclComm, TrainError> {
        let device = tensor.client.device().index;
        let context = CudaContext::new(device)
            .map_err(|e| TrainError::Device(format!("CUDA context of cuda:{device}: {e:?}")))?;
        context
            .bind_to_thread()
            .map_err(|e| TrainError::Device(format!("binding cuda:{device}: {e:?}")))?;
        let stream = context
            .new_stream()
            .map_err(|e| TrainError::Device(format!("a stream on cuda:{device}: {e:?}")))?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as _),
        };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL on success; `id` is rank 0's, broadcast to all.
        let comm = unsafe {
            nccl::comm_init_rank(comm.as_mut_ptr(), size as i32, id, rank as i32)
                .map_err(|e| nccl_error("ncclCommInitRank", e))?;
            comm.assume_init()
        };
        tracing::info!("NCCL communicator: rank {rank} of {size} on cuda:{device}");
        Ok(NcclComm {
            comm,
            context,
            stream,
            device,
        })
    }

    /// Replaces `tensor` (a contiguous f32 vector on this communicator's GPU) by its sum over
    /// every rank.
    pub fn all_reduce_sum_in_place(&self, tensor: &CudaFloat) -> Result<(), TrainError> {
        if tensor.dtype != DType::F32 {
            return Err(TrainError::Device(format!(
                "NCCL all-reduce of {:?} gradients: percept averages f32",
                tensor.dtype
            )));
        }
        let on = tensor.client.device().index;
        if on != self.device {
            return Err(TrainError::Device(format!(
                "a gradient on cuda:{on}, the NCCL communicator on cuda:{}: one GPU per rank",
                self.device
            )));
        }
        let count = tensor.shape.num_elements();
        // A clone keeps the fusion tensor (and its buffer) alive: the sum is written there.
        let cube: CubeTensor<CudaRuntime> = tensor
            .client
            .resolve_tensor_float::<CudaCube>(tensor.clone());
        let resource = cube
            .client
            .get_resource(cube.handle.clone())
            .map_err(|e| TrainError::Device(format!("the gradients' CUDA buffer: {e:?}")))?;
        let buffer = resource.resource();
        if (buffer.size as usize) < count * 4 {
            return Err(TrainError::Device(format!(
                "the gradients' CUDA buffer holds {} bytes, {} expected",
                buffer.size,
                count * 4
            )));
        }
        let device_error = |what: &str, e: &dyn std::fmt::Debug| {
            TrainError::Device(format!("cuda:{}: {what}: {e:?}", self.device))
        };
        // Everything that writes the gradients has run before NCCL reads them.
        burn_cubecl::cubecl::future::block_on(cube.client.sync())
            .map_err(|e| device_error("synchronising", &e))?;
        self.context
            .bind_to_thread()
            .map_err(|e| device_error("binding the context", &e))?;
        let pointer = buffer.ptr as *mut c_void;
        // SAFETY: `pointer` is `count` f32s of device memory on this communicator's GPU, kept
        // alive by `resource`; in-place all-reduce (same send and receive buffer) is allowed.
        unsafe {
            nccl::all_reduce(
                pointer as *const c_void,
                pointer,
                count,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| device_error("waiting for the all-reduce", &e))?;
        drop(resource);
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: made by `comm_init_rank`, destroyed once.
        unsafe {
            let _ = nccl::comm_destroy(self.comm);
        }
    }
}
