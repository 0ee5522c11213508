//! Backend selection: `--device cpu|wgpu|cuda:N` picks one of the backends compiled in.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;

use crate::cluster::Cluster;
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
/// (`--devices cuda:0,cuda:1`), or with a [`Cluster`], this rank's one device of a run over
/// several processes.
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

    /// This rank's device of a run over several processes, from the devices named for its
    /// node: a list gives each local rank its entry (`cuda:0,cuda:1,cuda:2,cuda:3` with 4 ranks
    /// a node); one GPU `cuda:N` gives local rank L `cuda:N+L` (so `--device cuda` spreads the
    /// node's ranks over its GPUs); `cpu` and `wgpu` serve every rank.
    pub fn on_cluster(self, cluster: Cluster) -> Result<Devices, TrainError> {
        let local = cluster.local_rank;
        let spec = match self.specs.as_slice() {
            [DeviceSpec::Cuda(n)] => DeviceSpec::Cuda(n + local),
            [one] => *one,
            list => *list.get(local).ok_or_else(|| {
                TrainError::Device(format!(
                    "--devices names {} devices, but this node runs local rank {local} (rank {} \
                     of {}): name one device per rank of the node, or one GPU (--device cuda) \
                     and each rank takes cuda:<local rank>",
                    list.len(),
                    cluster.rank,
                    cluster.size
                ))
            })?,
        };
        Ok(Devices {
            specs: vec![spec],
            cluster: Some(cluster),
        })
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

/// Panic messages of this process's threads since [`on_gpu`] began watching, kept by the hook
/// [`report_panics`] installs.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// Installs a panic hook that prints a panic as one line (the standard report and backtrace
/// with `RUST_BACKTRACE` set) and keeps its message, so that [`dispatch`] can say what broke
/// inside a GPU backend's own threads. The binary calls it once at start.
pub fn report_panics() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let message = format!("thread '{thread}' panicked: {}", panic_text(info.payload()));
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            standard(info);
        } else {
            eprintln!("percept: internal error: {message} (RUST_BACKTRACE=1 for a backtrace)");
        }
        let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        if panics.len() < 8 {
            panics.push(message);
        }
    }));
}

/// Runs GPU work, turning a panic (burn's GPU backends panic when the driver or its libraries
/// cannot be used) into an error that names the device, what broke and what to check.
// Unused in a build without GPU backends.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda", test)), allow(dead_code))]
fn on_gpu<T>(spec: DeviceSpec, run: impl FnOnce() -> T) -> Result<T, TrainError> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(|payload| {
        let mut panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()));
        if panics.is_empty() {
            panics.push(panic_text(&*payload));
        }
        TrainError::Device(format!(
            "{spec}: the backend failed: {}. At start-up this is the GPU driver or its \
             libraries: for cuda, the driver's libcuda.so.1 (not a CUDA toolkit's compat/ copy) \
             and libnvrtc.so must be found (LD_LIBRARY_PATH); for wgpu, a Vulkan, Metal or DX12 \
             driver",
            panics.join("; ")
        ))
    })
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
                let devices = vec![WgpuDevice::default(); specs.len()];
                crate::gpu_runtime::init_default()?;
                on_gpu(specs[0], || task.run_on::<Autodiff<Wgpu>>(devices))
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
                crate::gpu_runtime::init_default()?;
                on_gpu(specs[0], || task.run_on::<Autodiff<Cuda>>(devices))
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
    use crate::cluster::tests::mirrored;

    #[test]
    fn each_rank_takes_its_device_from_those_named_for_its_node() {
        let on = |devices: &str, local: usize| {
            devices
                .parse::<Devices>()
                .unwrap()
                .on_cluster(mirrored(local, 4, local))
                .map(|d| d.specs().to_vec())
        };
        // One GPU named: the node's ranks spread from it.
        assert_eq!(on("cuda", 2).unwrap(), [DeviceSpec::Cuda(2)]);
        assert_eq!(on("cuda:4", 1).unwrap(), [DeviceSpec::Cuda(5)]);
        // A list: each local rank its entry.
        assert_eq!(on("cuda:3,cuda:1", 1).unwrap(), [DeviceSpec::Cuda(1)]);
        // The CPU serves every rank.
        assert_eq!(on("cpu", 3).unwrap(), [DeviceSpec::Cpu]);
        let e = on("cuda:0,cuda:1", 2).unwrap_err().to_string();
        assert!(
            e.contains("names 2 devices") && e.contains("local rank 2"),
            "{e}"
        );
    }

    #[test]
    fn a_backend_thread_failure_becomes_an_error_naming_device_and_cause() {
        report_panics();
        // What burn-cuda does when the driver does not match: its device thread panics,
        // then the caller's channel to it breaks.
        let result: Result<(), TrainError> = on_gpu(DeviceSpec::Cuda(1), || {
            let device_thread = std::thread::Builder::new()
                .name("DSD-0-0".into())
                .spawn(|| panic!("DriverError(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)"))
                .unwrap();
            if device_thread.join().is_err() {
                panic!("called `Result::unwrap()` on an `Err` value: RecvError");
            }
        });
        let e = result.unwrap_err().to_string();
        assert!(
            e.starts_with("cuda:1: the backend failed: thread 'DSD-0-0' panicked: DriverError"),
            "{e}"
        );
        assert!(e.contains("RecvError") && e.contains("libcuda.so.1"), "{e}");
        assert_eq!(on_gpu(DeviceSpec::Wgpu, || 7).unwrap(), 7);
    }

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
