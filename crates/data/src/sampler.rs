//! The deterministic, resumable, region-weighted sampler: which sample of which dataset each
//! training slot gets.
//!
//! The sampler knows datasets only by a description ([`SamplerSource`]: name, region, manifest
//! hash, length); it never opens them. It hands out [`SampleRef`]s, each naming a dataset (by
//! index into the sources), a sample within it, where the slot lies (epoch, position) and a
//! per-slot seed for the augmentation RNG.
//!
//! # Epochs
//!
//! An epoch has `epoch_len = sum of all datasets' lens` global slots, whatever the weights (a
//! region with weight 0 gives its slots to the others).
//!
//! - Without weights (`region_weights` empty) every sample appears exactly once per epoch, in a
//!   seeded order that differs from epoch to epoch.
//! - With weights, region `r` gets a quota of `epoch_len * w_r / sum(w)` slots, rounded by the
//!   largest-remainder method (ties by region code) so that the quotas sum to `epoch_len`
//!   exactly. A region's samples (its datasets concatenated in source order) are taken in a
//!   seeded permutation without replacement; if the quota exceeds the region's size, fresh
//!   permutations follow (oversampling: every sample appears `quota / size` or one more times),
//!   if it is smaller the epoch sees a random subset, a different one each epoch. A region of
//!   weight 0 is never sampled.
//! - The regions' slots are interleaved by a seeded shuffle of region labels, so the mix is
//!   uniform through the epoch.
//!
//! Every permutation is seeded from `(seed, epoch, region, pass, purpose)` by blake3 (keyed
//! derivation) into ChaCha8, with our own Fisher–Yates and bounded integers (so nothing depends
//! on `rand`'s shuffling algorithms) — never from iteration history. Any `(epoch, position)` is
//! therefore computable directly, and a resumed run continues exactly where it stopped.
//!
//! # Data parallel
//!
//! Rank `r` of `world_size` `n` takes the global positions `p` with `p % n == r` of every epoch:
//! the ranks are disjoint and together cover each epoch exactly. When `epoch_len` is not a
//! multiple of `n`, the first `epoch_len % n` ranks get one sample more per epoch than the
//! others; each rank simply continues into the next epoch when its part is used up, so a rank
//! with the shorter part starts each new epoch one draw earlier (ranks drift apart by at most
//! one draw per epoch; no slot is ever given to two ranks). An epoch shorter than `world_size`
//! is refused, since some rank would never get a sample.
//!
//! # Resume
//!
//! [`RegionSampler::state`] gives a [`SamplerState`] to save as JSON with each checkpoint;
//! [`RegionSampler::resume`] continues from it and refuses unless the datasets match the saved
//! fingerprints exactly. [`SamplerState::check_config`] refuses a run config whose seed,
//! weights, rank or world size differ from the saved state. The cached order of the current
//! epoch is not part of the state; it is recomputed on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Version of the sampling algorithm and of [`SamplerState`]'s layout. A state saved by another
/// version is refused: the same state would not give the same samples.
pub const SAMPLER_STATE_VERSION: u32 = 1;

/// blake3 key-derivation context of every seed the sampler derives.
const DERIVE_CONTEXT: &str = "percept-data sampler v1 seed derivation";

/// A dataset as the sampler knows it (also its fingerprint in a [`SamplerState`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSource {
    /// Dataset name (from its manifest).
    pub name: String,
    /// Region the data was collected in (ISO 3166-1 alpha-2, e.g. `DE`).
    pub region: String,
    /// Identity of the dataset's manifest ([`crate::Manifest::hash`]).
    pub manifest_hash: String,
    /// Number of samples of the split being sampled.
    pub len: usize,
}

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// Root seed of every permutation and per-slot seed.
    pub seed: u64,
    /// Weight per region code (normalised; 0 = not sampled). Empty: every sample equally
    /// likely, i.e. each sample once per epoch. Non-empty: every region of a dataset needs a
    /// weight, and every weight a dataset.
    #[serde(default)]
    pub region_weights: BTreeMap<String, f64>,
    /// This process's rank in data-parallel training, `0..world_size`.
    #[serde(default)]
    pub rank: usize,
    /// Number of data-parallel processes (1 without data parallelism).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            region_weights: BTreeMap::new(),
            rank: 0,
            world_size: 1,
        }
    }
}

/// One training slot's sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleRef {
    /// Index into the sources the sampler was built with.
    pub dataset: usize,
    /// Sample index within that dataset.
    pub index: usize,
    /// Epoch of the slot.
    pub epoch: u64,
    /// Global position of the slot in its epoch (`0..epoch_len`, over all ranks).
    pub position: u64,
    /// Seed for this slot's augmentation RNG, derived from `(seed, epoch, position)` (the same
    /// on every rank and in a resumed run).
    pub seed: u64,
}

/// Everything needed to continue sampling exactly, saved as JSON with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    /// [`SAMPLER_STATE_VERSION`] of the code that saved it.
    pub version: u32,
    /// Root seed.
    pub seed: u64,
    /// Epoch of the next sample.
    pub epoch: u64,
    /// Next position within this rank's part of the epoch (`0..rank_epoch_len`; the global
    /// position is `rank + position * world_size`).
    pub position: u64,
    /// Region weights. Saved as decimal strings (`"0.7"`) so they read back bit-exactly.
    #[serde(with = "exact_weights")]
    pub region_weights: BTreeMap<String, f64>,
    /// Number of data-parallel processes.
    pub world_size: usize,
    /// This process's rank.
    pub rank: usize,
    /// Fingerprints of the datasets, in source order.
    pub datasets: Vec<SamplerSource>,
}

