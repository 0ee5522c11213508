//! The datasets of a run: cleared by the residency guard, opened under the run's integrity
//! policy, every decision and shard check written to the run's audit log.

use std::path::{Path, PathBuf};

use percept_data::{
    AuditEvent, AuditLog, ClearedDataset, Dataset, IntegrityPolicy, RegionSampler, ResidencyGuard,
    Sample, SampleRef, SamplerConfig, SamplerSource, SamplerState, ShardCheck, Site, Split,
};

use crate::config::RunConfig;
use crate::TrainError;
use percept_eval::model_file::{DatasetRef, Provenance};

/// One split of every dataset of a run, ready for the sampler.
pub struct TrainingData {
    datasets: Vec<(PathBuf, Dataset)>,
    /// Per dataset, the trusted steward key whose signature the guard verified.
    signed_by: Vec<Option<String>>,
    /// Each dataset's `val` split, when the run validates.
    validation: Vec<Dataset>,
    classes: Vec<String>,
    integrity: IntegrityPolicy,
}

/// Appends to the audit log, turning its errors into a [`TrainError`].
pub fn audit(log: &mut AuditLog, event: AuditEvent) -> Result<percept_data::AuditHead, TrainError> {
    log.append(event)
        .map_err(|e| TrainError::Audit(e.to_string()))
}

fn guard_event(d: &percept_data::GuardDecision) -> AuditEvent {
    AuditEvent::GuardDecision {
        dataset: d.dataset.clone(),
        manifest: d.manifest.display().to_string(),
        manifest_hash: d.manifest_hash.clone(),
        data_region: d.data_region.clone(),
        site_region: d.site_region.clone(),
        allowed: d.allowed,
        reason: d.reason.clone(),
        signed_by: d.signed_by.clone(),
    }
}

/// Runs the guard over every directory before any shard is opened: all decisions go to the
/// audit log (when given), and any refusal stops here, naming every refused dataset.
pub fn clear_all(
    dirs: &[PathBuf],
    guard: &ResidencyGuard,
    mut log: Option<&mut AuditLog>,
) -> Result<Vec<ClearedDataset>, TrainError> {
    let mut cleared = Vec::new();
    let mut refusals = Vec::new();
    for dir in dirs {
        let (decision, outcome) = match guard.check(dir) {
            Ok(c) => (c.decision().clone(), Ok(c)),
            Err(r) => (r.decision.clone(), Err(r.error)),
        };
        if let Some(log) = log.as_deref_mut() {
            audit(log, guard_event(&decision))?;
        }
        match outcome {
            Ok(c) => cleared.push(c),
            Err(e) => refusals.push(e.to_string()),
        }
    }
    if !refusals.is_empty() {
        return Err(TrainError::Residency(refusals.join("\n")));
    }
    Ok(cleared)
}

/// Opens one cleared dataset's split, logging every shard check.
pub fn open_cleared(
    cleared: &ClearedDataset,
    split: Split,
    integrity: IntegrityPolicy,
    log: Option<&mut AuditLog>,
) -> Result<Dataset, TrainError> {
    let name = cleared.manifest().name.clone();
    let mut checks: Vec<ShardCheck> = Vec::new();
    let opened = Dataset::open(cleared, split, integrity, &mut |c| checks.push(c.clone()));
    if let Some(log) = log {
        for c in checks {
            audit(
                log,
                AuditEvent::ShardOpened {
                    dataset: name.clone(),
                    shard: c.shard,
                    split: c.split.to_string(),
                    hash: c.hash,
                    result: c.result,
                },
            )?;
        }
    }
    Ok(opened?)
}

/// Opens `dir`'s `split` for evaluation at `site_region` (guard first, integrity `fail`).
pub fn open_for_site(dir: &Path, split: Split, site_region: &str) -> Result<Dataset, TrainError> {
    open_for_site_logged(dir, split, site_region, None)
}

/// [`open_for_site`], the guard's decision also written to `log`.
pub fn open_for_site_logged(
    dir: &Path,
    split: Split,
    site_region: &str,
    log: Option<&mut AuditLog>,
) -> Result<Dataset, TrainError> {
    let site = Site {
        region: site_region.to_string(),
        name: format!("eval at {site_region}"),
    };
    let cleared = clear_all(&[dir.to_path_buf()], &ResidencyGuard::new(site)?, log)?;
    open_cleared(&cleared[0], split, IntegrityPolicy::Fail, None)
}

impl TrainingData {
    /// Clears every dataset of the config with the guard, then opens their training splits;
    /// each decision and shard check is written to `log`.
    pub fn open(config: &RunConfig, log: &mut AuditLog) -> Result<TrainingData, TrainError> {
        Self::open_guarded(
            &config.data.datasets,
            &crate::site::residency_guard(&config.site)?,
            config.data.integrity,
            config.validation.every > 0,
            Some(log),
        )
    }

    /// [`open`](Self::open) without a run config: the training splits of `dirs` at `site`,
    /// signatures not checked.
    pub fn open_dirs(
        dirs: &[PathBuf],
        site: &Site,
        integrity: IntegrityPolicy,
        validation: bool,
        log: Option<&mut AuditLog>,
    ) -> Result<TrainingData, TrainError> {
        let guard = ResidencyGuard::new(site.clone())?;
        Self::open_guarded(dirs, &guard, integrity, validation, log)
    }

