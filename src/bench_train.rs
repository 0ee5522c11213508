//! `percept bench train`: speed and memory of the training step.
//!
//! The step is the trainer's own code, not a copy: [`Replica::step_observed`] runs
//! [`percept_train::step`] (forward + multi-task loss, backward, the finiteness check and
//! global-norm clip, the update per parameter group, batch-norm statistics restored after a
//! non-finite step), with a hook at its phase boundaries for the breakdown; with the run-config
//! defaults (plus `grad_clip = 10`, as the shipped
//! configs set it). On a synthetic dataset written to a scratch directory it measures:
//!
//! - the first step alone (on a GPU it includes kernel compilation and autotuning);
//! - (a) after warm-up, the step on one pre-built batch, data loading excluded: images/s, mean
//!   and median step time; then as many steps again with the device synced between phases,
//!   for a breakdown forward + loss / backward / optimizer (the syncs forbid overlap between
//!   phases, so the breakdown slightly understates it);
//! - (b) the step fed by the real pipeline ([`BatchBuilder`] on worker threads behind a
//!   [`BatchLoader`], the default augmentation), data loading included: images/s and the share
//!   of the time the step waited for data;
//! - memory: the process's peak resident set during (a) and (b) (Linux; the high-water mark is
//!   reset just before), and on wgpu the allocator's device memory.
//!
//! The device is synced (`B::sync`) at the boundaries of every timed region.

use percept_data::process_memory::{reset_peak_rss, status_mib};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use indicatif::{ProgressBar, ProgressStyle};
use percept_data::Batch;
use percept_model::conv2d;
use percept_model::{
    check_input_size, ConvKernels, ModelSize, PerceptionNet, PerceptionNetConfig, Precision,
};
use percept_synth::{write_synthetic_dataset, SynthOptions};
use serde::Serialize;

use crate::bench::Scratch;
use percept_train::backend::{dispatch, BackendTask, DeviceSpec};
use percept_train::cluster::Cluster;
use percept_train::config::RunConfig;
use percept_train::data::TrainingData;
use percept_train::data_parallel::Replica;
use percept_train::gpu_runtime::{self, KernelCounts};
use percept_train::loader::{BatchBuilder, BatchLoader, LoaderOptions};
use percept_train::optim::RunOptimizer;
use percept_train::step::{Phase, PhaseHook};
use percept_train::TrainError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    pub size: ModelSize,
    pub device: DeviceSpec,
    /// Images per step.
    pub batch_size: usize,
    /// Network input size (multiples of 32).
    pub width: u32,
    pub height: u32,
    /// Size of the stored synthetic frames, which (b) decodes and letterboxes.
    pub source_width: u32,
    pub source_height: u32,
    /// Timed steps of each measurement.
    pub steps: usize,
    /// Untimed steps before (a) (after the first step) and before (b).
    pub warmup: usize,
    /// Detection classes of the network.
    pub classes: usize,
    /// Arithmetic of the convolutions (`train.precision`).
    pub precision: Precision,
    /// Kernels of the convolutions (`train.conv`).
    pub conv: ConvKernels,
    /// Size of the rayon pool the benchmark runs in: the CPU backend (burn Flex) runs its
    /// convolutions, matmuls and reductions on the current rayon pool, so this is its compute
    /// threads; it also sets the data workers of (b). `None`: rayon's global pool and one data
    /// worker per core. GPU backends compute on the device whatever it is.
    pub threads: Option<usize>,
    /// Parent of the scratch dataset directory (removed afterwards).
    pub scratch: PathBuf,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Under mpirun/srun: this rank's place; each step all-reduces its gradients with the
    /// other ranks' (the `reduce` phase), each rank on `batch_size` images of its own.
    pub cluster: Option<Cluster>,
}

impl TrainBenchOptions {
    /// The CLI's defaults: 320x192 input and frames, 20 steps after 3 warm-up, 10 classes.
    pub fn new(size: ModelSize, device: DeviceSpec, batch_size: usize) -> Self {
        TrainBenchOptions {
            size,
            device,
            batch_size,
            width: 320,
            height: 192,
            source_width: 320,
            source_height: 192,
            steps: 20,
            warmup: 3,
            classes: 10,
            precision: Precision::F32,
            conv: ConvKernels::Auto,
            threads: None,
            scratch: std::env::temp_dir(),
            progress: false,
            cluster: None,
        }
    }

