//! Backend selection: `--device cpu|wgpu|cuda:N` picks one of the backends compiled in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;

use crate::TrainError;

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The pure-Rust CPU backend (burn flex); feature `flex`.
    Cpu,
    /// The default wgpu adapter (Vulkan/Metal/DX12); feature `wgpu`.
    Wgpu,
    /// An Nvidia GPU by index; feature `cuda`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            TrainError::Device(format!(
                "unknown device {s:?}: use cpu, wgpu, cuda or cuda:N (N = GPU index)"
            ))
        };
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "wgpu" => Ok(DeviceSpec::Wgpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu => write!(f, "wgpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Work that runs on whichever backend the user picked.
pub trait BackendTask {
    type Output;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend;
}

// Unused only in a build with every backend compiled in.
#[cfg_attr(
    all(feature = "flex", feature = "wgpu", feature = "cuda"),
    allow(dead_code)
)]
fn missing(spec: DeviceSpec, feature: &str) -> TrainError {
    TrainError::Device(format!(
        "device {spec} needs the `{feature}` feature, which this binary was built without: \
         rebuild with `cargo build --release --features {feature}`"
    ))
}

/// Runs `task` on the backend of `spec`, or says which feature is missing.
pub fn dispatch<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output, TrainError> {
    match spec {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            {
                use burn::backend::{flex::FlexDevice, Autodiff, Flex};
                Ok(task.run::<Autodiff<Flex>>(FlexDevice))
            }
            #[cfg(not(feature = "flex"))]
            {
                let _ = task;
                Err(missing(spec, "flex"))
            }
        }
        DeviceSpec::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::{wgpu::WgpuDevice, Autodiff, Wgpu};
                Ok(task.run::<Autodiff<Wgpu>>(WgpuDevice::default()))
            }
            #[cfg(not(feature = "wgpu"))]
            {
                let _ = task;
                Err(missing(spec, "wgpu"))
            }
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                Ok(task.run::<Autodiff<Cuda>>(CudaDevice::new(index)))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (task, index);
                Err(missing(spec, "cuda"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
    }
}
