//! Batches for training: the sampler picks slots, worker threads read, verify, decode and
//! augment them, and a loader thread keeps `prefetch_batches` batches ready ahead of the step.
//!
//! Every random choice of a slot (augmentation parameters, mosaic partners, the replacement of
//! a sample that fails) comes from a ChaCha8 RNG seeded by the slot's own seed, so a batch
//! depends only on the sampler state it was drawn from: a run resumed from a saved state sees
//! exactly the batches it would have seen.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
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
/// A slot whose sample (or one of its mosaic partners) fails verification or decoding is
/// filled by a replacement from the same dataset, chosen by the slot's own seed: which sample
/// fills a slot depends only on the data and the slot, never on what this process already
/// knows to be bad (that only saves reading it again) nor on other slots. So the stream does
/// not depend on the number of workers, and a node that reads only its replicas' part of each
/// batch ([`BatchBuilder::reading_only`]) gets exactly what one process reading every part
/// would give those replicas. Several batches are prepared at once, to keep every worker busy
/// when there are more workers than images per batch.
pub struct BatchBuilder {
    data: Arc<TrainingData>,
    sampler: RegionSampler,
    options: LoaderOptions,
    /// The positions of each batch this process reads and returns.
    own: Range<usize>,
    pool: rayon::ThreadPool,
    ready: VecDeque<Result<LoadedBatch, TrainError>>,
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
        Ok(BatchBuilder {
            data,
            sampler,
            own: 0..options.batch_size,
            options,
            pool,
            ready: VecDeque::new(),
            bad: BTreeSet::new(),
        })
    }

    /// Samples already known to be bad (from a checkpoint's run state): never read again.
    pub fn with_known_bad(mut self, bad: impl IntoIterator<Item = (usize, usize)>) -> Self {
        self.bad.extend(bad);
        self
    }

    /// Reads only the images at positions `own` of each batch (a node's replicas' parts of
    /// the global batch); every slot is still drawn, so the sampler state stays the one every
    /// node saves.
    pub fn reading_only(mut self, own: Range<usize>) -> Result<Self, TrainError> {
        if own.is_empty() || own.end > self.options.batch_size {
            return Err(TrainError::Invalid(format!(
                "positions {own:?} are not a part of a batch of {} images",
                self.options.batch_size
            )));
        }
        self.own = own;
        Ok(self)
    }

    /// Draws, reads and augments the next batch. Under integrity `skip`, a failing sample is
    /// recorded and its slot filled by a replacement; under `fail` the error names it.
    pub fn next_batch(&mut self) -> Result<LoadedBatch, TrainError> {
        if self.ready.is_empty() {
            self.fill();
        }
        self.ready
            .pop_front()
            .expect("fill prepares at least one batch")
    }

    /// Prepares the next batches into `ready`: as many as keep two images per worker in
    /// flight, which balances uneven per-image costs.
    fn fill(&mut self) {
        let per_batch = self.own.len();
        let lookahead = (2 * self.pool.current_num_threads())
            .div_ceil(per_batch)
            .max(1);
        // This process's slots of the next `lookahead` batches, back to back.
        let mut flat = Vec::with_capacity(lookahead * per_batch);
        let mut states = Vec::with_capacity(lookahead);
        for _ in 0..lookahead {
            let slots: Vec<SampleRef> = (0..self.options.batch_size)
                .map(|_| self.sampler.next())
                .collect();
            flat.extend_from_slice(&slots[self.own.clone()]);
            states.push(self.sampler.state());
        }
        let (data, options, bad) = (&self.data, &self.options, &self.bad);
        let filled: Vec<Result<FilledSlot, TrainError>> = self.pool.install(|| {
            flat.par_iter()
                .map(|r| fill_slot(data, r, options, bad))
                .collect()
        });
        let mut filled = filled.into_iter();
        let mut complete = Vec::with_capacity(lookahead);
        let mut failed = None;
        'batches: for state in states {
            let mut slots = Vec::with_capacity(per_batch);
            let mut items = Vec::with_capacity(per_batch);
            let mut skipped = Vec::new();
            for slot in filled.by_ref().take(per_batch) {
                let slot = match slot {
                    Ok(slot) => slot,
                    Err(e) => {
                        failed = Some(e);
                        break 'batches;
                    }
                };
                for (r, error) in slot.failures {
                    if self.bad.insert((r.dataset, r.index)) {
                        skipped.push(self.describe(&r, &error));
                    }
                }
                slots.push(slot.slot);
                items.push(slot.item);
            }
            complete.push((slots, items, skipped, state));
        }
        let batches: Vec<Batch> = self.pool.install(|| {
            complete
                .par_iter()
                .map(|(_, items, _, _)| collate_augmented(items))
                .collect()
        });
        for ((slots, _, skipped, state), mut batch) in complete.into_iter().zip(batches) {
            self.label_tasks(&mut batch, &slots);
            self.ready.push_back(Ok(LoadedBatch {
                batch,
                slots,
                skipped,
                sampler_state: state,
            }));
        }
        // The batches before a failure are still delivered; the error comes in their place.
        if let Some(e) = failed {
            self.ready.push_back(Err(e));
        }
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