    /// Checks the options; each message names the flag and what would be valid.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.batch_size == 0 {
            return bad("--batch 0: give at least 1 image per step".into());
        }
        if self.steps == 0 {
            return bad("--steps 0: give at least 1 timed step".into());
        }
        if self.classes == 0 {
            return bad("--classes 0: give at least 1 detection class".into());
        }
        if self.threads == Some(0) {
            return bad(
                "--threads 0: give at least 1 thread, or leave it out for one per core".into(),
            );
        }
        if self.precision == Precision::Bf16 && self.device == DeviceSpec::Wgpu {
            return bad(
                "--precision bf16: wgpu has no bfloat16; use it with --device cuda:N".into(),
            );
        }
        if let Err(e) = check_input_size(self.height as usize, self.width as usize) {
            return bad(format!(
                "--width {} --height {}: {e}",
                self.width, self.height
            ));
        }
        let side = 64..=4096;
        if !side.contains(&self.source_width) || !side.contains(&self.source_height) {
            return bad(format!(
                "--source {}x{}: synthetic frames are 64 to 4096 pixels a side",
                self.source_width, self.source_height
            ));
        }
        Ok(())
    }
}

/// Step times on the pre-built batch (a), device synced between steps only.
#[derive(Debug, Clone, Serialize)]
pub struct FixedBatchTiming {
    pub images_per_second: f64,
    pub mean_step_ms: f64,
    pub median_step_ms: f64,
    pub min_step_ms: f64,
    pub max_step_ms: f64,
    /// Every timed step, in order.
    pub step_ms: Vec<f64>,
}

/// Mean time of each phase over `steps` further steps on the pre-built batch, the device
/// synced after every phase (so no phase overlaps the next: slightly less overlap than a real
/// step has).
#[derive(Debug, Clone, Serialize)]
pub struct StepBreakdown {
    /// Forward pass, target assignment and the multi-task loss.
    pub forward_loss_ms: f64,
    /// Backward pass and the gradients' collection.
    pub backward_ms: f64,
    /// The gradients' average over the ranks (under mpirun; 0 alone): the all-reduce and the
    /// flattening around it.
    pub reduce_ms: f64,
    /// The gradients' global norm and the loss values read to the host, and the clip.
    pub clip_check_ms: f64,
    /// AdamW's update of every parameter group.
    pub update_ms: f64,
    /// `clip_check_ms + update_ms`.
    pub optimizer_ms: f64,
    /// Mean synced step: the sum of the phases.
    pub step_ms: f64,
}

/// The step fed by the real input pipeline (b).
#[derive(Debug, Clone, Serialize)]
pub struct WithDataTiming {
    pub images_per_second: f64,
    pub mean_step_ms: f64,
    /// Share of the timed region the step spent waiting for a batch.
    pub data_wait_fraction: f64,
    /// Decode/augment threads.
    pub workers: usize,
    /// Batches the loader keeps ready (`data.prefetch_batches`); the queue may be full when
    /// timing starts, which flatters (b) over few steps when the loader is the bottleneck.
    pub prefetch_batches: usize,
    /// Frames in the synthetic dataset (the sampler cycles through them).
    pub frames: usize,
}

/// Memory in MiB; `None` where it could not be measured.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Resident set before the network was built (Linux).
    pub rss_start_mib: Option<f64>,
    /// Resident set right before (a)'s timed steps: weights, optimiser state, the batch and
    /// whatever the allocator kept from the warm-up.
    pub rss_before_mib: Option<f64>,
    /// Peak resident set during (a)'s timed steps.
    pub peak_rss_mib: Option<f64>,
    /// The same around (b)'s timed steps (the loader's threads and queue included).
    pub rss_before_with_data_mib: Option<f64>,
    pub peak_rss_with_data_mib: Option<f64>,
    /// Device memory the allocator had in use, the most seen at the breakdown's phase
    /// boundaries (the peak inside a phase may be higher).
    pub device_in_use_mib: Option<f64>,
    /// Device memory the allocator had reserved (its pools), the most seen.
    pub device_reserved_mib: Option<f64>,
    /// How device memory was measured, or why it was not.
    pub device_note: String,
}

/// Kernel compilation and autotuning, counted from cubecl's logs.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// From before the network is built to the end of the first step.
    pub first_step: KernelCounts,
    /// Over every later step on the pre-built batch (warm-up, (a) and its breakdown): a warm
    /// state compiles nothing here.
    pub steady_state: KernelCounts,
    /// Over (b), the real pipeline's batches.
    pub with_data: KernelCounts,
    /// The folder of compiled kernels and autotune results, and why it is that one.
    pub cache: String,
}

