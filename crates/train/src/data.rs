//! The datasets of a run, opened and checked against the run's site.

use std::path::{Path, PathBuf};

use percept_data::{Dataset, Sample, Split};
use rayon::prelude::*;

use crate::config::RunConfig;
use crate::model_file::{DatasetRef, Provenance};
use crate::TrainError;

/// The training split of every dataset of a run, as one indexable collection.
pub struct TrainingData {
    datasets: Vec<(PathBuf, Dataset)>,
    /// Cumulative sample counts: dataset `d` holds global indices `offsets[d]..offsets[d+1]`.
    offsets: Vec<usize>,
    classes: Vec<String>,
}

/// Opens `dir`'s `split`, refusing it unless its policy lets it be processed at `site_region`.
pub fn open_for_site(dir: &Path, split: Split, site_region: &str) -> Result<Dataset, TrainError> {
    let manifest_path = dir.join("manifest.json");
    let manifest = percept_data::Manifest::load(&manifest_path)?;
    if !manifest
        .policy
        .processing_regions
        .iter()
        .any(|r| r == site_region)
    {
        return Err(TrainError::Residency(format!(
            "dataset {:?} ({}) holds data collected in {} whose policy allows processing only \
             in {:?}; this run's site is {site_region}. Run it at a site in one of those \
             regions.",
            manifest.name,
            manifest_path.display(),
            manifest.region,
            manifest.policy.processing_regions
        )));
    }
    Ok(Dataset::open(dir, split)?)
}

impl TrainingData {
    /// Opens the training split of every dataset in the config.
    pub fn open(config: &RunConfig) -> Result<TrainingData, TrainError> {
        let mut datasets = Vec::new();
        let mut offsets = vec![0];
        let mut classes: Option<(PathBuf, Vec<String>)> = None;
        for dir in &config.data.datasets {
            let ds = open_for_site(dir, Split::Train, &config.site.region)?;
            match &classes {
                None => classes = Some((dir.clone(), ds.classes().to_vec())),
                Some((first, c)) if c.as_slice() != ds.classes() => {
                    return Err(TrainError::Data(format!(
                        "datasets {} and {} have different class lists ({:?} vs {:?}): \
                         import them with the same class map",
                        first.display(),
                        dir.display(),
                        c,
                        ds.classes()
                    )))
                }
                Some(_) => {}
            }
            if ds.is_empty() {
                return Err(TrainError::Data(format!(
                    "dataset {} has no training samples",
                    dir.display()
                )));
            }
            offsets.push(offsets.last().unwrap() + ds.len());
            datasets.push((dir.clone(), ds));
        }
        Ok(TrainingData {
            datasets,
            offsets,
            classes: classes.map(|(_, c)| c).unwrap_or_default(),
        })
    }

    pub fn len(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Reads and verifies the samples at global `indices`, in parallel.
    pub fn load(&self, indices: &[usize]) -> Result<Vec<Sample>, TrainError> {
        indices
            .par_iter()
            .map(|&i| {
                let d = self.offsets.partition_point(|&o| o <= i) - 1;
                Ok(self.datasets[d].1.get(i - self.offsets[d])?)
            })
            .collect()
    }

    /// Provenance of weights trained on these datasets (steps filled in by the trainer).
    pub fn provenance(&self, config: &RunConfig) -> Provenance {
        let datasets: Vec<DatasetRef> = self
            .datasets
            .iter()
            .map(|(_, ds)| DatasetRef {
                name: ds.manifest().name.clone(),
                region: ds.manifest().region.clone(),
                manifest_hash: ds.manifest().hash().to_string(),
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
            percept_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}
