//! `percept bench data`: throughput of the training input pipeline against JPEG decoding alone.
//!
//! Writes a synthetic dataset of camera-sized frames, then, for each thread count, measures
//! (a) decoding the shards' JPEGs alone and (b) the whole pipeline the trainer runs: sample,
//! read + verify (blake3) + decode JPEG and both PNG masks + augment + letterbox + collate into
//! a normalised batch. Both read the same JPEG bytes from the same shards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use percept_data::{
    AugmentConfig, FlipPolicy, IntegrityPolicy, RegionSampler, SamplerConfig, Site,
};

use percept_synth::{write_synthetic_dataset, SynthOptions};
use rayon::prelude::*;
use serde::Serialize;

use percept_train::data::TrainingData;
use percept_train::loader::{BatchBuilder, LoaderOptions};
use percept_train::TrainError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct DataBenchOptions {
    /// Frames in the benchmark dataset.
    pub frames: usize,
    /// Size of the stored frames.
    pub source_width: u32,
    pub source_height: u32,
    /// Network input size.
    pub width: u32,
    pub height: u32,
    pub batch_size: usize,
    /// Thread counts to measure.
    pub threads: Vec<usize>,
    /// Passes over the frames per measurement.
    pub passes: usize,
    pub mosaic_probability: f32,
    /// Scratch directory for the dataset (removed afterwards).
    pub scratch: PathBuf,
}

/// One thread count's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct DataBenchRow {
    pub threads: usize,
    /// JPEG decoding alone, images/s.
    pub decode_images_per_second: f64,
    /// The whole pipeline, images/s.
    pub pipeline_images_per_second: f64,
    /// decode / pipeline throughput: how much slower the pipeline is than decoding.
    pub slowdown: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataBenchReport {
    pub frames: usize,
    pub source: String,
    pub input: String,
    pub rows: Vec<DataBenchRow>,
}

impl DataBenchReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "data pipeline: {} frames {} -> {} (read + verify + decode + augment + batch)\n\
             threads  decode img/s  (per thread)  pipeline img/s  (per thread)  slowdown\n",
            self.frames, self.source, self.input
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:>7}  {:>12.1}  {:>12.1}  {:>14.1}  {:>12.1}  {:>7.2}x\n",
                r.threads,
                r.decode_images_per_second,
                r.decode_images_per_second / r.threads as f64,
                r.pipeline_images_per_second,
                r.pipeline_images_per_second / r.threads as f64,
                r.slowdown
            ));
        }
        out
    }
}

/// A benchmark's scratch dataset directory, removed however the benchmark ends.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// `parent/percept-<name>-<pid>`, which must not exist yet.
    pub(crate) fn new(parent: &Path, name: &str) -> Result<Scratch, TrainError> {
        let dir = parent.join(format!("percept-{name}-{}", std::process::id()));
        if dir.exists() {
            return Err(TrainError::Invalid(format!(
                "scratch directory {} already exists; remove it or pick another --scratch",
                dir.display()
            )));
        }
        Ok(Scratch(dir))
    }
}

impl Scratch {
    /// The dataset written into the directory, opened as training data of a `region` site.
    pub(crate) fn open(&self, region: &str) -> Result<Arc<TrainingData>, TrainError> {
        let site = Site {
            region: region.into(),
            name: "bench".into(),
        };
        Ok(Arc::new(TrainingData::open_dirs(
            std::slice::from_ref(&self.0),
            &site,
            IntegrityPolicy::Fail,
            false,
            None,
        )?))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark; `progress` receives one line per stage.
pub fn bench_data(
    options: &DataBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<DataBenchReport, TrainError> {
    if options.frames == 0 || options.batch_size == 0 || options.passes == 0 {
        return Err(TrainError::Invalid(
            "--frames, --batch-size and --passes must be at least 1".into(),
        ));
    }
    if let Some(&t) = options.threads.iter().find(|&&t| t == 0) {
        return Err(TrainError::Invalid(format!(
            "--threads {t}: give thread counts of at least 1"
        )));
    }
    let scratch = Scratch::new(&options.scratch, "bench-data")?;
    let dir = scratch.0.clone();
    progress(&format!(
        "writing {} synthetic {}x{} frames to {}",
        options.frames,
        options.source_width,
        options.source_height,
        dir.display()
    ));
    let synth = SynthOptions {
        name: "bench".into(),
        region: "DE".into(),
        width: options.source_width,
        height: options.source_height,
        train: options.frames,
        val: 0,
        seed: 1,
        samples_per_shard: 64,
    };
    write_synthetic_dataset(&dir, &synth, &|_| {})?;
    let data = scratch.open("DE")?;
    let jpegs: Vec<&[u8]> = {
        let ds = data.dataset(0);
        (0..ds.len())
            .map(|i| ds.jpeg_bytes(i))
            .collect::<Result<_, _>>()?
    };
    let images = options.frames * options.passes;
    let mut rows = Vec::new();
    for &threads in &options.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| TrainError::Invalid(format!("--threads {threads}: {e}")))?;
        progress(&format!("{threads} thread(s): JPEG decode alone"));
        let decode_seconds = time_best(|| {
            pool.install(|| {
                (0..options.passes)
                    .flat_map(|_| jpegs.iter())
                    .collect::<Vec<_>>()
                    .par_iter()
                    .try_for_each(|bytes| {
                        image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
                            .map(drop)
                    })
            })
            .map_err(|e| TrainError::Data(format!("decoding a benchmark JPEG: {e}")))
        })?;
        progress(&format!("{threads} thread(s): full pipeline"));
        let pipeline_seconds = time_best(|| {
            let sampler = RegionSampler::new(data.sampler_sources(), SamplerConfig::default())
                .map_err(|e| TrainError::Data(e.to_string()))?;
            let mut builder = BatchBuilder::new(
                data.clone(),
                sampler,
                LoaderOptions {
                    batch_size: options.batch_size,
                    width: options.width,
                    height: options.height,
                    augment: AugmentConfig {
                        flip: FlipPolicy::MirrorTrafficSide,
                        mosaic_probability: options.mosaic_probability,
                        ..AugmentConfig::default()
                    },
                    prefetch_batches: 1,
                    workers: threads,
                },
            )?;
            for _ in 0..images.div_ceil(options.batch_size) {
                builder.next_batch()?;
            }
            Ok(())
        })?;
        let pipeline_images = images.div_ceil(options.batch_size) * options.batch_size;
        let decode_ips = images as f64 / decode_seconds;
        let pipeline_ips = pipeline_images as f64 / pipeline_seconds;
        rows.push(DataBenchRow {
            threads,
            decode_images_per_second: decode_ips,
            pipeline_images_per_second: pipeline_ips,
            slowdown: decode_ips / pipeline_ips,
        });
    }
    Ok(DataBenchReport {
        frames: options.frames,
        source: format!("{}x{}", options.source_width, options.source_height),
        input: format!("{}x{}", options.width, options.height),
        rows,
    })
}

/// Seconds of the faster of two runs of `f` (the first also warms caches and thread pools).
fn time_best(mut f: impl FnMut() -> Result<(), TrainError>) -> Result<f64, TrainError> {
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Default scratch directory: the system temp dir.
pub fn default_scratch() -> PathBuf {
    std::env::temp_dir()
}