/// Everything that can go wrong building or resuming a sampler.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// `world_size` is 0.
    #[error("world_size is 0: it must be at least 1 (1 = no data parallelism)")]
    ZeroWorldSize,

    /// `rank` is not below `world_size`.
    #[error("rank {rank} is out of range for world_size {world_size}: valid ranks are 0..={max}", max = world_size - 1)]
    RankOutOfRange { rank: usize, world_size: usize },

    /// No dataset has a sample.
    #[error("no samples to draw from: {0}")]
    NoSamples(String),

    /// A weight is negative, NaN or infinite.
    #[error("data.region_weights.{region} = {weight}: a weight must be a finite number >= 0 (0 leaves the region out)")]
    InvalidWeight { region: String, weight: f64 },

    /// A weight names a region no dataset is from.
    #[error("data.region_weights.{region}: no dataset is from region {region}; the datasets' regions are: {known}")]
    UnknownRegion { region: String, known: String },

    /// Weights are given but a dataset's region has none.
    #[error("data.region_weights.{region} is missing: dataset(s) {datasets} are from region {region}; give every region a weight (0 leaves it out) or give no weights at all (every sample equally likely)")]
    MissingWeight { region: String, datasets: String },

    /// Every weight is 0.
    #[error("data.region_weights: every weight is 0; at least one region ({regions}) needs a positive weight")]
    AllWeightsZero { regions: String },

    /// A region has a positive weight but no samples.
    #[error("data.region_weights.{region} = {weight}, but region {region} has no samples (dataset(s) {datasets} are empty); set its weight to 0 or give it data")]
    EmptyRegion {
        region: String,
        weight: f64,
        datasets: String,
    },

    /// The epoch is shorter than the world size, so some rank would never get a sample.
    #[error("an epoch has {epoch_len} samples, fewer than world_size {world_size}: some ranks would never get a sample; use more data or fewer processes")]
    EpochShorterThanWorld { epoch_len: usize, world_size: usize },

    /// More datasets or samples than the sampler can index.
    #[error("{0}")]
    TooLarge(String),

    /// The saved state does not fit the datasets or config it is resumed with.
    #[error("cannot resume the sampler from the saved state: {0}; a sampler state only resumes with exactly the datasets and sampling settings it was saved with")]
    ResumeMismatch(String),

    /// The saved state is inconsistent in itself (damaged or edited).
    #[error("invalid sampler state: {0}")]
    InvalidState(String),
}

/// One region's share of the epoch.
#[derive(Debug, Clone)]
struct Region {
    code: String,
    /// Non-empty datasets of the region, in source order: (source index, first region-local
    /// index).
    datasets: Vec<(u32, usize)>,
    /// Number of samples of the region.
    size: usize,
    /// Slots per epoch.
    quota: usize,
}

impl Region {
    /// The (dataset, index) of region-local sample `i`.
    fn locate(&self, i: usize) -> (u32, u32) {
        let k = self.datasets.partition_point(|&(_, start)| start <= i) - 1;
        let (dataset, start) = self.datasets[k];
        (dataset, (i - start) as u32)
    }
}

/// The deterministic, resumable, region-weighted sampler (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RegionSampler {
    sources: Vec<SamplerSource>,
    config: SamplerConfig,
    regions: Vec<Region>,
    epoch_len: usize,
    rank_epoch_len: u64,
    epoch: u64,
    position: u64,
    /// This rank's part of one epoch's order, `(dataset, index)` per local position.
    cache: Option<(u64, Vec<(u32, u32)>)>,
}

