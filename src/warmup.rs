//! `percept warmup`: compiles and tunes every GPU kernel a run of a config will need, into the
//! kernel cache ([`percept_train::gpu_runtime`]), so that a node image prepared once starts training
//! without compiling or tuning.
//!
//! It runs what the run runs, at the run's shapes: the training step itself
//! ([`Replica::step`]: forward, multi-task loss, backward, gradient accumulation over
//! `train.grad_accumulation` micro-batches of `train.batch_size`, clip, AdamW) for a few
//! steps, then validation's inference ([`percept_eval::eval`]'s forward, decoding with NMS, masks) at
//! `validation.batch_size` and at the last, smaller batch a validation pass over the data's
//! `val` splits ends with. Its batches come from synthetic scenes written to a scratch folder
//! (removed afterwards) at the config's input size: no frame of the run's data is read (only
//! the manifests, for the class count and the val splits' sizes), and nothing is written to a
//! run. One device is warmed: data-parallel replicas on identical GPUs share the cache.
//!
//! What it cannot see: an operation whose shape depends on a batch's content (how many
//! targets it has) may still meet a new autotune key later in a run.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use percept_data::{Batch, Manifest, Split};
use percept_model::{conv2d, use_conv_kernels, PerceptionNetConfig};
use percept_synth::{write_synthetic_dataset, SynthOptions};
use serde::Serialize;

use crate::bench::Scratch;
use percept_eval::eval::infer;
use percept_train::backend::{dispatch, BackendTask, DeviceSpec};
use percept_train::config::RunConfig;
use percept_train::data_parallel::Replica;
use percept_train::gpu_runtime::{self, KernelCache, KernelCounts};
use percept_train::loader::{BatchBuilder, LoaderOptions};
use percept_train::optim::RunOptimizer;
use percept_train::TrainError;

/// What to warm up.
#[derive(Debug, Clone)]
pub struct WarmupOptions {
    /// The run config whose shapes, batch sizes and kernels are compiled.
    pub config: RunConfig,
    /// Where the config came from (for messages).
    pub config_source: String,
    pub device: DeviceSpec,
    /// Training steps to run (the first compiles, the later ones check that nothing is left).
    pub steps: usize,
    /// Detection classes; `None`: from the manifests of the config's datasets.
    pub classes: Option<usize>,
    /// Parent of the scratch folder for the synthetic scenes.
    pub scratch: PathBuf,
}

/// Time, kernels compiled and autotuning of one part of the warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct WarmupPhase {
    pub what: String,
    pub seconds: f64,
    pub kernels: Option<KernelCounts>,
}

/// What [`warmup`] did.
#[derive(Debug, Clone, Serialize)]
pub struct WarmupReport {
    pub device: String,
    pub backend: String,
    /// The convolution kernels the run uses (`train.conv`, `auto` resolved).
    pub conv: String,
    pub classes: usize,
    /// The kernel cache and why it is that one; `None` where cubecl was configured before.
    pub cache: Option<String>,
    pub phases: Vec<WarmupPhase>,
}

impl WarmupReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// One line per phase.
    pub fn table(&self) -> String {
        let mut out = format!(
            "warm-up on {} ({}), {} convolutions, {} classes\nkernel cache: {}\n",
            self.device,
            self.backend,
            self.conv,
            self.classes,
            self.cache
                .as_deref()
                .unwrap_or("cubecl's default (not set by percept)")
        );
        for p in &self.phases {
            let kernels = p.kernels.as_ref().map_or(String::new(), |k| {
                format!(
                    ": {} kernels compiled, {} autotune keys tuned ({} candidates timed)",
                    k.compiled, k.keys_tuned, k.candidates_timed
                )
            });
            out.push_str(&format!("  {:<34} {:>8.1} s{kernels}\n", p.what, p.seconds));
        }
        out
    }
}

