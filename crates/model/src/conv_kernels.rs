//! Which kernels run the network's convolutions: the `train.conv` key, `--conv` on the CLI.
//!
//! Three paths compute the same convolution (checked against each other by the tests):
//!
//! - [`ConvKernels::Burn`]: burn's `conv2d`. On the cubecl backends (cuda, wgpu) burn 0.21
//!   autotunes it: per new convolution shape it compiles and times 8 forward, 7 weight-gradient
//!   and 6 input-gradient candidates, which is why a CUDA run's first step took minutes.
//! - [`ConvKernels::Im2col`]: im2col in burn tensor ops (pad, strided slices, stack) and one
//!   batched matrix product ([`crate::im2col`]); autodiff derives the gradients (the weight
//!   gradient is one matrix product with the column matrix, as upstream burn 0.22 computes it).
//!   Shape-generic pad, slice and stack kernels and burn's matrix product: no convolution
//!   autotuning, but the matrix product is autotuned per shape class too (on lavapipe, nano's
//!   first step tuned 155 keys this way against 272 with `Burn`).
//! - percept's CPU kernels ([`crate::conv2d`]'s im2col + GEMM on burn-flex).
//!
//! [`ConvKernels::Auto`] picks percept's CPU kernels on the CPU backend, `Im2col` on cuda and
//! `Burn` on wgpu. Why: measured on lavapipe (software Vulkan, where burn's tensor-core
//! candidates are skipped), burn's convolution was faster both cold (198 s against 278 s for
//! nano's first step) and warm (2.3 s against 2.4 s a step); on CUDA, burn 0.21's convolution
//! backward is the known bottleneck (upstream #4598: YOLOX-nano 36x slower than PyTorch; the
//! weight gradient through a column matrix and one matrix product, what `Im2col` does, took
//! 21.8 ms down to 1.49 ms in upstream's fix). Neither choice is measured on a GPU yet:
//! `benches/gpu.sh` runs both.
//!
//! The setting is per thread, like [`crate::precision`]: tests comparing the paths, and
//! data-parallel replicas, do not see each other's.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The convolution path; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvKernels {
    /// percept's CPU kernels on the CPU backend, `Im2col` on cuda, `Burn` on wgpu.
    #[default]
    Auto,
    /// burn's `conv2d` (autotuned on cuda and wgpu).
    Burn,
    /// im2col + one batched matrix product, in burn tensor ops, on any backend.
    Im2col,
}

impl ConvKernels {
    pub const ALL: [ConvKernels; 3] = [ConvKernels::Auto, ConvKernels::Burn, ConvKernels::Im2col];
    pub const NAMES: &'static str = "\"auto\", \"burn\" or \"im2col\"";
}

impl fmt::Display for ConvKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConvKernels::Auto => "auto",
            ConvKernels::Burn => "burn",
            ConvKernels::Im2col => "im2col",
        })
    }
}

impl FromStr for ConvKernels {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConvKernels::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                format!(
                    "unknown convolution kernels {s:?}: expected {}",
                    ConvKernels::NAMES
                )
            })
    }
}

thread_local! {
    static CONVOLUTIONS: Cell<ConvKernels> = const { Cell::new(ConvKernels::Auto) };
}

/// The convolution path on this thread.
pub fn current() -> ConvKernels {
    CONVOLUTIONS.with(Cell::get)
}

/// Runs the network's convolutions on this thread through `kernels` until the returned guard
/// is dropped, when the previous setting comes back.
#[must_use = "the setting ends when the guard is dropped"]
pub fn use_conv_kernels(kernels: ConvKernels) -> ConvKernelsGuard {
    ConvKernelsGuard {
        previous: CONVOLUTIONS.with(|c| c.replace(kernels)),
    }
}

/// Restores the previous setting when dropped; see [`use_conv_kernels`].
pub struct ConvKernelsGuard {
    previous: ConvKernels,
}

impl Drop for ConvKernelsGuard {
    fn drop(&mut self) {
        CONVOLUTIONS.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore_per_thread() {
        assert_eq!(current(), ConvKernels::Auto);
        {
            let _outer = use_conv_kernels(ConvKernels::Im2col);
            assert_eq!(current(), ConvKernels::Im2col);
            {
                let _inner = use_conv_kernels(ConvKernels::Burn);
                assert_eq!(current(), ConvKernels::Burn);
            }
            assert_eq!(current(), ConvKernels::Im2col);
            assert_eq!(
                std::thread::spawn(current).join().unwrap(),
                ConvKernels::Auto
            );
        }
        assert_eq!(current(), ConvKernels::Auto);
    }

    #[test]
    fn names_parse_print_and_refuse() {
        for k in ConvKernels::ALL {
            assert_eq!(k.to_string().parse::<ConvKernels>().unwrap(), k);
        }
        assert_eq!(
            "gemm".parse::<ConvKernels>().unwrap_err(),
            "unknown convolution kernels \"gemm\": expected \"auto\", \"burn\" or \"im2col\""
        );
        #[derive(Deserialize)]
        struct Key {
            conv: ConvKernels,
        }
        let key: Key = toml::from_str("conv = \"im2col\"").unwrap();
        assert_eq!(key.conv, ConvKernels::Im2col);
    }
}