/// What a slot became: the sample that fills it (the drawn one or its replacement), augmented,
/// and the samples that failed on the way.
struct FilledSlot {
    slot: SampleRef,
    item: Augmented,
    failures: Vec<(SampleRef, DataError)>,
}

/// Fills one slot: its sample, or while that fails (integrity `skip`), replacements from the
/// same dataset drawn by an RNG seeded by the slot. Samples in `bad` are passed over unread;
/// since a sample fails every time it is read, that changes only the work, not the outcome.
fn fill_slot(
    data: &TrainingData,
    r: &SampleRef,
    options: &LoaderOptions,
    bad: &BTreeSet<(usize, usize)>,
) -> Result<FilledSlot, TrainError> {
    let dataset = data.dataset(r.dataset);
    let len = dataset.len();
    let mut failures: Vec<(SampleRef, DataError)> = Vec::new();
    let mut replacements = ChaCha8Rng::seed_from_u64(r.seed);
    // Stream 0 of this seed is the slot's augmentation RNG.
    replacements.set_stream(1);
    let mut candidate = *r;
    loop {
        let known_bad = |s: &SampleRef| {
            bad.contains(&(s.dataset, s.index))
                || failures
                    .iter()
                    .any(|(f, _)| (f.dataset, f.index) == (s.dataset, s.index))
        };
        match prepare(data, &candidate, options, &known_bad) {
            Ok(item) => {
                return Ok(FilledSlot {
                    slot: candidate,
                    item,
                    failures,
                })
            }
            Err(Some(failure)) => {
                let (failed, error) = *failure;
                if data.integrity() == IntegrityPolicy::Fail {
                    return Err(TrainError::Dataset(error));
                }
                failures.push((failed, error));
            }
            Err(None) => {}
        }
        let known = bad.range((r.dataset, 0)..(r.dataset + 1, 0)).count()
            + failures
                .iter()
                .filter(|(f, _)| !bad.contains(&(f.dataset, f.index)))
                .count();
        if known >= len {
            let last = failures
                .last()
                .map_or_else(String::new, |(_, e)| format!("; the last: {e}"));
            return Err(TrainError::Data(format!(
                "every one of the {len} samples of dataset {} failed verification or \
                 decoding{last}",
                dataset.manifest().name
            )));
        }
        candidate = SampleRef {
            index: replacements.random_range(0..len),
            seed: replacements.random(),
            ..*r
        };
    }
}

/// A sample that failed: which one, and why. `None`: a sample known to be bad, not read.
type SlotFailure = Option<Box<(SampleRef, DataError)>>;

/// Reads and augments one slot: its RNG decides the augmentation and, with probability
/// `mosaic_probability`, three mosaic partners from the same dataset (same region, so the
/// same traffic side).
fn prepare(
    data: &TrainingData,
    r: &SampleRef,
    options: &LoaderOptions,
    known_bad: &dyn Fn(&SampleRef) -> bool,
) -> Result<Augmented, SlotFailure> {
    let read = |s: &SampleRef| {
        if known_bad(s) {
            return Err(None);
        }
        data.get(s).map_err(|e| Some(Box::new((*s, e))))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
    let sample = read(r)?;
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
        let tiles: Vec<Sample> = partners.iter().map(read).collect::<Result<_, _>>()?;
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
