//! Batches for training: the sampler picks slots, worker threads read, verify, decode and
//! augment them, and a loader thread keeps `prefetch_batches` batches ready ahead of the step.
//!
//! Every random choice of a slot (augmentation parameters, mosaic partners) comes from a
//! ChaCha8 RNG seeded by the slot's own seed, so a batch depends only on the sampler state it
//! was drawn from: a run resumed from a saved state sees exactly the batches it would have seen.

use std::collections::{BTreeSet, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use percept_data::{
    augment, collate_augmented, mosaic, AugmentConfig, AugmentParams, Augmented, Batch, DataError,
    IntegrityPolicy, MosaicParams, RegionSampler, Sample, SampleRef, SamplerState,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::TrainingData;
use crate::TrainError;

/// How batches are built.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Network input size.
    pub width: u32,
    pub height: u32,
    pub augment: AugmentConfig,
    /// Batches kept ready ahead of the consumer.
    pub prefetch_batches: usize,
    /// Decode/augment threads; 0: one per core.
    pub workers: usize,
}

/// A sample that failed verification or decoding and was skipped (integrity policy `skip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSample {
    pub dataset: String,
    pub shard: String,
    /// Index within the shard.
    pub index: usize,
    /// `(dataset, index)` of the slot in the training data (what the builder keys known-bad
    /// samples by).
    pub slot: (usize, usize),
    pub reason: String,
}

/// One batch and what it took to build it.
#[derive(Debug, Clone)]
pub struct LoadedBatch {
    pub batch: Batch,
    /// The slots the batch holds, in order.
    pub slots: Vec<SampleRef>,
    /// Samples skipped for the first time while building this batch.
    pub skipped: Vec<SkippedSample>,
    /// The sampler state after this batch: saved with a checkpoint taken after this step.
    pub sampler_state: SamplerState,
}

/// Builds batches in order; owns the sampler and the set of known-bad samples.
///
/// To keep every worker busy when there are more workers than images per batch, it prepares
/// several batches at once, speculatively: their slots are drawn in order, and if a sample of
/// batch `j` fails, batch `j` is finished from the sampler state right after its own draws and
/// the batches after it are dropped and drawn again. So the stream is exactly the one built
/// one batch at a time, whatever the number of workers.
pub struct BatchBuilder {
    data: Arc<TrainingData>,
    sampler: RegionSampler,
    options: LoaderOptions,
    pool: rayon::ThreadPool,
    /// Batches prepared together.
    lookahead: usize,
    ready: VecDeque<LoadedBatch>,
    /// `(dataset, index)` of samples already skipped: reported once, never read again.
    bad: BTreeSet<(usize, usize)>,
}

