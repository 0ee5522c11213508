//! Backend selection: `--device cpu|wgpu|cuda:N` picks one of the backends compiled in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;

use crate::data_parallel::Cluster;
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

/// The devices a run trains on: one, or several of one kind for data-parallel training
/// (`--devices cuda:0,cuda:1`), and with a [`Cluster`], this node's share of a run over
/// several nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    specs: Vec<DeviceSpec>,
    cluster: Option<Cluster>,
}

impl Devices {
    /// Several devices of one kind. A CUDA GPU may be named once; `cpu` and `wgpu` (one
    /// device each) may be repeated, which runs the data-parallel path with replicas sharing
    /// the device (how tests check it without GPUs).
    pub fn new(specs: Vec<DeviceSpec>) -> Result<Devices, TrainError> {
        let Some(first) = specs.first() else {
            return Err(TrainError::Device(
                "no device named: use cpu, wgpu, cuda:N or a list like cuda:0,cuda:1".into(),
            ));
        };
        if let Some(other) = specs
            .iter()
            .find(|s| std::mem::discriminant(*s) != std::mem::discriminant(first))
        {
            return Err(TrainError::Device(format!(
                "devices {first} and {other} are of different kinds: data-parallel training \
                 needs devices of one backend"
            )));
        }
        for (i, s) in specs.iter().enumerate() {
            if matches!(s, DeviceSpec::Cuda(_)) && specs[..i].contains(s) {
                return Err(TrainError::Device(format!(
                    "{s} is named twice: name each GPU once (cuda:0,cuda:1)"
                )));
            }
        }
        Ok(Devices {
            specs,
            cluster: None,
        })
    }

    pub fn specs(&self) -> &[DeviceSpec] {
        &self.specs
    }

    /// These devices as one node of a run over several nodes.
    pub fn on_cluster(mut self, cluster: Cluster) -> Devices {
        self.cluster = Some(cluster);
        self
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }
}

impl From<DeviceSpec> for Devices {
    fn from(spec: DeviceSpec) -> Devices {
        Devices {
            specs: vec![spec],
            cluster: None,
        }
    }
}

impl FromStr for Devices {
    type Err = TrainError;
    /// A comma-separated list: `cuda:0,cuda:1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Devices::new(
            s.split(',')
                .map(|d| d.trim().parse())
                .collect::<Result<_, _>>()?,
        )
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.specs.iter().map(ToString::to_string).collect();
        write!(f, "{}", names.join(","))
    }
}

/// Work that runs on whichever backend the user picked.
pub trait BackendTask {
    type Output;
    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend;

    /// Runs on several devices of the backend; work that uses one runs on the first.
    fn run_on<B>(self, devices: Vec<B::Device>) -> Self::Output
    where
        Self: Sized,
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let first = devices
            .into_iter()
            .next()
            .expect("Devices holds at least one");
        self.run::<B>(first)
    }
}

// Unused only in a build with every backend compiled in.
#[cfg_attr(
    all(feature = "flex", feature = "wgpu", feature = "cuda", not(test)),
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
    dispatch_on(&Devices::from(spec), task)
}

/// Runs `task` on `devices` (all of one backend), or says which feature is missing.
///
/// percept-train's own unit tests leave the GPU backends out: none uses them, and compiling
/// every task for them too doubles that build (the integration tests and the binary have them).
pub fn dispatch_on<T: BackendTask>(devices: &Devices, task: T) -> Result<T::Output, TrainError> {
    let specs = devices.specs();
    match specs[0] {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            {
                use burn::backend::{flex::FlexDevice, Autodiff, Flex};
                Ok(task.run_on::<Autodiff<Flex>>(vec![FlexDevice; specs.len()]))
            }
            #[cfg(not(feature = "flex"))]
            {
                let _ = task;
                Err(missing(specs[0], "flex"))
            }
        }
        DeviceSpec::Wgpu => {
            #[cfg(all(feature = "wgpu", not(test)))]
            {
                use burn::backend::{wgpu::WgpuDevice, Autodiff, Wgpu};
                Ok(task.run_on::<Autodiff<Wgpu>>(vec![WgpuDevice::default(); specs.len()]))
            }
            #[cfg(not(all(feature = "wgpu", not(test))))]
            {
                let _ = task;
                Err(missing(specs[0], "wgpu"))
            }
        }
        DeviceSpec::Cuda(_) => {
            #[cfg(all(feature = "cuda", not(test)))]
            {
                use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Cuda(index) => CudaDevice::new(*index),
                        _ => unreachable!("Devices::new keeps one kind"),
                    })
                    .collect();
                Ok(task.run_on::<Autodiff<Cuda>>(devices))
            }
            #[cfg(not(all(feature = "cuda", not(test))))]
            {
                let _ = task;
                Err(missing(specs[0], "cuda"))
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

    #[test]
    fn parses_device_lists() {
        let d: Devices = "cuda:0, cuda:1".parse().unwrap();
        assert_eq!(d.specs(), &[DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]);
        assert_eq!(d.to_string(), "cuda:0,cuda:1");
        let cpu: Devices = "cpu,cpu".parse().unwrap();
        assert_eq!(cpu.specs().len(), 2);
        let e = "cuda:0,cpu".parse::<Devices>().unwrap_err().to_string();
        assert!(e.contains("different kinds"), "{e}");
        let e = "cuda:1,cuda:1".parse::<Devices>().unwrap_err().to_string();
        assert!(e.contains("cuda:1 is named twice"), "{e}");
        let e = "cuda:0,,".parse::<Devices>().unwrap_err().to_string();
        assert!(e.contains("unknown device \"\""), "{e}");
    }
}