impl RegionSampler {
    /// A sampler at epoch 0, position 0. Refuses an invalid config (see [`SamplerError`]).
    pub fn new(sources: Vec<SamplerSource>, config: SamplerConfig) -> Result<Self, SamplerError> {
        if config.world_size == 0 {
            return Err(SamplerError::ZeroWorldSize);
        }
        if config.rank >= config.world_size {
            return Err(SamplerError::RankOutOfRange {
                rank: config.rank,
                world_size: config.world_size,
            });
        }
        if u32::try_from(sources.len()).is_err() {
            return Err(SamplerError::TooLarge(format!(
                "{} datasets: the sampler indexes at most {} datasets",
                sources.len(),
                u32::MAX
            )));
        }
        let mut epoch_len = 0usize;
        for s in &sources {
            if u32::try_from(s.len).is_err() {
                return Err(SamplerError::TooLarge(format!(
                    "dataset `{}` has {} samples: the sampler indexes at most {} per dataset",
                    s.name,
                    s.len,
                    u32::MAX
                )));
            }
            epoch_len = epoch_len.checked_add(s.len).ok_or_else(|| {
                SamplerError::TooLarge("the datasets' lengths overflow usize".into())
            })?;
        }
        if epoch_len == 0 {
            return Err(SamplerError::NoSamples(if sources.is_empty() {
                "no datasets were given".into()
            } else {
                format!("all datasets ({}) are empty", names(sources.iter()))
            }));
        }

        // Regions in code order, each with its non-empty datasets in source order.
        let mut by_region: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in sources.iter().enumerate() {
            by_region.entry(s.region.as_str()).or_default().push(i);
        }
        let weights = &config.region_weights;
        if !weights.is_empty() {
            for (region, &weight) in weights {
                if !weight.is_finite() || weight < 0.0 {
                    return Err(SamplerError::InvalidWeight {
                        region: region.clone(),
                        weight,
                    });
                }
            }
            for region in weights.keys() {
                if !by_region.contains_key(region.as_str()) {
                    return Err(SamplerError::UnknownRegion {
                        region: region.clone(),
                        known: by_region.keys().copied().collect::<Vec<_>>().join(", "),
                    });
                }
            }
            for (region, members) in &by_region {
                if !weights.contains_key(*region) {
                    return Err(SamplerError::MissingWeight {
                        region: (*region).to_string(),
                        datasets: names(members.iter().map(|&i| &sources[i])),
                    });
                }
            }
            if weights.values().all(|&w| w == 0.0) {
                return Err(SamplerError::AllWeightsZero {
                    regions: weights.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }

        let mut regions = Vec::with_capacity(by_region.len());
        for (code, members) in &by_region {
            let mut datasets = Vec::new();
            let mut size = 0usize;
            for &i in members {
                if sources[i].len > 0 {
                    datasets.push((i as u32, size));
                    size += sources[i].len;
                }
            }
            if let Some(&weight) = weights.get(*code) {
                if weight > 0.0 && size == 0 {
                    return Err(SamplerError::EmptyRegion {
                        region: (*code).to_string(),
                        weight,
                        datasets: names(members.iter().map(|&i| &sources[i])),
                    });
                }
            }
            regions.push(Region {
                code: (*code).to_string(),
                datasets,
                size,
                quota: 0,
            });
        }

        if weights.is_empty() {
            for r in &mut regions {
                r.quota = r.size;
            }
        } else {
            let w: Vec<f64> = regions.iter().map(|r| weights[&r.code]).collect();
            for (r, q) in regions.iter_mut().zip(largest_remainder(epoch_len, &w)) {
                r.quota = q;
            }
        }

        if epoch_len < config.world_size {
            return Err(SamplerError::EpochShorterThanWorld {
                epoch_len,
                world_size: config.world_size,
            });
        }
        let rank_epoch_len = rank_len(epoch_len, config.rank, config.world_size);

        Ok(Self {
            sources,
            config,
            regions,
            epoch_len,
            rank_epoch_len,
            epoch: 0,
            position: 0,
            cache: None,
        })
    }

    /// Continue from a saved state. Refuses unless `sources` match the state's dataset
    /// fingerprints exactly (names, order, regions, manifest hashes, lengths). Check the run's
    /// config against the state with [`SamplerState::check_config`] first.
    pub fn resume(sources: Vec<SamplerSource>, state: SamplerState) -> Result<Self, SamplerError> {
        if state.version != SAMPLER_STATE_VERSION {
            return Err(SamplerError::ResumeMismatch(format!(
                "the state was saved by sampler version {}, this build samples with version {}",
                state.version, SAMPLER_STATE_VERSION
            )));
        }
        compare_datasets(&state.datasets, &sources)?;
        let config = SamplerConfig {
            seed: state.seed,
            region_weights: state.region_weights,
            rank: state.rank,
            world_size: state.world_size,
        };
        let mut sampler = Self::new(sources, config)?;
        if state.position >= sampler.rank_epoch_len {
            return Err(SamplerError::InvalidState(format!(
                "position {} is past the end of rank {}'s part of an epoch ({} samples)",
                state.position, sampler.config.rank, sampler.rank_epoch_len
            )));
        }
        sampler.epoch = state.epoch;
        sampler.position = state.position;
        Ok(sampler)
    }

    /// The next slot's sample. Never runs out: after the last of an epoch comes the next epoch.
    #[allow(clippy::should_implement_trait)] // an endless stream, not an `Option` iterator
    pub fn next(&mut self) -> SampleRef {
        let epoch = self.epoch;
        let local = self.position;
        let (dataset, index) = self.rank_order(epoch)[local as usize];
        self.position += 1;
        if self.position == self.rank_epoch_len {
            self.epoch += 1;
            self.position = 0;
        }
        let position = self.config.rank as u64 + local * self.config.world_size as u64;
        SampleRef {
            dataset: dataset as usize,
            index: index as usize,
            epoch,
            position,
            seed: slot_seed(self.config.seed, epoch, position),
        }
    }

    /// The next `n` slots' samples.
    pub fn next_batch(&mut self, n: usize) -> Vec<SampleRef> {
        (0..n).map(|_| self.next()).collect()
    }

    /// Where the sampler stands, to save with a checkpoint. After the last sample of an epoch
    /// it reads `(epoch + 1, 0)`.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            version: SAMPLER_STATE_VERSION,
            seed: self.config.seed,
            epoch: self.epoch,
            position: self.position,
            region_weights: self.config.region_weights.clone(),
            world_size: self.config.world_size,
            rank: self.config.rank,
            datasets: self.sources.clone(),
        }
    }

    /// Global slots per epoch: the sum of the datasets' lengths.
    pub fn epoch_len(&self) -> usize {
        self.epoch_len
    }

    /// This rank's slots per epoch (`epoch_len / world_size`, plus one for the first
    /// `epoch_len % world_size` ranks).
    pub fn rank_epoch_len(&self) -> usize {
        self.rank_epoch_len as usize
    }

    /// Slots per epoch of each region, by region code (they sum to [`Self::epoch_len`]).
    pub fn region_quotas(&self) -> BTreeMap<String, usize> {
        self.regions
            .iter()
            .map(|r| (r.code.clone(), r.quota))
            .collect()
    }

    /// The sources the sampler was built with.
    pub fn sources(&self) -> &[SamplerSource] {
        &self.sources
    }

    /// The sampling config.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The whole of an epoch's order over all ranks (global positions `0..epoch_len`), computed
    /// directly; does not move the sampler.
    pub fn epoch_order(&self, epoch: u64) -> Vec<SampleRef> {
        self.materialise(epoch)
            .into_iter()
            .enumerate()
            .map(|(p, (dataset, index))| SampleRef {
                dataset: dataset as usize,
                index: index as usize,
                epoch,
                position: p as u64,
                seed: slot_seed(self.config.seed, epoch, p as u64),
            })
            .collect()
    }

    /// This rank's part of `epoch`'s order, from the cache or computed now.
    fn rank_order(&mut self, epoch: u64) -> &[(u32, u32)] {
        if self.cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let n = self.config.world_size;
            let part: Vec<(u32, u32)> = self
                .materialise(epoch)
                .into_iter()
                .skip(self.config.rank)
                .step_by(n)
                .collect();
            debug_assert_eq!(part.len() as u64, self.rank_epoch_len);
            self.cache = Some((epoch, part));
        }
        &self.cache.as_ref().expect("cache was just filled").1
    }

