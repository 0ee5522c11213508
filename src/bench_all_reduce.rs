//! `percept bench all-reduce`: the gradient all-reduce of a run over several processes, timed
//! on the real path ([`Cluster::mean`]: NCCL on CUDA tensors, MPI on host buffers otherwise)
//! for the flattened gradient of each model size. Run it under the launcher:
//! `mpirun -np 2 percept bench all-reduce`.
//!
//! Before timing, every rank checks one all-reduce's result against the value computed by
//! hand (rank r sends `(r + 1) x (i mod 7)` at position i; the mean is `(i mod 7) x (N + 1) /
//! 2`), so a single rank checks that the all-reduce gives back its input. Bandwidths follow
//! nccl-tests: algorithm bandwidth = bytes / time; bus bandwidth = algorithm bandwidth x
//! 2(N-1)/N, what each rank's link carries under a ring all-reduce.

use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::vision::VisionBackend;
use percept_model::{ModelSize, PerceptionNetConfig};
use serde::Serialize;

use percept_train::backend::{dispatch, BackendTask, DeviceSpec};
use percept_train::cluster::Cluster;
use percept_train::TrainError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct AllReduceBenchOptions {
    pub sizes: Vec<ModelSize>,
    pub device: DeviceSpec,
    /// Timed all-reduces per size.
    pub rounds: usize,
    /// Untimed all-reduces before them.
    pub warmup: usize,
}

/// One model size's gradient all-reduce.
#[derive(Debug, Clone, Serialize)]
pub struct AllReduceTiming {
    pub model: String,
    /// Elements of the flattened gradient (the network's parameters).
    pub elements: usize,
    pub megabytes: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Bytes / median time.
    pub algorithm_gb_per_s: f64,
    /// Algorithm bandwidth x 2(N-1)/N.
    pub bus_gb_per_s: f64,
    /// Bytes each rank sends (and receives) per all-reduce under a ring: 2(N-1)/N x bytes.
    pub ring_megabytes_per_rank: f64,
    /// What the node of a star (the gradient hub percept had before) sent and received per
    /// step: N x bytes each way.
    pub star_megabytes_at_hub: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllReduceReport {
    pub ranks: usize,
    pub hosts: Vec<String>,
    pub engine: String,
    pub device: String,
    pub rounds: usize,
    pub sizes: Vec<AllReduceTiming>,
}

impl AllReduceReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data")
    }

    pub fn table(&self) -> String {
        let mut t = format!(
            "gradient all-reduce: {} ranks ({}), {} on {}, median of {} rounds\n\n\
             | model | elements | MB | median ms | min ms | algbw GB/s | busbw GB/s | ring MB/rank | star MB at hub |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.ranks,
            self.hosts.join(", "),
            self.engine,
            self.device,
            self.rounds
        );
        for s in &self.sizes {
            t += &format!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |\n",
                s.model,
                s.elements,
                s.megabytes,
                s.median_ms,
                s.min_ms,
                s.algorithm_gb_per_s,
                s.bus_gb_per_s,
                s.ring_megabytes_per_rank,
                s.star_megabytes_at_hub
            );
        }
        t
    }
}

/// Runs the benchmark on `options.device` over `cluster`'s ranks.
pub fn bench_all_reduce(
    options: &AllReduceBenchOptions,
    cluster: &Cluster,
) -> Result<AllReduceReport, TrainError> {
    if options.rounds == 0 {
        return Err(TrainError::Invalid(
            "--rounds 0: time at least one all-reduce".into(),
        ));
    }
    if options.sizes.is_empty() {
        return Err(TrainError::Invalid(
            "--models: name at least one of nano, small, medium".into(),
        ));
    }
    dispatch(
        options.device,
        AllReduceTask {
            options: options.clone(),
            cluster: cluster.clone(),
        },
    )?
}

struct AllReduceTask {
    options: AllReduceBenchOptions,
    cluster: Cluster,
}

impl BackendTask for AllReduceTask {
    type Output = Result<AllReduceReport, TrainError>;

    fn run<B>(self, device: B::Device) -> Self::Output
    where
        B: AutodiffBackend,
        B::InnerBackend: VisionBackend,
    {
        let (options, cluster) = (self.options, self.cluster);
        let mut sizes = Vec::new();
        for size in &options.sizes {
            let arch = PerceptionNetConfig {
                size: *size,
                num_classes: 10,
                tasks: Default::default(),
            };
            let elements = arch.init::<B::InnerBackend>(&device).num_params();
            sizes.push(time_size::<B::InnerBackend>(
                *size, elements, &options, &cluster, &device,
            )?);
        }
        Ok(AllReduceReport {
            ranks: cluster.size,
            hosts: cluster.hosts.clone(),
            engine: cluster.engine(),
            device: options.device.to_string(),
            rounds: options.rounds,
            sizes,
        })
    }
}

fn sync<B: Backend>(device: &B::Device) -> Result<(), TrainError> {
    B::sync(device).map_err(|e| TrainError::Device(format!("syncing the device: {e}")))
}

fn time_size<B: Backend>(
    size: ModelSize,
    elements: usize,
    options: &AllReduceBenchOptions,
    cluster: &Cluster,
    device: &B::Device,
) -> Result<AllReduceTiming, TrainError> {
    let ranks = cluster.size;
    let pattern = |i: usize| (i % 7) as f32;
    let mine: Vec<f32> = (0..elements)
        .map(|i| (cluster.rank + 1) as f32 * pattern(i))
        .collect();
    let input = Tensor::<B, 1>::from_data(TensorData::new(mine, [elements]), device);
    // Checked once: the sum over ranks r of (r + 1) x p is p x N(N + 1)/2.
    let mean = cluster
        .mean(input.clone())?
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| TrainError::Device(format!("reading the all-reduce: {e:?}")))?;
    let triangle = (ranks * (ranks + 1) / 2) as f32;
    if let Some((i, got)) = mean.iter().enumerate().find(|(i, got)| {
        let want = pattern(*i) * triangle / ranks as f32;
        (**got - want).abs() > 1e-6 * want.abs().max(1.0)
    }) {
        return Err(TrainError::Device(format!(
            "the all-reduce of {} ({elements} elements) is wrong at element {i}: {got}, \
             expected {}",
            size.name(),
            pattern(i) * triangle / ranks as f32
        )));
    }
    for _ in 0..options.warmup {
        cluster.mean(input.clone())?;
    }
    sync::<B>(device)?;
    let mut ms = Vec::with_capacity(options.rounds);
    for _ in 0..options.rounds {
        // The input copy is made outside the timed region: the step hands over its own.
        let flat = input.clone().add_scalar(0.0);
        sync::<B>(device)?;
        let start = Instant::now();
        let reduced = cluster.mean(flat)?;
        sync::<B>(device)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        drop(reduced);
    }
    ms.sort_by(f64::total_cmp);
    let median_ms = ms[ms.len() / 2];
    let bytes = elements as f64 * 4.0;
    let algorithm = bytes / (median_ms / 1e3) / 1e9;
    let ring = 2.0 * (ranks as f64 - 1.0) / ranks as f64;
    Ok(AllReduceTiming {
        model: size.name().into(),
        elements,
        megabytes: bytes / 1e6,
        median_ms,
        min_ms: ms[0],
        algorithm_gb_per_s: algorithm,
        bus_gb_per_s: algorithm * ring,
        ring_megabytes_per_rank: bytes * ring / 1e6,
        star_megabytes_at_hub: bytes * ranks as f64 / 1e6,
    })
}