/// What [`bench_train`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchReport {
    pub model: String,
    pub parameters: usize,
    /// Forward-pass GFLOPs of one image (convolutions).
    pub forward_gflops_per_image: f64,
    pub device: String,
    pub backend: String,
    /// Arithmetic of the convolutions.
    pub precision: String,
    /// Kernels of the convolutions (`auto` resolved: `cpu-gemm`, `im2col` or `burn`).
    pub conv: String,
    /// Threads of the rayon pool the benchmark ran in (the CPU backend's compute threads).
    pub threads: usize,
    pub batch_size: usize,
    pub input: String,
    pub source: String,
    pub classes: usize,
    pub warmup_steps: usize,
    pub steps: usize,
    /// Under mpirun: the ranks each step's gradients were averaged over, and the engine.
    pub ranks: Option<usize>,
    pub engine: Option<String>,
    /// The very first step, alone (kernel compilation and autotuning on a GPU; first-touch
    /// allocations everywhere).
    pub first_step_ms: f64,
    /// What cubecl compiled and tuned (GPU backends); `None` on the CPU or where cubecl was
    /// configured before percept could count.
    pub kernels: Option<KernelReport>,
    /// (a) data loading excluded.
    pub fixed_batch: FixedBatchTiming,
    /// (a)'s breakdown by phase.
    pub breakdown: StepBreakdown,
    /// (b) data loading included.
    pub with_data: WithDataTiming,
    pub memory: MemoryReport,
}

impl TrainBenchReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let a = &self.fixed_batch;
        let b = &self.breakdown;
        let d = &self.with_data;
        let m = &self.memory;
        let share = |ms: f64| 100.0 * ms / b.step_ms.max(1e-9);
        let mib = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} MiB"));
        let mut out = format!(
            "train step: {} ({:.2} M parameters, {:.2} GFLOPs/image forward), {} classes, \
             batch {}{} at {}\n\
             device {} ({}), {} {} convolutions, {} thread(s); {} timed steps after {} warm-up\n\
             first step (kernel compilation/autotune on GPU): {:.1} ms\n",
            self.model,
            self.parameters as f64 / 1e6,
            self.forward_gflops_per_image,
            self.classes,
            self.batch_size,
            match self.ranks {
                Some(ranks) => format!(" on each of {ranks} ranks (images/s below: all ranks)"),
                None => String::new(),
            },
            self.input,
            self.device,
            self.backend,
            self.precision,
            self.conv,
            self.threads,
            self.steps,
            self.warmup_steps,
            self.first_step_ms,
        );
        match &self.kernels {
            Some(k) => {
                let line = |c: &KernelCounts| {
                    format!(
                        "{} kernels compiled ({} not warmed up), {} autotune keys tuned ({} \
                         candidates timed)",
                        c.compiled,
                        c.not_warmed.unwrap_or(c.compiled),
                        c.keys_tuned,
                        c.candidates_timed
                    )
                };
                out.push_str(&format!(
                    "kernels, first step: {}\n\
                     \x20        later steps: {}\n\
                     \x20        with data: {}\n\
                     \x20        cache: {}\n\n",
                    line(&k.first_step),
                    line(&k.steady_state),
                    line(&k.with_data),
                    k.cache
                ));
            }
            None => out.push('\n'),
        }
        out.push_str(&format!(
            "(a) data loading excluded (one pre-built batch)\n\
             \x20   {:>8.2} images/s   step mean {:.1} ms, median {:.1} ms (min {:.1}, max {:.1})\n\
             \x20   breakdown, device synced after each phase (slightly understates overlap):\n\
             \x20     forward + loss  {:>9.1} ms  {:>5.1}%\n\
             \x20     backward        {:>9.1} ms  {:>5.1}%\n\
             {}\
             \x20     optimizer       {:>9.1} ms  {:>5.1}%  (global-norm check + clip {:.1}, \
             AdamW update {:.1})\n\
             \x20     synced step     {:>9.1} ms\n\n",
            a.images_per_second,
            a.mean_step_ms,
            a.median_step_ms,
            a.min_step_ms,
            a.max_step_ms,
            b.forward_loss_ms,
            share(b.forward_loss_ms),
            b.backward_ms,
            share(b.backward_ms),
            match self.ranks {
                Some(ranks) => format!(
                    "      all-reduce      {:>9.1} ms  {:>5.1}%  (mean over {ranks} ranks, {})\n",
                    b.reduce_ms,
                    share(b.reduce_ms),
                    self.engine.as_deref().unwrap_or("?")
                ),
                None => String::new(),
            },
            b.optimizer_ms,
            share(b.optimizer_ms),
            b.clip_check_ms,
            b.update_ms,
            b.step_ms,
        ));
        out.push_str(&format!(
            "(b) data loading included ({} synthetic {} frames, {} workers, {} batches \
             prefetched)\n\
             \x20   {:>8.2} images/s   step mean {:.1} ms, waiting for data {:.1}% of the time\n\n",
            d.frames,
            self.source,
            d.workers,
            d.prefetch_batches,
            d.images_per_second,
            d.mean_step_ms,
            100.0 * d.data_wait_fraction,
        ));
        out.push_str(&format!(
            "memory: host RSS {} at start, {} before (a), peak {} during (a); {} before (b), \
             peak {} during (b)\n",
            mib(m.rss_start_mib),
            mib(m.rss_before_mib),
            mib(m.peak_rss_mib),
            mib(m.rss_before_with_data_mib),
            mib(m.peak_rss_with_data_mib),
        ));
        match (m.device_in_use_mib, m.device_reserved_mib) {
            (None, None) => out.push_str(&format!("device memory: {}\n", m.device_note)),
            (in_use, reserved) => out.push_str(&format!(
                "device memory: {} in use at most, {} reserved ({})\n",
                mib(in_use),
                mib(reserved),
                m.device_note
            )),
        }
        out
    }
}