    /// An epoch's full order, `(dataset, index)` per global position.
    fn materialise(&self, epoch: u64) -> Vec<(u32, u32)> {
        let seed = self.config.seed;
        // Each region's samples for the epoch, in order of use.
        let per_region: Vec<Vec<(u32, u32)>> = self
            .regions
            .iter()
            .map(|r| {
                let mut out = Vec::with_capacity(r.quota);
                let mut pass = 0u64;
                let mut perm: Vec<u32> = Vec::new();
                while out.len() < r.quota {
                    let take = (r.quota - out.len()).min(r.size);
                    perm.clear();
                    perm.extend(0..r.size as u32);
                    let mut rng = derive_rng("permutation", seed, epoch, &r.code, pass);
                    partial_shuffle(&mut rng, &mut perm, take);
                    out.extend(perm[..take].iter().map(|&i| r.locate(i as usize)));
                    pass += 1;
                }
                out
            })
            .collect();

        // Region labels, shuffled, decide which region each slot draws from.
        let mut labels: Vec<u32> = Vec::with_capacity(self.epoch_len);
        for (i, r) in self.regions.iter().enumerate() {
            labels.extend(std::iter::repeat_n(i as u32, r.quota));
        }
        let mut rng = derive_rng("interleave", seed, epoch, "", 0);
        let len = labels.len();
        partial_shuffle(&mut rng, &mut labels, len);

        let mut next = vec![0usize; self.regions.len()];
        labels
            .into_iter()
            .map(|l| {
                let l = l as usize;
                let item = per_region[l][next[l]];
                next[l] += 1;
                item
            })
            .collect()
    }
}