/// Runs the warm-up on `options.device`.
pub fn warmup(options: &WarmupOptions) -> Result<WarmupReport, TrainError> {
    let config = &options.config;
    let source = &options.config_source;
    if options.device == DeviceSpec::Cpu {
        return Err(TrainError::Invalid(
            "--device cpu: the CPU backend compiles no kernels, there is nothing to warm up; \
             give --device wgpu or cuda:N"
                .into(),
        ));
    }
    if options.steps == 0 {
        return Err(TrainError::Invalid(
            "--steps 0: give at least 1 training step".into(),
        ));
    }
    if config.train.precision == percept_model::Precision::Bf16
        && options.device == DeviceSpec::Wgpu
    {
        return Err(TrainError::Invalid(format!(
            "{source}: train.precision = \"bf16\" needs a cuda device (wgpu has no bfloat16)"
        )));
    }
    let (classes, val_images) = data_shape(config, source, options.classes)?;
    gpu_runtime::init(&KernelCache::resolve(config.kernel_cache.as_deref()))?;

    let scratch = Scratch::new(&options.scratch, "warmup")?;
    let input = &config.model.input;
    let micro = config.train.batch_size;
    let val_batch = config.validation.batch_size.max(1);
    write_synthetic_dataset(
        &scratch.0,
        &SynthOptions {
            name: "warmup".into(),
            region: config.site.region.clone(),
            width: input.width as u32,
            height: input.height as u32,
            train: micro * config.train.grad_accumulation,
            val: 0,
            seed: config.train.seed,
            samples_per_shard: 64,
        },
        &|_| {},
    )?;
    let data = scratch.open(&config.site.region)?;
    let sampling = RunConfig {
        data: percept_train::config::DataConfig {
            region_weights: Default::default(),
            ..config.data.clone()
        },
        ..config.clone()
    };
    let mut builder = BatchBuilder::new(
        data.clone(),
        data.sampler(&sampling)?,
        LoaderOptions {
            batch_size: micro,
            width: input.width as u32,
            height: input.height as u32,
            augment: config.data.augment.clone(),
            prefetch_batches: 1,
            workers: config.data.workers,
        },
    )?;
    let mut micro_batches = Vec::new();
    for _ in 0..config.train.grad_accumulation {
        let mut batch = builder.next_batch()?.batch;
        fit_classes(&mut batch, classes);
        micro_batches.push(batch);
    }
    // Validation batches (when the run validates): the full one, and the last, smaller one
    // a pass over each val split ends with (other shapes, so other kernels and tuning keys).
    let mut val_sizes = Vec::new();
    if config.validation.every > 0 {
        val_sizes.push(val_batch);
        for last in val_images.iter().map(|n| n % val_batch).filter(|&r| r > 0) {
            if !val_sizes.contains(&last) {
                val_sizes.push(last);
            }
        }
    }
    let task = WarmupTask {
        config: config.clone(),
        device_spec: options.device,
        steps: options.steps,
        classes,
        micro_batches,
        val_sizes,
    };
    dispatch(options.device, task)?
}

/// The class count (given, or from the first dataset's manifest) and the images a
/// validation pass covers in each dataset whose manifest could be read.
fn data_shape(
    config: &RunConfig,
    source: &str,
    classes: Option<usize>,
) -> Result<(usize, Vec<usize>), TrainError> {
    let manifests: Vec<_> = config
        .data
        .datasets
        .iter()
        .map(|dir| (dir, Manifest::load_dir(dir)))
        .collect();
    let classes = match (classes, manifests.first()) {
        (Some(0), _) => {
            return Err(TrainError::Invalid(
                "--classes 0: give at least 1 detection class".into(),
            ))
        }
        (Some(n), _) => n,
        (None, Some((_, Ok(m)))) => m.classes.len(),
        (None, Some((dir, Err(e)))) => {
            return Err(TrainError::Invalid(format!(
                "{source}: data.datasets: {}: {e}; the warm-up reads only the manifest, for \
                 the class count: give --classes N where the data is not on this machine",
                dir.display()
            )))
        }
        (None, None) => {
            return Err(TrainError::Invalid(format!(
                "{source}: data.datasets is empty: give --classes N"
            )))
        }
    };
    let val_images = manifests
        .iter()
        .filter_map(|(_, m)| m.as_ref().ok())
        .map(|m| {
            let n = m.samples_of(Split::Val);
            match config.validation.max_images {
                0 => n,
                cap => n.min(cap),
            }
        })
        .collect();
    Ok((classes, val_images))
}