/// Runs the benchmark on `options.device`.
pub fn bench_train(options: &TrainBenchOptions) -> Result<TrainBenchReport, TrainError> {
    options.validate()?;
    dispatch(
        options.device,
        TrainBenchTask {
            options: options.clone(),
        },
    )?
}

/// [`bench_train`] as the task of [`percept_train::backend::dispatch`].
pub struct TrainBenchTask {
    pub options: TrainBenchOptions,
}

impl BackendTask for TrainBenchTask {
    type Output = Result<TrainBenchReport, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let options = self.options;
        options.validate()?;
        match options.threads {
            // The CPU backend parallelises over the current rayon pool: run inside one of the
            // requested size.
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("percept-bench-{i}"))
                .build()
                .map_err(|e| TrainError::Invalid(format!("--threads {n}: {e}")))?
                .install(|| run_bench::<B>(&options, device)),
            None => run_bench::<B>(&options, device),
        }
    }
}

fn sync<B: Backend>(device: &B::Device) -> Result<(), TrainError> {
    B::sync(device).map_err(|e| TrainError::Device(format!("syncing the device: {e}")))
}

/// The run config the step uses: the defaults, with the shipped configs' `grad_clip` and
/// base.toml's learning rate.
fn bench_config(
    options: &TrainBenchOptions,
    data: &Path,
    workers: usize,
) -> Result<RunConfig, TrainError> {
    let dataset = toml::Value::String(data.display().to_string());
    let text = format!(
        "name = \"bench-train\"\n\
         [site]\nregion = \"{REGION}\"\nname = \"bench\"\n\
         [model]\nsize = \"{}\"\ninput = {{ width = {}, height = {} }}\n\
         [data]\ndatasets = [{dataset}]\nworkers = {workers}\n\
         [train]\nsteps = {}\nbatch_size = {}\nseed = 1\nlr = 0.002\nprecision = \"{}\"\n\
         conv = \"{}\"\n\
         [optimizer]\ngrad_clip = 10.0\n",
        options.size.name(),
        options.width,
        options.height,
        1 + 2 * options.warmup + 3 * options.steps,
        options.batch_size,
        options.precision,
        options.conv,
    );
    RunConfig::parse(&text, Path::new("<percept bench train>"))
}

const REGION: &str = "DE";

/// One step of the trainer's own code ([`Replica::step_observed`]), `hook` called at its phase
/// boundaries. A non-finite step is an error: the trainer would skip its update, and timing a
/// skipped update would time a different step.
fn bench_step<B>(
    replica: Replica<B>,
    batch: &Batch,
    config: &RunConfig,
    classes: usize,
    hook: &mut dyn PhaseHook,
) -> Result<Replica<B>, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let micro = std::slice::from_ref(batch);
    let (replica, outcome) =
        replica.step_observed(micro, config.train.lr, config, classes, false, hook)?;
    if !outcome.check.finite {
        return Err(TrainError::Data(format!(
            "the benchmark step's loss ({}) or gradient norm ({}) is not finite",
            outcome.values.first().copied().unwrap_or(f32::NAN),
            outcome.check.norm
        )));
    }
    Ok(replica)
}

/// The benchmark's scratch dataset, config and pre-built batch.
struct BenchData {
    /// Holds the scratch directory until the benchmark ends.
    _scratch: Scratch,
    data: Arc<TrainingData>,
    config: RunConfig,
    loader_options: LoaderOptions,
    fixed: Batch,
    frames: usize,
    workers: usize,
}