impl BatchBuilder {
    pub fn new(
        data: Arc<TrainingData>,
        sampler: RegionSampler,
        options: LoaderOptions,
    ) -> Result<BatchBuilder, TrainError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.workers)
            .thread_name(|i| format!("percept-data-{i}"))
            .build()
            .map_err(|e| TrainError::Invalid(format!("data.workers: {e}")))?;
        // Two images per worker in flight balances uneven per-image costs.
        let lookahead = (2 * pool.current_num_threads()).div_ceil(options.batch_size.max(1));
        Ok(BatchBuilder {
            data,
            sampler,
            options,
            pool,
            lookahead: lookahead.max(1),
            ready: VecDeque::new(),
            bad: BTreeSet::new(),
        })
    }

    /// Samples already known to be bad (from a checkpoint's run state): never drawn.
    pub fn with_known_bad(mut self, bad: impl IntoIterator<Item = (usize, usize)>) -> Self {
        self.bad.extend(bad);
        self
    }

    /// Draws, reads and augments the next batch. Under integrity `skip`, a failing sample is
    /// recorded and its slot refilled from the sampler; under `fail` the error names it.
    pub fn next_batch(&mut self) -> Result<LoadedBatch, TrainError> {
        if self.ready.is_empty() {
            self.fill()?;
        }
        Ok(self
            .ready
            .pop_front()
            .expect("fill prepares at least one batch"))
    }

    /// The next `n` slots, passing over samples already known to be bad.
    fn draw(&mut self, n: usize) -> Vec<SampleRef> {
        let mut slots = Vec::with_capacity(n);
        while slots.len() < n {
            let r = self.sampler.next();
            if !self.bad.contains(&(r.dataset, r.index)) {
                slots.push(r);
            }
        }
        slots
    }

    /// Reads and augments `slots` on the workers.
    fn prepare_all(&self, slots: &[SampleRef]) -> Vec<Result<Augmented, SlotFailure>> {
        let (data, options) = (&self.data, &self.options);
        self.pool.install(|| {
            slots
                .par_iter()
                .map(|r| prepare(data, r, options))
                .collect()
        })
    }

    /// Prepares the next `lookahead` batches into `ready` (see the type's docs).
    fn fill(&mut self) -> Result<(), TrainError> {
        let n = self.options.batch_size;
        let mut drawn = Vec::with_capacity(self.lookahead);
        let mut states = Vec::with_capacity(self.lookahead);
        // The sampler right after each batch's draws, to rewind to (not needed after the last).
        let mut after = Vec::with_capacity(self.lookahead);
        for j in 0..self.lookahead {
            drawn.push(self.draw(n));
            states.push(self.sampler.state());
            if j + 1 < self.lookahead {
                after.push(self.sampler.clone());
            }
        }
        let flat: Vec<SampleRef> = drawn.concat();
        let mut results = self.prepare_all(&flat).into_iter();
        let mut good: Vec<(Vec<SampleRef>, Vec<Augmented>)> = Vec::new();
        for (j, slots) in drawn.into_iter().enumerate() {
            let outcome: Vec<_> = results.by_ref().take(slots.len()).collect();
            if outcome.iter().all(Result::is_ok) {
                good.push((slots, outcome.into_iter().flatten().collect()));
                continue;
            }
            // Batch j met a bad sample: rewind to right after its draws and finish it alone.
            if j < after.len() {
                self.sampler = after.swap_remove(j);
            }
            self.collate_into_ready(good, states);
            let batch = self.finish_batch(slots, outcome)?;
            self.ready.push_back(batch);
            return Ok(());
        }
        self.collate_into_ready(good, states);
        Ok(())
    }

    /// Collates complete batches (in parallel) into `ready`, each with the sampler state
    /// after its draws.
    fn collate_into_ready(
        &mut self,
        good: Vec<(Vec<SampleRef>, Vec<Augmented>)>,
        states: Vec<SamplerState>,
    ) {
        let batches: Vec<Batch> = self.pool.install(|| {
            good.par_iter()
                .map(|(_, items)| collate_augmented(items))
                .collect()
        });
        for (((slots, _), mut batch), state) in good.into_iter().zip(batches).zip(states) {
            self.label_tasks(&mut batch, &slots);
            self.ready.push_back(LoadedBatch {
                batch,
                slots,
                skipped: Vec::new(),
                sampler_state: state,
            });
        }
    }

    /// Finishes a batch whose first draw held failures: records them (or stops, under
    /// `fail`) and refills the failed slots from the sampler one round at a time.
    fn finish_batch(
        &mut self,
        drawn: Vec<SampleRef>,
        outcome: Vec<Result<Augmented, SlotFailure>>,
    ) -> Result<LoadedBatch, TrainError> {
        let n = self.options.batch_size;
        let mut slots: Vec<SampleRef> = Vec::with_capacity(n);
        let mut items: Vec<Augmented> = Vec::with_capacity(n);
        let mut skipped = Vec::new();
        let mut round: Vec<(SampleRef, Result<Augmented, SlotFailure>)> =
            drawn.into_iter().zip(outcome).collect();
        loop {
            for (r, result) in round {
                match result {
                    Ok(item) => {
                        slots.push(r);
                        items.push(item);
                    }
                    Err(failure) => {
                        let (failed, error) = *failure;
                        if self.data.integrity() == IntegrityPolicy::Fail {
                            return Err(TrainError::Dataset(error));
                        }
                        if self.bad.insert((failed.dataset, failed.index)) {
                            skipped.push(self.describe(&failed, &error));
                        }
                        if self.bad.len() >= self.data.len() {
                            return Err(TrainError::Data(format!(
                                "every one of the {} training samples failed verification or \
                                 decoding; the last: {error}",
                                self.data.len()
                            )));
                        }
                    }
                }
            }
            if items.len() == n {
                break;
            }
            let fresh = self.draw(n - items.len());
            let results = self.prepare_all(&fresh);
            round = fresh.into_iter().zip(results).collect();
        }
        let mut batch = self.pool.install(|| collate_augmented(&items));
        self.label_tasks(&mut batch, &slots);
        Ok(LoadedBatch {
            batch,
            slots,
            skipped,
            sampler_state: self.sampler.state(),
        })
    }

    /// Marks each image of `batch` with the tasks its dataset labels.
    fn label_tasks(&self, batch: &mut Batch, slots: &[SampleRef]) {
        batch.tasks = slots
            .iter()
            .map(|r| self.data.dataset(r.dataset).manifest().tasks)
            .collect();
    }

    fn describe(&self, r: &SampleRef, error: &DataError) -> SkippedSample {
        let ds = self.data.dataset(r.dataset);
        let (shard, index) = match (ds.shard_file(r.index), ds.locate(r.index)) {
            (Ok(file), Ok((_, local))) => (file.to_string(), local),
            _ => (String::new(), r.index),
        };
        SkippedSample {
            dataset: ds.manifest().name.clone(),
            shard,
            index,
            slot: (r.dataset, r.index),
            reason: error.to_string(),
        }
    }
}