/// Synthetic scenes have their own class list: their labels are folded into the run's
/// `classes`, so targets have the run's shapes.
fn fit_classes(batch: &mut Batch, classes: usize) {
    for b in batch.boxes.iter_mut().flatten() {
        b.class %= classes as u16;
    }
}

/// [`warmup`] as the task of [`percept_train::backend::dispatch`].
struct WarmupTask {
    config: RunConfig,
    device_spec: DeviceSpec,
    steps: usize,
    classes: usize,
    micro_batches: Vec<Batch>,
    val_sizes: Vec<usize>,
}

impl BackendTask for WarmupTask {
    type Output = Result<WarmupReport, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let config = &self.config;
        let mut phases = Vec::new();
        let mut counted = gpu_runtime::counts();
        let mut phase = |what: String, start: Instant, phases: &mut Vec<WarmupPhase>| {
            let now = gpu_runtime::counts();
            let kernels = match (&now, &counted) {
                (Some(now), Some(before)) => Some(now.since(before)),
                _ => None,
            };
            tracing::info!(
                "warm-up: {what} took {:.1} s",
                start.elapsed().as_secs_f64()
            );
            phases.push(WarmupPhase {
                what,
                seconds: start.elapsed().as_secs_f64(),
                kernels,
            });
            counted = now;
        };
        let arch = PerceptionNetConfig {
            size: config.model.size,
            num_classes: self.classes,
            tasks: config.model.tasks,
        };
        arch.validate()
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let start = Instant::now();
        let net = arch.init_seeded(config.train.seed, &device);
        let optimizer = RunOptimizer::new(&net, &config.optimizer)?;
        let mut replica = Replica::<B>::single(net, optimizer, device.clone());
        for step in 1..=self.steps {
            let start = if step == 1 { start } else { Instant::now() };
            let outcome;
            (replica, outcome) = replica.step(
                &self.micro_batches,
                config.train.lr,
                config,
                self.classes,
                false,
            )?;
            if !outcome.check.finite {
                tracing::warn!(
                    "warm-up step {step}: non-finite loss (kernels are compiled all the same)"
                );
            }
            phase(format!("training step {step}"), start, &mut phases);
        }
        let _kernels = use_conv_kernels(config.train.conv);
        let net = replica.net.valid();
        let template = &self.micro_batches[0];
        let tasks = config.model.tasks;
        for &size in &self.val_sizes {
            let start = Instant::now();
            let batch = repeat_images(template, size);
            let decode = config.eval.decode();
            let _ = infer(
                &net,
                &batch,
                &decode,
                (tasks.detection, tasks.drivable, tasks.lanes),
                &device,
            );
            B::sync(&device).map_err(|e| TrainError::Device(format!("syncing: {e}")))?;
            phase(format!("validation batch of {size}"), start, &mut phases);
        }
        gpu_runtime::remember_warmed()?;
        Ok(WarmupReport {
            device: self.device_spec.to_string(),
            backend: B::name(&device),
            conv: conv2d::resolved_name::<B>(config.train.conv),
            classes: self.classes,
            cache: gpu_runtime::cache().map(|c| format!("{} ({})", c.dir.display(), c.source)),
            phases,
        })
    }
}

/// A batch of `size` images cut from (or cycling through) `template`'s images.
fn repeat_images(template: &Batch, size: usize) -> Batch {
    let pick: Vec<usize> = (0..size).map(|i| i % template.batch_size).collect();
    let plane = template.height * template.width;
    let gather = |values: &[f32], per_image: usize| -> Vec<f32> {
        pick.iter()
            .flat_map(|&i| values[i * per_image..(i + 1) * per_image].iter().copied())
            .collect()
    };
    Batch {
        images: gather(&template.images, 3 * plane),
        drivable: gather(&template.drivable, plane),
        lanes: gather(&template.lanes, plane),
        boxes: pick.iter().map(|&i| template.boxes[i].clone()).collect(),
        ignore: pick.iter().map(|&i| template.ignore[i].clone()).collect(),
        tasks: pick.iter().map(|&i| template.tasks[i]).collect(),
        traffic_sides: pick.iter().map(|&i| template.traffic_sides[i]).collect(),
        batch_size: size,
        height: template.height,
        width: template.width,
    }
}