impl BenchData {
    /// Writes the synthetic frames and builds (a)'s batch: the pipeline's first, built once.
    fn prepare(o: &TrainBenchOptions) -> Result<BenchData, TrainError> {
        let workers = o.threads.unwrap_or(0);
        let scratch = Scratch::new(&o.scratch, "bench-train")?;
        let dir = scratch.0.clone();
        // Enough frames that (b) decodes a fair mix; the sampler cycles through them.
        let frames = (o.batch_size * (o.warmup + o.steps)).clamp(16, 256);
        tracing::info!(
            "writing {frames} synthetic {}x{} frames to {}",
            o.source_width,
            o.source_height,
            dir.display()
        );
        write_synthetic_dataset(
            &dir,
            &SynthOptions {
                name: "bench".into(),
                region: REGION.into(),
                width: o.source_width,
                height: o.source_height,
                train: frames,
                val: 0,
                seed: 1,
                samples_per_shard: 64,
            },
            &|_| {},
        )?;
        let data = scratch.open(REGION)?;
        let config = bench_config(o, &dir, workers)?;
        let loader_options = LoaderOptions {
            batch_size: o.batch_size,
            width: o.width,
            height: o.height,
            augment: config.data.augment.clone(),
            prefetch_batches: config.data.prefetch_batches,
            workers,
        };
        let fixed =
            BatchBuilder::new(data.clone(), data.sampler(&config)?, loader_options.clone())?
                .next_batch()?
                .batch;
        Ok(BenchData {
            _scratch: scratch,
            data,
            config,
            loader_options,
            fixed,
            frames,
            workers,
        })
    }
}

/// The benchmark in progress: the trainer's replica and what it has measured so far.
struct Bench<'a, B: AutodiffBackend> {
    o: &'a TrainBenchOptions,
    d: &'a BenchData,
    device: B::Device,
    /// `None` only inside a step.
    replica: Option<Replica<B>>,
    bar: ProgressBar,
    memory_probe: DeviceMemoryProbe,
    device_memory: DeviceMemoryPeak,
}

impl<B> Bench<'_, B>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    fn step(&mut self, batch: &Batch, hook: &mut dyn PhaseHook) -> Result<(), TrainError> {
        let replica = self.replica.take().expect("a replica outside a step");
        self.replica = Some(bench_step(
            replica,
            batch,
            &self.d.config,
            self.o.classes,
            hook,
        )?);
        self.bar.inc(1);
        Ok(())
    }

    /// (c) The first step, alone: milliseconds.
    fn first_step(&mut self) -> Result<f64, TrainError> {
        self.bar.set_message("first step");
        sync::<B>(&self.device)?;
        let start = Instant::now();
        self.step(&self.d.fixed, &mut ())?;
        sync::<B>(&self.device)?;
        Ok(ms(start.elapsed()))
    }

    /// (a) Warm-up, then each step on the pre-built batch timed: step milliseconds, and the
    /// resident memory before and at peak.
    #[allow(clippy::type_complexity)]
    fn fixed_batch(&mut self) -> Result<(Vec<f64>, Option<f64>, Option<f64>), TrainError> {
        self.bar.set_message("warm-up");
        for _ in 0..self.o.warmup {
            self.step(&self.d.fixed, &mut ())?;
        }
        self.bar.set_message("(a) data loading excluded");
        sync::<B>(&self.device)?;
        let rss_before = reset_peak_rss().then(|| status_mib("VmRSS")).flatten();
        let mut step_ms = Vec::with_capacity(self.o.steps);
        for _ in 0..self.o.steps {
            let start = Instant::now();
            self.step(&self.d.fixed, &mut ())?;
            sync::<B>(&self.device)?;
            step_ms.push(ms(start.elapsed()));
        }
        let peak_rss = rss_before.and(status_mib("VmHWM"));
        self.device_memory.sample(&self.memory_probe);
        Ok((step_ms, rss_before, peak_rss))
    }

    /// (a) Steps synced at every phase boundary of the trainer's step: mean milliseconds per
    /// [`Phase`].
    fn phase_breakdown(&mut self) -> Result<[f64; 5], TrainError> {
        self.bar.set_message("(a) breakdown by phase");
        let mut phases = [0.0f64; 5];
        for _ in 0..self.o.steps {
            let (device, probe) = (self.device.clone(), &self.memory_probe);
            let memory = &mut self.device_memory;
            let mut last = Instant::now();
            let mut at_boundary = |phase: Phase| {
                sync::<B>(&device)?;
                let now = Instant::now();
                phases[phase.index()] += ms(now - last);
                // Sampled after the sync, so the probe's own work is not timed.
                memory.sample(probe);
                last = Instant::now();
                Ok(())
            };
            let replica = self.replica.take().expect("a replica outside a step");
            let stepped = bench_step(
                replica,
                &self.d.fixed,
                &self.d.config,
                self.o.classes,
                &mut at_boundary,
            );
            self.replica = Some(stepped?);
            self.bar.inc(1);
        }
        Ok(phases.map(|p| p / self.o.steps as f64))
    }

    /// (b) The real pipeline feeding the step: seconds, seconds waited, memory before and at
    /// peak.
    #[allow(clippy::type_complexity)]
    fn with_data(&mut self) -> Result<(f64, Duration, Option<f64>, Option<f64>), TrainError> {
        self.bar.set_message("(b) data loading included");
        let d = self.d;
        let builder = BatchBuilder::new(
            d.data.clone(),
            d.data.sampler(&d.config)?,
            d.loader_options.clone(),
        )?;
        let loader = BatchLoader::spawn(builder, self.o.warmup + self.o.steps);
        for _ in 0..self.o.warmup {
            let loaded = loader.next()?;
            self.step(&loaded.batch, &mut ())?;
        }
        sync::<B>(&self.device)?;
        let rss_before = reset_peak_rss().then(|| status_mib("VmRSS")).flatten();
        let mut waited = Duration::ZERO;
        let start = Instant::now();
        for _ in 0..self.o.steps {
            let wait = Instant::now();
            let loaded = loader.next()?;
            waited += wait.elapsed();
            self.step(&loaded.batch, &mut ())?;
        }
        sync::<B>(&self.device)?;
        let seconds = start.elapsed().as_secs_f64();
        let peak_rss = rss_before.and(status_mib("VmHWM"));
        self.device_memory.sample(&self.memory_probe);
        Ok((seconds, waited, rss_before, peak_rss))
    }
}