/// A slot whose sample (or one of its mosaic partners) failed: which sample, and why.
type SlotFailure = Box<(SampleRef, DataError)>;

/// Reads and augments one slot: its RNG decides the augmentation and, with probability
/// `mosaic_probability`, three mosaic partners from the same dataset (same region, so the
/// same traffic side).
fn prepare(
    data: &TrainingData,
    r: &SampleRef,
    options: &LoaderOptions,
) -> Result<Augmented, SlotFailure> {
    let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
    let sample = data.get(r).map_err(|e| Box::new((*r, e)))?;
    let (w, h) = (options.width, options.height);
    let cfg = &options.augment;
    if cfg.mosaic_probability > 0.0 && rng.random::<f32>() < cfg.mosaic_probability {
        let len = data.dataset(r.dataset).len();
        let partners: Vec<SampleRef> = (0..3)
            .map(|_| SampleRef {
                index: rng.random_range(0..len),
                ..*r
            })
            .collect();
        let tiles: Vec<Sample> = partners
            .iter()
            .map(|p| data.get(p).map_err(|e| Box::new((*p, e))))
            .collect::<Result<_, _>>()?;
        let params = MosaicParams::draw(cfg, &mut rng);
        let all = [&sample, &tiles[0], &tiles[1], &tiles[2]];
        if let Ok(item) = mosaic(all, &params, w, h) {
            return Ok(item);
        }
    }
    let params = AugmentParams::draw(cfg, &mut rng);
    Ok(augment(&sample, &params, w, h))
}

/// The loader thread: builds batches ahead of the training loop.
pub struct BatchLoader {
    rx: Receiver<Result<LoadedBatch, TrainError>>,
    _thread: JoinHandle<()>,
}

impl BatchLoader {
    /// Starts building `batches` batches (the run's remaining steps) on a background thread.
    pub fn spawn(mut builder: BatchBuilder, batches: usize) -> BatchLoader {
        let (tx, rx) = sync_channel(builder.options.prefetch_batches.max(1));
        let thread = std::thread::Builder::new()
            .name("percept-loader".into())
            .spawn(move || {
                for _ in 0..batches {
                    let batch = builder.next_batch();
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawn the loader thread");
        BatchLoader {
            rx,
            _thread: thread,
        }
    }

    /// The next batch, waiting for it if the workers are behind.
    pub fn next(&self) -> Result<LoadedBatch, TrainError> {
        self.rx
            .recv()
            .map_err(|_| TrainError::Data("the data loader stopped unexpectedly".into()))?
    }
}