impl SamplerState {
    /// Refuses a run config whose seed, region weights, rank or world size differ from this
    /// state (resuming must not silently switch to other settings).
    pub fn check_config(&self, config: &SamplerConfig) -> Result<(), SamplerError> {
        let mut diffs = Vec::new();
        if config.seed != self.seed {
            diffs.push(format!(
                "seed changed from {} to {}",
                self.seed, config.seed
            ));
        }
        let keys: BTreeSet<&String> = self
            .region_weights
            .keys()
            .chain(config.region_weights.keys())
            .collect();
        for key in keys {
            let saved = self.region_weights.get(key);
            let now = config.region_weights.get(key);
            if saved.map(|w| w.to_bits()) != now.map(|w| w.to_bits()) {
                diffs.push(format!(
                    "data.region_weights.{key} changed from {} to {}",
                    show_weight(saved),
                    show_weight(now)
                ));
            }
        }
        if config.world_size != self.world_size {
            diffs.push(format!(
                "world_size changed from {} to {}",
                self.world_size, config.world_size
            ));
        }
        if config.rank != self.rank {
            diffs.push(format!(
                "rank changed from {} to {} (each rank resumes from its own saved state)",
                self.rank, config.rank
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(SamplerError::ResumeMismatch(diffs.join("; ")))
        }
    }
}

fn show_weight(w: Option<&f64>) -> String {
    w.map_or_else(|| "(none)".to_string(), |w| w.to_string())
}

/// Compares saved dataset fingerprints with the current sources, naming what changed.
fn compare_datasets(saved: &[SamplerSource], now: &[SamplerSource]) -> Result<(), SamplerError> {
    let saved_names: Vec<&str> = saved.iter().map(|s| s.name.as_str()).collect();
    let now_names: Vec<&str> = now.iter().map(|s| s.name.as_str()).collect();
    if saved_names != now_names {
        let mut what = String::new();
        let mut s_sorted = saved_names.clone();
        let mut n_sorted = now_names.clone();
        s_sorted.sort_unstable();
        n_sorted.sort_unstable();
        if s_sorted == n_sorted {
            let _ = write!(
                what,
                "the datasets were reordered: saved order [{}], now [{}]",
                saved_names.join(", "),
                now_names.join(", ")
            );
        } else {
            let added = multiset_minus(&n_sorted, &s_sorted);
            let removed = multiset_minus(&s_sorted, &n_sorted);
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("dataset(s) added: {}", quoted(&added)));
            }
            if !removed.is_empty() {
                parts.push(format!("dataset(s) removed: {}", quoted(&removed)));
            }
            let _ = write!(
                what,
                "{} (saved [{}], now [{}])",
                parts.join("; "),
                saved_names.join(", "),
                now_names.join(", ")
            );
        }
        return Err(SamplerError::ResumeMismatch(what));
    }
    let mut diffs = Vec::new();
    for (i, (s, n)) in saved.iter().zip(now).enumerate() {
        if s.region != n.region {
            diffs.push(format!(
                "dataset `{}` (#{i}): region changed from {} to {}",
                s.name, s.region, n.region
            ));
        }
        if s.manifest_hash != n.manifest_hash {
            diffs.push(format!(
                "dataset `{}` (#{i}): manifest hash changed from {} to {} (its contents changed)",
                s.name, s.manifest_hash, n.manifest_hash
            ));
        }
        if s.len != n.len {
            diffs.push(format!(
                "dataset `{}` (#{i}): length changed from {} to {} samples",
                s.name, s.len, n.len
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(SamplerError::ResumeMismatch(diffs.join("; ")))
    }
}

/// Elements of sorted `a` not matched in sorted `b` (multiset difference).
fn multiset_minus<'a>(a: &[&'a str], b: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            j += 1;
        } else {
            out.push(x);
        }
    }
    out
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names<'a>(sources: impl Iterator<Item = &'a SamplerSource>) -> String {
    sources
        .map(|s| format!("`{}`", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Slots of `rank` in an epoch of `epoch_len` global slots.
fn rank_len(epoch_len: usize, rank: usize, world_size: usize) -> u64 {
    if epoch_len <= rank {
        0
    } else {
        (epoch_len - rank).div_ceil(world_size) as u64
    }
}

/// Quotas proportional to `weights` summing to `total` exactly: floors of the exact shares, then
/// one more each to the largest remainders (ties to the lower index, i.e. region code order).
/// Zero weights get zero. `weights` are finite, >= 0, not all 0.
fn largest_remainder(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * (w / sum)).collect();
    let mut quotas: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let assigned: usize = quotas.iter().sum();
    // Guard against rounding pushing the floors past the total (cannot happen by more than a
    // hair, but never hand out more slots than the epoch has).
    let mut i = 0;
    let mut over = assigned.saturating_sub(total);
    while over > 0 {
        let k = quotas.len() - 1 - (i % quotas.len());
        if quotas[k] > 0 {
            quotas[k] -= 1;
            over -= 1;
        }
        i += 1;
    }
    let mut left = total.saturating_sub(assigned);
    let mut order: Vec<usize> = (0..weights.len()).filter(|&k| weights[k] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let mut j = 0;
    while left > 0 {
        quotas[order[j % order.len()]] += 1;
        left -= 1;
        j += 1;
    }
    quotas
}

/// 32 bytes of seed derived from `(purpose, seed, epoch, region, n)`; fields are length-prefixed
/// so no two tuples share an encoding.
fn derive(purpose: &str, seed: u64, epoch: u64, region: &str, n: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DERIVE_CONTEXT);
    h.update(&(purpose.len() as u64).to_le_bytes());
    h.update(purpose.as_bytes());
    h.update(&seed.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(&(region.len() as u64).to_le_bytes());
    h.update(region.as_bytes());
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

fn derive_rng(purpose: &str, seed: u64, epoch: u64, region: &str, n: u64) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(derive(purpose, seed, epoch, region, n))
}

/// The augmentation seed of global slot `(epoch, position)`.
fn slot_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    let bytes = derive("slot", seed, epoch, "", position);
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// Uniform integer in `0..n` (`n > 0`), Lemire's multiply-and-reject (unbiased, fixed algorithm).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (m >> 64) as u64
}

/// Forward Fisher–Yates for the first `take` elements: `v[..take]` becomes the first `take` of
/// a uniformly random permutation (the same as a full shuffle's first `take`).
fn partial_shuffle<T>(rng: &mut ChaCha8Rng, v: &mut [T], take: usize) {
    let len = v.len();
    for i in 0..take.min(len.saturating_sub(1)) {
        let j = i + below(rng, (len - i) as u64) as usize;
        v.swap(i, j);
    }
}

/// Region weights as decimal strings: Rust prints the shortest string that parses back to the
/// same `f64`, and parses correctly rounded, whereas JSON number parsing may be off by an ulp.
mod exact_weights {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(w: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(w.iter().map(|(k, v)| (k, v.to_string())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| match v.parse::<f64>() {
                Ok(w) => Ok((k, w)),
                Err(_) => Err(D::Error::custom(format!(
                    "region_weights.{k} = {v:?} is not a number"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, region: &str, len: usize) -> SamplerSource {
        SamplerSource {
            name: name.into(),
            region: region.into(),
            manifest_hash: format!("hash-{name}"),
            len,
        }
    }

    fn weights(w: &[(&str, f64)]) -> BTreeMap<String, f64> {
        w.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    fn cfg(seed: u64, w: &[(&str, f64)]) -> SamplerConfig {
        SamplerConfig {
            seed,
            region_weights: weights(w),
            rank: 0,
            world_size: 1,
        }
    }

    fn mixed_sources() -> Vec<SamplerSource> {
        // 37 samples; CN is small and gets oversampled.
        vec![
            src("cn-a", "CN", 3),
            src("de-a", "DE", 12),
            src("cn-b", "CN", 2),
            src("de-b", "DE", 20),
        ]
    }

    fn err(sources: Vec<SamplerSource>, config: SamplerConfig) -> String {
        RegionSampler::new(sources, config).unwrap_err().to_string()
    }

    fn resume_err(sources: Vec<SamplerSource>, state: SamplerState) -> String {
        RegionSampler::resume(sources, state)
            .unwrap_err()
            .to_string()
    }

    fn json_round_trip(state: &SamplerState) -> SamplerState {
        let json = serde_json::to_string_pretty(state).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn sampler_resume_equivalence() {
        for (rank, world_size) in [(0, 1), (1, 3)] {
            let config = SamplerConfig {
                rank,
                world_size,
                ..cfg(42, &[("CN", 0.6), ("DE", 0.4)])
            };
            let mut a = RegionSampler::new(mixed_sources(), config.clone()).unwrap();
            let straight = a.next_batch(1000);
            let per_epoch = a.rank_epoch_len();
            for k in [
                0,
                1,
                5,
                per_epoch - 1,
                per_epoch,
                per_epoch + 1,
                2 * per_epoch,
                500,
                999,
                1000,
            ] {
                let mut b = RegionSampler::new(mixed_sources(), config.clone()).unwrap();
                let mut got = b.next_batch(k);
                let state = b.state();
                if k == per_epoch {
                    assert_eq!((state.epoch, state.position), (1, 0), "epoch boundary");
                }
                let state = json_round_trip(&state);
                state.check_config(&config).unwrap();
                let mut c = RegionSampler::resume(mixed_sources(), state).unwrap();
                got.extend(c.next_batch(1000 - k));
                assert_eq!(got, straight, "rank {rank}/{world_size}, resumed after {k}");
            }
        }
    }

    #[test]
    fn sampler_state_json_is_exact() {
        let config = cfg(7, &[("CN", 0.1), ("DE", 0.2)]);
        let mut s = RegionSampler::new(mixed_sources(), config.clone()).unwrap();
        s.next_batch(3);
        let json = serde_json::to_string(&s.state()).unwrap();
        assert!(json.contains(r#""CN":"0.1""#), "{json}");
        let back: SamplerState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s.state());
        back.check_config(&config).unwrap();
        assert_eq!(back.position, 3);
    }

    #[test]
    fn sampler_resume_refused_when_manifest_hash_changes() {
        let s = RegionSampler::new(mixed_sources(), cfg(1, &[])).unwrap();
        let mut sources = mixed_sources();
        sources[1].manifest_hash = "other".into();
        let e = resume_err(sources, s.state());
        assert!(
            e.contains("`de-a`") && e.contains("manifest hash changed"),
            "{e}"
        );
    }

    #[test]
    fn sampler_resume_refused_when_len_changes() {
        let s = RegionSampler::new(mixed_sources(), cfg(1, &[])).unwrap();
        let mut sources = mixed_sources();
        sources[2].len = 4;
        let e = resume_err(sources, s.state());
        assert!(
            e.contains("`cn-b`") && e.contains("length changed from 2 to 4"),
            "{e}"
        );
    }

    #[test]
    fn sampler_resume_refused_when_region_changes() {
        let s = RegionSampler::new(mixed_sources(), cfg(1, &[])).unwrap();
        let mut sources = mixed_sources();
        sources[0].region = "DE".into();
        let e = resume_err(sources, s.state());
        assert!(e.contains("`cn-a`") && e.contains("region changed"), "{e}");
    }

    #[test]
    fn sampler_resume_refused_when_dataset_added_removed_or_reordered() {
        let s = RegionSampler::new(mixed_sources(), cfg(1, &[])).unwrap();
        let mut added = mixed_sources();
        added.push(src("de-c", "DE", 5));
        let e = resume_err(added, s.state());
        assert!(e.contains("added: `de-c`"), "{e}");

        let mut removed = mixed_sources();
        removed.remove(2);
        let e = resume_err(removed, s.state());
        assert!(e.contains("removed: `cn-b`"), "{e}");

        let mut reordered = mixed_sources();
        reordered.swap(0, 1);
        let e = resume_err(reordered, s.state());
        assert!(e.contains("reordered"), "{e}");
    }

    #[test]
    fn sampler_resume_refused_when_config_changes() {
        let config = cfg(1, &[("CN", 0.5), ("DE", 0.5)]);
        let s = RegionSampler::new(mixed_sources(), config.clone()).unwrap();
        let state = s.state();
        state.check_config(&config).unwrap();

        let e = state
            .check_config(&cfg(1, &[("CN", 0.7), ("DE", 0.5)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.region_weights.CN changed from 0.5 to 0.7"),
            "{e}"
        );
        let e = state.check_config(&cfg(1, &[])).unwrap_err().to_string();
        assert!(
            e.contains("data.region_weights.DE changed from 0.5 to (none)"),
            "{e}"
        );
        let e = state
            .check_config(&SamplerConfig {
                world_size: 2,
                ..config.clone()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("world_size changed from 1 to 2"), "{e}");
        let e = state
            .check_config(&SamplerConfig {
                seed: 2,
                ..config.clone()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("seed changed"), "{e}");
    }

    #[test]
    fn sampler_resume_refuses_bad_state() {
        let s = RegionSampler::new(mixed_sources(), cfg(1, &[])).unwrap();
        let mut state = s.state();
        state.position = 37;
        let e = resume_err(mixed_sources(), state);
        assert!(e.contains("position 37 is past the end"), "{e}");
        let mut state = s.state();
        state.version = 99;
        let e = resume_err(mixed_sources(), state);
        assert!(e.contains("version 99"), "{e}");
        // Weights are validated on resume as on new.
        let mut state = s.state();
        state.region_weights = weights(&[("CN", 1.0)]);
        let e = resume_err(mixed_sources(), state);
        assert!(e.contains("data.region_weights.DE is missing"), "{e}");
    }

    #[test]
    fn sampler_rank_split_covers_epoch_disjointly() {
        let sources = mixed_sources(); // 37 samples: not divisible by 2, 3 or 4
        for w in [&[][..], &[("CN", 0.3), ("DE", 0.7)][..]] {
            let single = RegionSampler::new(sources.clone(), cfg(9, w)).unwrap();
            let reference = single.epoch_order(0);
            assert_eq!(reference.len(), 37);
            for n in 1..=4usize {
                let mut seen = vec![0u32; 37];
                let mut counts = Vec::new();
                for r in 0..n {
                    let config = SamplerConfig {
                        rank: r,
                        world_size: n,
                        ..cfg(9, w)
                    };
                    let mut s = RegionSampler::new(sources.clone(), config).unwrap();
                    let per = s.rank_epoch_len();
                    counts.push(per);
                    for x in s.next_batch(per) {
                        assert_eq!(x.epoch, 0);
                        assert_eq!(x.position as usize % n, r);
                        assert_eq!(x, reference[x.position as usize]);
                        seen[x.position as usize] += 1;
                    }
                    let after = s.next();
                    assert_eq!((after.epoch, after.position), (1, r as u64));
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n}: {seen:?}");
                assert_eq!(counts.iter().sum::<usize>(), 37);
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(hi - lo <= 1, "n={n}: {counts:?}");
            }
        }
    }

    #[test]
    fn sampler_unweighted_every_sample_once_per_epoch() {
        let sources = mixed_sources();
        let mut s = RegionSampler::new(sources.clone(), cfg(3, &[])).unwrap();
        let mut orders = Vec::new();
        for epoch in 0..3 {
            let refs = s.next_batch(37);
            let mut pairs: Vec<(usize, usize)> =
                refs.iter().map(|r| (r.dataset, r.index)).collect();
            assert!(refs.iter().all(|r| r.epoch == epoch));
            orders.push(pairs.clone());
            pairs.sort_unstable();
            let all: Vec<(usize, usize)> = sources
                .iter()
                .enumerate()
                .flat_map(|(d, s)| (0..s.len).map(move |i| (d, i)))
                .collect();
            assert_eq!(pairs, all, "epoch {epoch}");
        }
        assert_ne!(orders[0], orders[1]);
        assert_ne!(orders[1], orders[2]);

        let same = RegionSampler::new(sources.clone(), cfg(3, &[])).unwrap();
        let other = RegionSampler::new(sources.clone(), cfg(4, &[])).unwrap();
        let key = |v: Vec<SampleRef>| v.iter().map(|r| (r.dataset, r.index)).collect::<Vec<_>>();
        assert_eq!(key(same.epoch_order(0)), orders[0]);
        assert_ne!(key(other.epoch_order(0)), orders[0]);
        // Per-slot seeds differ between slots and between seeds.
        let seeds: BTreeSet<u64> = same.epoch_order(0).iter().map(|r| r.seed).collect();
        assert_eq!(seeds.len(), 37);
        assert_ne!(same.epoch_order(0)[0].seed, other.epoch_order(0)[0].seed);
    }

    #[test]
    fn sampler_order_is_pinned() {
        // Changing this order breaks resuming old checkpoints: bump SAMPLER_STATE_VERSION.
        let s =
            RegionSampler::new(mixed_sources(), cfg(2024, &[("CN", 0.5), ("DE", 0.5)])).unwrap();
        let got: Vec<(usize, usize, u64)> = s
            .epoch_order(1)
            .iter()
            .take(6)
            .map(|r| (r.dataset, r.index, r.seed))
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [(usize, usize, u64); 6] = [
        (3, 18, 12209644265676592721),
        (2, 1, 8437690722985197899),
        (1, 3, 3594450846182329237),
        (0, 2, 655559836958526009),
        (0, 0, 10753141500475225383),
        (2, 0, 8855045578411231931),
    ];

    #[test]
    fn sampler_weighted_quotas_and_oversampling() {
        let sources = vec![src("cn", "CN", 50), src("de", "DE", 500)];
        let mut s = RegionSampler::new(sources, cfg(11, &[("CN", 0.7), ("DE", 0.3)])).unwrap();
        assert_eq!(s.epoch_len(), 550);
        assert_eq!(
            s.region_quotas(),
            BTreeMap::from([("CN".to_string(), 385), ("DE".to_string(), 165)])
        );
        let mut de_subsets = Vec::new();
        for epoch in 0..4 {
            let refs = s.next_batch(550);
            assert!(refs.iter().all(|r| r.epoch == epoch));
            let mut cn = [0u32; 50];
            let mut de = vec![0u32; 500];
            for r in &refs {
                match r.dataset {
                    0 => cn[r.index] += 1,
                    _ => de[r.index] += 1,
                }
            }
            // 385 = 7 * 50 + 35: 35 samples 8 times, 15 samples 7 times.
            assert_eq!(cn.iter().filter(|&&c| c == 8).count(), 35);
            assert_eq!(cn.iter().filter(|&&c| c == 7).count(), 15);
            // DE: 165 distinct samples of 500, none repeated.
            assert_eq!(de.iter().filter(|&&c| c == 1).count(), 165);
            assert_eq!(de.iter().filter(|&&c| c == 0).count(), 335);
            de_subsets.push(de);

            // The mix is spread: every window of 110 slots has 77 ± 22 CN slots (about 5 sd),
            // and DE never runs for more than 12 slots in a row (0.3^13 ≈ 2e-7 per slot).
            for w in refs.chunks(110) {
                let c = w.iter().filter(|r| r.dataset == 0).count();
                assert!((55..=99).contains(&c), "epoch {epoch}: window with {c} CN");
            }
            let mut run = 0;
            for r in &refs {
                run = if r.dataset == 1 { run + 1 } else { 0 };
                assert!(run <= 12, "epoch {epoch}: DE run of {run}");
            }
        }
        assert_ne!(
            de_subsets[0], de_subsets[1],
            "a different DE subset each epoch"
        );
    }

    #[test]
    fn sampler_zero_weight_region_never_sampled() {
        let sources = vec![
            src("cn", "CN", 50),
            src("us", "US", 40),
            src("de", "DE", 500),
        ];
        let mut s =
            RegionSampler::new(sources, cfg(5, &[("CN", 0.7), ("DE", 0.3), ("US", 0.0)])).unwrap();
        assert_eq!(s.epoch_len(), 590);
        // 590 * 0.7 = 413, 590 * 0.3 = 177.
        assert_eq!(
            s.region_quotas(),
            BTreeMap::from([
                ("CN".to_string(), 413),
                ("DE".to_string(), 177),
                ("US".to_string(), 0)
            ])
        );
        let refs = s.next_batch(3 * 590);
        assert!(refs.iter().all(|r| r.dataset != 1));
        assert_eq!(refs.iter().filter(|r| r.dataset == 0).count(), 3 * 413);
    }

    #[test]
    fn sampler_largest_remainder_quotas() {
        assert_eq!(largest_remainder(100, &[1.0, 1.0, 1.0]), vec![34, 33, 33]);
        assert_eq!(largest_remainder(10, &[0.0, 1.0, 2.0]), vec![0, 3, 7]);
        assert_eq!(largest_remainder(7, &[0.5, 0.25, 0.25]), vec![3, 2, 2]);
        for total in [1usize, 2, 3, 17, 550, 1_000_003] {
            for w in [
                vec![0.7, 0.3],
                vec![0.1, 0.2, 0.3, 0.4],
                vec![1e-9, 1.0, 0.0, 3.0],
                vec![1.0 / 3.0; 6],
            ] {
                let q = largest_remainder(total, &w);
                assert_eq!(q.iter().sum::<usize>(), total, "{total} {w:?}");
                let sum: f64 = w.iter().sum();
                for (q, w) in q.iter().zip(&w) {
                    let exact = total as f64 * w / sum;
                    assert!((*q as f64 - exact).abs() < 1.0 + 1e-9, "{total} {w} {q}");
                    if *w == 0.0 {
                        assert_eq!(*q, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn sampler_config_errors() {
        let s = mixed_sources;
        let e = err(s(), cfg(0, &[("CN", 1.0), ("DE", 1.0), ("FR", 1.0)]));
        assert!(
            e.contains("data.region_weights.FR") && e.contains("CN, DE"),
            "{e}"
        );
        let e = err(s(), cfg(0, &[("CN", 1.0)]));
        assert!(
            e.contains("data.region_weights.DE is missing") && e.contains("`de-a`, `de-b`"),
            "{e}"
        );
        let e = err(s(), cfg(0, &[("CN", -1.0), ("DE", 1.0)]));
        assert!(
            e.contains("data.region_weights.CN = -1") && e.contains(">= 0"),
            "{e}"
        );
        let e = err(s(), cfg(0, &[("CN", f64::NAN), ("DE", 1.0)]));
        assert!(e.contains("data.region_weights.CN = NaN"), "{e}");
        let e = err(s(), cfg(0, &[("CN", f64::INFINITY), ("DE", 1.0)]));
        assert!(e.contains("data.region_weights.CN = inf"), "{e}");
        let e = err(s(), cfg(0, &[("CN", 0.0), ("DE", 0.0)]));
        assert!(e.contains("every weight is 0"), "{e}");

        let mut empty_cn = s();
        empty_cn[0].len = 0;
        empty_cn[2].len = 0;
        let e = err(empty_cn.clone(), cfg(0, &[("CN", 0.5), ("DE", 0.5)]));
        assert!(
            e.contains("data.region_weights.CN = 0.5") && e.contains("`cn-a`, `cn-b`"),
            "{e}"
        );
        // Weight 0 for the empty region is fine; so is no weights at all.
        RegionSampler::new(empty_cn.clone(), cfg(0, &[("CN", 0.0), ("DE", 0.5)])).unwrap();
        RegionSampler::new(empty_cn, cfg(0, &[])).unwrap();

        let e = err(
            s(),
            SamplerConfig {
                rank: 2,
                world_size: 2,
                ..cfg(0, &[])
            },
        );
        assert!(e.contains("rank 2 is out of range for world_size 2"), "{e}");
        let e = err(
            s(),
            SamplerConfig {
                rank: 0,
                world_size: 0,
                ..cfg(0, &[])
            },
        );
        assert!(e.contains("world_size is 0"), "{e}");
        let e = err(vec![], cfg(0, &[]));
        assert!(e.contains("no datasets"), "{e}");
        let e = err(vec![src("a", "DE", 0)], cfg(0, &[]));
        assert!(e.contains("no samples") && e.contains("`a`"), "{e}");
        let e = err(
            vec![src("a", "DE", 2)],
            SamplerConfig {
                rank: 0,
                world_size: 3,
                ..cfg(0, &[])
            },
        );
        assert!(e.contains("fewer than world_size 3"), "{e}");
    }

    #[test]
    fn sampler_empty_datasets_are_skipped() {
        let sources = vec![
            src("a", "DE", 0),
            src("b", "DE", 4),
            src("c", "DE", 0),
            src("d", "DE", 3),
        ];
        let mut s = RegionSampler::new(sources, cfg(0, &[("DE", 1.0)])).unwrap();
        let mut got: Vec<(usize, usize)> = s
            .next_batch(7)
            .iter()
            .map(|r| (r.dataset, r.index))
            .collect();
        got.sort_unstable();
        assert_eq!(
            got,
            vec![(1, 0), (1, 1), (1, 2), (1, 3), (3, 0), (3, 1), (3, 2)]
        );
    }
}