/// What the first step, the steady state and the pipeline compiled and tuned (GPU only).
fn kernel_report(
    at_start: Option<KernelCounts>,
    after_first: Option<KernelCounts>,
    after_fixed: Option<KernelCounts>,
) -> Option<KernelReport> {
    match (
        at_start,
        after_first,
        after_fixed,
        gpu_runtime::counts(),
        gpu_runtime::cache(),
    ) {
        (Some(start), Some(first), Some(fixed), Some(end), Some(cache)) => Some(KernelReport {
            first_step: first.since(&start),
            steady_state: fixed.since(&first),
            with_data: end.since(&fixed),
            cache: format!("{} ({})", cache.dir.display(), cache.source),
        }),
        _ => None,
    }
}

/// Throughput and the distribution of the fixed-batch step times.
fn fixed_timing(step_ms: Vec<f64>, images: f64) -> FixedBatchTiming {
    let total_ms: f64 = step_ms.iter().sum();
    let mut sorted = step_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    FixedBatchTiming {
        images_per_second: images / (total_ms / 1e3).max(1e-12),
        mean_step_ms: total_ms / step_ms.len() as f64,
        median_step_ms: median,
        min_step_ms: sorted[0],
        max_step_ms: sorted[sorted.len() - 1],
        step_ms,
    }
}