    /// The training (and with `validation`, validation) splits of `dirs`, cleared by `guard`.
    pub fn open_guarded(
        dirs: &[PathBuf],
        guard: &ResidencyGuard,
        integrity: IntegrityPolicy,
        validation: bool,
        mut log: Option<&mut AuditLog>,
    ) -> Result<TrainingData, TrainError> {
        let cleared = clear_all(dirs, guard, log.as_deref_mut())?;
        let mut datasets = Vec::new();
        let mut validation_sets = Vec::new();
        let mut signed_by = Vec::new();
        let mut classes: Option<(PathBuf, Vec<String>)> = None;
        for c in &cleared {
            let dir = c.dir().to_path_buf();
            let ds = open_cleared(c, Split::Train, integrity, log.as_deref_mut())?;
            match &classes {
                None => classes = Some((dir.clone(), ds.classes().to_vec())),
                Some((first, cl)) if cl.as_slice() != ds.classes() => {
                    return Err(TrainError::Data(format!(
                        "datasets {} and {} have different class lists ({:?} vs {:?}): \
                         import them with the same class map",
                        first.display(),
                        dir.display(),
                        cl,
                        ds.classes()
                    )))
                }
                Some(_) => {}
            }
            if validation {
                let val = open_cleared(c, Split::Val, integrity, log.as_deref_mut())?;
                if val.is_empty() {
                    return Err(TrainError::Data(format!(
                        "dataset {} has no val split, and validation.every > 0: import it with \
                         --val-fraction (or write it with a val split), or set validation.every = 0",
                        dir.display()
                    )));
                }
                validation_sets.push(val);
            }
            datasets.push((dir, ds));
            signed_by.push(c.decision().signed_by.clone());
        }
        Ok(TrainingData {
            datasets,
            signed_by,
            validation: validation_sets,
            classes: classes.map(|(_, c)| c).unwrap_or_default(),
            integrity,
        })
    }

    /// Total samples over all datasets.
    /// The `val` splits validated during training (empty unless `validation.every > 0`).
    pub fn validation(&self) -> &[Dataset] {
        &self.validation
    }

    pub fn len(&self) -> usize {
        self.datasets.iter().map(|(_, d)| d.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn integrity(&self) -> IntegrityPolicy {
        self.integrity
    }

    /// The opened datasets, in config order (the sampler's source order).
    pub fn datasets(&self) -> impl Iterator<Item = &Dataset> {
        self.datasets.iter().map(|(_, d)| d)
    }

    /// The datasets as the sampler knows them.
    pub fn sampler_sources(&self) -> Vec<SamplerSource> {
        self.datasets
            .iter()
            .map(|(_, d)| SamplerSource {
                name: d.manifest().name.clone(),
                region: d.manifest().region.clone(),
                manifest_hash: d.manifest().hash(),
                len: d.len(),
            })
            .collect()
    }

    /// A fresh sampler for this run (rank 0 of 1).
    pub fn sampler(&self, config: &RunConfig) -> Result<RegionSampler, TrainError> {
        RegionSampler::new(
            self.sampler_sources(),
            SamplerConfig {
                seed: config.train.seed,
                region_weights: config.data.region_weights.clone(),
                rank: 0,
                world_size: 1,
            },
        )
        .map_err(|e| TrainError::Data(e.to_string()))
    }

    /// The sampler continuing from a saved state; refused when the datasets (manifest hashes,
    /// sizes, order) or the sampling settings differ from those the state was saved with.
    pub fn resume_sampler(
        &self,
        config: &RunConfig,
        state: SamplerState,
    ) -> Result<RegionSampler, TrainError> {
        let wanted = SamplerConfig {
            seed: config.train.seed,
            region_weights: config.data.region_weights.clone(),
            rank: state.rank,
            world_size: state.world_size,
        };
        state
            .check_config(&wanted)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        RegionSampler::resume(self.sampler_sources(), state)
            .map_err(|e| TrainError::Data(e.to_string()))
    }

    /// Reads, verifies and decodes the sample a slot refers to.
    pub fn get(&self, r: &SampleRef) -> Result<Sample, percept_data::DataError> {
        self.datasets[r.dataset].1.get(r.index)
    }

    /// The dataset behind a slot.
    pub fn dataset(&self, index: usize) -> &Dataset {
        &self.datasets[index].1
    }

    /// Provenance of weights trained on these datasets (steps filled in by the trainer).
    pub fn provenance(&self, config: &RunConfig) -> Provenance {
        let datasets: Vec<DatasetRef> = self
            .datasets
            .iter()
            .zip(&self.signed_by)
            .map(|((_, ds), signed_by)| DatasetRef {
                name: ds.manifest().name.clone(),
                region: ds.manifest().region.clone(),
                manifest_hash: ds.manifest().hash(),
                signed_by: signed_by.clone(),
            })
            .collect();
        let mut regions: Vec<String> = datasets.iter().map(|d| d.region.clone()).collect();
        regions.sort();
        regions.dedup();
        Provenance {
            site_region: config.site.region.clone(),
            site_name: config.site.name.clone(),
            datasets,
            regions,
            config_hash: config.hash(),
            base_checkpoint: None,
            steps: 0,
            audit_head: None,
            site_key: None,
            percept_version: env!("CARGO_PKG_VERSION").into(),
            base: None,
            finetune: None,
            quantization: None,
        }
    }
}