fn run_bench<B>(
    options: &TrainBenchOptions,
    device: B::Device,
) -> Result<TrainBenchReport, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: VisionBackend,
{
    let o = options;
    let rss_start = status_mib("VmRSS");
    let threads = rayon::current_num_threads();
    let d = BenchData::prepare(o)?;
    let arch = PerceptionNetConfig::new(o.size, o.classes);
    arch.validate()
        .map_err(|e| TrainError::Invalid(format!("--classes {}: {e}", o.classes)))?;
    let kernels_at_start = gpu_runtime::counts();
    let net: PerceptionNet<B> = arch.init_seeded(1, &device);
    let parameters = net.num_params();
    let optimizer = RunOptimizer::new(&net, &d.config.optimizer)?;
    tracing::info!(
        "{} on {} ({}): {:.2} M parameters, batch {} at {}x{}",
        o.size.name(),
        o.device,
        B::name(&device),
        parameters as f64 / 1e6,
        o.batch_size,
        o.width,
        o.height
    );
    let mut bench = Bench::<B> {
        o,
        d: &d,
        replica: Some(match &o.cluster {
            Some(c) => Replica::single(net, optimizer, device.clone()).in_cluster(c.clone()),
            None => Replica::single(net, optimizer, device.clone()),
        }),
        memory_probe: DeviceMemoryProbe::new(o.device, &device),
        device,
        bar: progress_bar(o.progress, (1 + 2 * o.warmup + 3 * o.steps) as u64),
        device_memory: DeviceMemoryPeak::default(),
    };
    let first_step_ms = bench.first_step()?;
    let kernels_after_first = gpu_runtime::counts();
    let (step_ms, rss_before, peak_rss) = bench.fixed_batch()?;
    let [forward_loss_ms, backward_ms, reduce_ms, clip_check_ms, update_ms] =
        bench.phase_breakdown()?;
    let kernels_after_fixed = gpu_runtime::counts();
    let (with_data_seconds, waited, rss_before_with_data, peak_rss_with_data) =
        bench.with_data()?;
    bench.replica = None;
    bench.bar.finish_and_clear();
    // Under mpirun every rank steps on its own batch: the job's throughput counts them all.
    let ranks = o.cluster.as_ref().map_or(1, |c| c.size);
    let images = (o.batch_size * ranks * o.steps) as f64;
    let mib = |bytes: Option<u64>| bytes.map(|b| b as f64 / (1024.0 * 1024.0));
    Ok(TrainBenchReport {
        model: o.size.name().into(),
        parameters,
        forward_gflops_per_image: arch.gflops(o.height as usize, o.width as usize),
        device: o.device.to_string(),
        backend: B::name(&bench.device),
        precision: options.precision.to_string(),
        conv: conv2d::resolved_name::<B>(o.conv),
        threads,
        batch_size: o.batch_size,
        input: format!("{}x{}", o.width, o.height),
        source: format!("{}x{}", o.source_width, o.source_height),
        classes: o.classes,
        warmup_steps: o.warmup,
        steps: o.steps,
        ranks: o.cluster.as_ref().map(|c| c.size),
        engine: o.cluster.as_ref().map(|c| c.engine()),
        first_step_ms,
        kernels: kernel_report(kernels_at_start, kernels_after_first, kernels_after_fixed),
        fixed_batch: fixed_timing(step_ms, images),
        breakdown: StepBreakdown {
            forward_loss_ms,
            backward_ms,
            reduce_ms,
            clip_check_ms,
            update_ms,
            optimizer_ms: clip_check_ms + update_ms,
            step_ms: forward_loss_ms + backward_ms + reduce_ms + clip_check_ms + update_ms,
        },
        with_data: WithDataTiming {
            images_per_second: images / with_data_seconds.max(1e-12),
            mean_step_ms: 1e3 * with_data_seconds / o.steps as f64,
            data_wait_fraction: waited.as_secs_f64() / with_data_seconds.max(1e-12),
            workers: if d.workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                d.workers
            },
            prefetch_batches: d.config.data.prefetch_batches,
            frames: d.frames,
        },
        memory: MemoryReport {
            rss_start_mib: rss_start,
            rss_before_mib: rss_before,
            peak_rss_mib: peak_rss,
            rss_before_with_data_mib: rss_before_with_data,
            peak_rss_with_data_mib: peak_rss_with_data,
            device_in_use_mib: mib(bench.device_memory.in_use),
            device_reserved_mib: mib(bench.device_memory.reserved),
            device_note: bench.memory_probe.note,
        },
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A bar over every step of the benchmark, on a terminal only.
fn progress_bar(wanted: bool, steps: u64) -> ProgressBar {
    use std::io::IsTerminal;
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:24} {pos}/{len} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_prefix("bench train");
    bar
}

type MemoryReader = Box<dyn Fn() -> Option<(u64, u64)>>;

/// Reads the device allocator's memory `(bytes in use, bytes reserved)` where burn 0.21 lets
/// percept reach it.
struct DeviceMemoryProbe {
    read: Option<MemoryReader>,
    note: String,
}

impl DeviceMemoryProbe {
    fn new<D: Any>(spec: DeviceSpec, device: &D) -> DeviceMemoryProbe {
        let none = |note: &str| DeviceMemoryProbe {
            read: None,
            note: note.into(),
        };
        match spec {
            DeviceSpec::Cpu => none("not applicable: the CPU backend's memory is the host RSS"),
            DeviceSpec::Wgpu => {
                #[cfg(feature = "wgpu")]
                if let Some(d) =
                    (device as &dyn Any).downcast_ref::<burn::backend::wgpu::WgpuDevice>()
                {
                    let d = d.clone();
                    return DeviceMemoryProbe {
                        read: Some(Box::new(move || wgpu_memory(&d))),
                        note: "cubecl's memory pools on the device, sampled at the \
                               breakdown's phase boundaries"
                            .into(),
                    };
                }
                let _ = device;
                none("not measured: the device is not a wgpu device")
            }
            // burn 0.21 reaches the CUDA client's `memory_usage()` only through the `cubecl`
            // crate (burn's `cubecl` feature), which percept-train does not enable.
            DeviceSpec::Cuda(_) => none(
                "not measured: burn 0.21 exposes the CUDA allocator's usage only through its \
                 `cubecl` feature, which percept-train does not enable",
            ),
        }
    }

    fn read(&self) -> Option<(u64, u64)> {
        self.read.as_ref().and_then(|r| r())
    }
}

/// The device's memory per its (shared, per-device) cubecl client. The fused backend hides
/// its client; a one-element tensor of the plain cube backend on the same device carries it.
/// Call on the thread that trains: cubecl keeps memory per stream, and streams are per thread.
#[cfg(feature = "wgpu")]
fn wgpu_memory(device: &burn::backend::wgpu::WgpuDevice) -> Option<(u64, u64)> {
    use burn::backend::wgpu::{CubeBackend, WgpuRuntime};
    use burn::tensor::TensorPrimitive;
    let probe = Tensor::<CubeBackend<WgpuRuntime, f32, i32, u32>, 1>::empty([1], device);
    match probe.into_primitive() {
        TensorPrimitive::Float(t) => t
            .client
            .memory_usage()
            .ok()
            .map(|u| (u.bytes_in_use, u.bytes_reserved)),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// The most device memory seen.
#[derive(Debug, Default)]
struct DeviceMemoryPeak {
    in_use: Option<u64>,
    reserved: Option<u64>,
}

impl DeviceMemoryPeak {
    fn sample(&mut self, probe: &DeviceMemoryProbe) {
        if let Some((in_use, reserved)) = probe.read() {
            self.in_use = Some(self.in_use.unwrap_or(0).max(in_use));
            self.reserved = Some(self.reserved.unwrap_or(0).max(reserved));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_reports_sane_values_on_cpu() {
        let scratch = tempfile::tempdir().unwrap();
        let options = TrainBenchOptions {
            width: 128,
            height: 64,
            source_width: 128,
            source_height: 64,
            steps: 2,
            warmup: 1,
            threads: Some(1),
            scratch: scratch.path().to_path_buf(),
            ..TrainBenchOptions::new(ModelSize::Nano, DeviceSpec::Cpu, 1)
        };
        let r = bench_train(&options).unwrap();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        assert_eq!(r.steps, 2);
        assert_eq!(r.threads, 1);
        assert_eq!(r.fixed_batch.step_ms.len(), 2);
        assert!(positive(r.first_step_ms));
        assert!(positive(r.fixed_batch.images_per_second));
        assert!(positive(r.with_data.images_per_second));
        let a = &r.fixed_batch;
        assert!(a.min_step_ms <= a.median_step_ms && a.median_step_ms <= a.max_step_ms);
        assert!((0.0..=1.0).contains(&r.with_data.data_wait_fraction));
        let b = &r.breakdown;
        for phase in [
            b.forward_loss_ms,
            b.backward_ms,
            b.reduce_ms,
            b.clip_check_ms,
            b.update_ms,
        ] {
            assert!(phase.is_finite() && phase >= 0.0, "{b:?}");
        }
        let sum = b.forward_loss_ms + b.backward_ms + b.reduce_ms + b.optimizer_ms;
        assert!((sum - b.step_ms).abs() <= 1e-6 * b.step_ms, "{b:?}");
        // The synced steps and the whole steps time the same work on the CPU backend.
        let ratio = b.step_ms / a.mean_step_ms;
        assert!((0.33..=3.0).contains(&ratio), "{b:?} vs {a:?}");
        if cfg!(target_os = "linux") {
            let m = &r.memory;
            assert!(m.peak_rss_mib.unwrap() > 0.0, "{m:?}");
            assert!(m.peak_rss_mib >= m.rss_before_mib, "{m:?}");
            assert!(m.peak_rss_with_data_mib.unwrap() > 0.0, "{m:?}");
        }
        assert!(r.memory.device_in_use_mib.is_none());
        // Both renderings name the measurements.
        assert!(r.table().contains("images/s"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["fixed_batch"]["step_ms"].as_array().unwrap().len(), 2);
        // The scratch dataset is gone.
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }

    #[test]
    fn bad_options_name_the_flag() {
        let base = TrainBenchOptions::new(ModelSize::Nano, DeviceSpec::Cpu, 1);
        let err = |o: TrainBenchOptions| bench_train(&o).unwrap_err().to_string();
        let e = err(TrainBenchOptions {
            batch_size: 0,
            ..base.clone()
        });
        assert!(e.contains("--batch 0"), "{e}");
        let e = err(TrainBenchOptions {
            width: 100,
            ..base.clone()
        });
        assert!(e.contains("--width 100") && e.contains("32"), "{e}");
        let e = err(TrainBenchOptions {
            threads: Some(0),
            ..base.clone()
        });
        assert!(e.contains("--threads 0"), "{e}");
        let e = err(TrainBenchOptions { steps: 0, ..base });
        assert!(e.contains("--steps 0"), "{e}");
    }
}
