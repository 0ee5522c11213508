//! The residency guard: the only way to a dataset's shards.
//!
//! A run declares its [`Site`]. Before any shard byte is read, [`ResidencyGuard::check`] loads
//! the dataset's manifest (verifying its seal) and compares the site's region with the
//! manifest's `policy.processing_regions`. A dataset that may not be processed at the site is
//! refused; one that may comes back as a [`ClearedDataset`], and [`Dataset::open`] takes nothing
//! else, so no code path opens shards the guard has not cleared. There is no switch that turns
//! the guard off.
//!
//! Every check yields a [`GuardDecision`] (allowed or not, and why) for the run's audit log.
//!
//! [`Dataset::open`]: crate::Dataset::open

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::manifest::{is_region_code, Manifest, MANIFEST_FILE};

/// Where a run processes data: a region (ISO 3166-1 alpha-2) and a site name for the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub region: String,
    pub name: String,
}

/// The guard's verdict on one dataset, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardDecision {
    /// Dataset name from the manifest (the directory when the manifest cannot be read).
    pub dataset: String,
    /// The manifest file checked.
    pub manifest: PathBuf,
    /// [`Manifest::hash`] of the checked manifest; empty when it could not be read.
    pub manifest_hash: String,
    /// Region the data was collected in; empty when the manifest could not be read.
    pub data_region: String,
    pub site_region: String,
    pub allowed: bool,
    /// Why, in words: the policy line that allows or forbids it.
    pub reason: String,
}

/// A manifest the guard has allowed at its site; the key to [`crate::Dataset::open`].
#[derive(Debug, Clone)]
pub struct ClearedDataset {
    dir: PathBuf,
    manifest: Manifest,
    decision: GuardDecision,
}

impl ClearedDataset {
    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as the guard read it; shards are opened from this copy, never a re-read.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The (allowing) decision.
    pub fn decision(&self) -> &GuardDecision {
        &self.decision
    }
}

/// A refused dataset: the decision to log and the error to report.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct GuardRefusal {
    pub decision: GuardDecision,
    #[source]
    pub error: DataError,
}

/// Checks dataset manifests against a site.
#[derive(Debug, Clone)]
pub struct ResidencyGuard {
    site: Site,
}

impl ResidencyGuard {
    /// A guard for `site`; its region must be an ISO 3166-1 alpha-2 code.
    pub fn new(site: Site) -> Result<Self, DataError> {
        if !is_region_code(&site.region) {
            return Err(DataError::InvalidOptions(format!(
                "site region `{}` is not an ISO 3166-1 alpha-2 code (two uppercase letters \
                 such as `DE`)",
                site.region
            )));
        }
        Ok(ResidencyGuard { site })
    }

    pub fn site(&self) -> &Site {
        &self.site
    }

    /// Loads `<dir>/manifest.json` and decides whether its data may be processed at this site.
    ///
    /// Reads the manifest only, never a shard. A manifest that cannot be read or fails its
    /// seal is refused too: the guard fails closed.
    pub fn check(&self, dir: &Path) -> Result<ClearedDataset, Box<GuardRefusal>> {
        let path = dir.join(MANIFEST_FILE);
        let manifest = match Manifest::load(&path) {
            Ok(m) => m,
            Err(error) => {
                let decision = GuardDecision {
                    dataset: dir.display().to_string(),
                    manifest: path,
                    manifest_hash: String::new(),
                    data_region: String::new(),
                    site_region: self.site.region.clone(),
                    allowed: false,
                    reason: format!("the manifest cannot be verified: {error}"),
                };
                return Err(Box::new(GuardRefusal { decision, error }));
            }
        };
        let regions = &manifest.policy.processing_regions;
        let allowed = regions.contains(&self.site.region);
        let policy_line = format!("policy.processing_regions = {regions:?}");
        let reason = if allowed {
            format!(
                "data collected in {} may be processed in {}: `{policy_line}` includes the site \
                 region",
                manifest.region, self.site.region
            )
        } else {
            format!(
                "data collected in {} may not be processed in {}: `{policy_line}` does not \
                 include the site region",
                manifest.region, self.site.region
            )
        };
        let decision = GuardDecision {
            dataset: manifest.name.clone(),
            manifest: path.clone(),
            manifest_hash: manifest.hash(),
            data_region: manifest.region.clone(),
            site_region: self.site.region.clone(),
            allowed,
            reason,
        };
        if !allowed {
            let error = DataError::ResidencyRefused {
                dataset: manifest.name.clone(),
                manifest: path,
                detail: format!(
                    "holds data collected in {}; its `{policy_line}` does not allow processing \
                     at this site (region {}, site `{}`)",
                    manifest.region, self.site.region, self.site.name
                ),
            };
            return Err(Box::new(GuardRefusal { decision, error }));
        }
        Ok(ClearedDataset {
            dir: dir.to_path_buf(),
            manifest,
            decision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(region: &str) -> Site {
        Site {
            region: region.into(),
            name: format!("{}-site", region.to_lowercase()),
        }
    }

    fn write_manifest(dir: &Path, region: &str, processing: &[&str]) {
        let mut m = Manifest::new("fleet", region, vec!["car".into()]).unwrap();
        m.policy.processing_regions = processing.iter().map(|r| r.to_string()).collect();
        m.save(dir.join(MANIFEST_FILE)).unwrap();
    }

    #[test]
    fn home_region_is_allowed_and_others_refused_naming_everything() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), "CN", &["CN"]);
        let cleared = ResidencyGuard::new(site("CN"))
            .unwrap()
            .check(dir.path())
            .unwrap();
        assert!(cleared.decision().allowed);
        assert_eq!(cleared.decision().data_region, "CN");
        assert_eq!(cleared.manifest().region, "CN");
        assert_eq!(
            cleared.decision().manifest_hash,
            Manifest::load_dir(dir.path()).unwrap().hash()
        );

        let refusal = ResidencyGuard::new(site("DE"))
            .unwrap()
            .check(dir.path())
            .unwrap_err();
        assert!(!refusal.decision.allowed);
        assert_eq!(
            (
                refusal.decision.data_region.as_str(),
                refusal.decision.site_region.as_str()
            ),
            ("CN", "DE")
        );
        let msg = refusal.to_string();
        for want in [
            "`fleet`",
            "manifest.json",
            "collected in CN",
            "policy.processing_regions = [\"CN\"]",
            "region DE",
            "de-site",
        ] {
            assert!(msg.contains(want), "`{want}` missing from: {msg}");
        }
    }

    #[test]
    fn policy_may_allow_other_regions() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), "DE", &["DE", "FR"]);
        let guard = ResidencyGuard::new(site("FR")).unwrap();
        let cleared = guard.check(dir.path()).unwrap();
        assert!(cleared
            .decision()
            .reason
            .contains("includes the site region"));
        assert!(ResidencyGuard::new(site("US"))
            .unwrap()
            .check(dir.path())
            .is_err());
    }

    #[test]
    fn unreadable_or_edited_manifest_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let guard = ResidencyGuard::new(site("DE")).unwrap();
        let refusal = guard.check(dir.path()).unwrap_err();
        assert!(!refusal.decision.allowed);
        assert!(matches!(refusal.error, DataError::Io { .. }));

        write_manifest(dir.path(), "CN", &["CN"]);
        // Someone widens the policy by hand: the seal no longer matches.
        let path = dir.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"CN\"\n", "\"CN\", \"DE\"\n")).unwrap();
        let refusal = guard.check(dir.path()).unwrap_err();
        assert!(
            refusal.to_string().contains("edited after it was written"),
            "{refusal}"
        );
        assert!(refusal.decision.reason.contains("cannot be verified"));
    }

    #[test]
    fn site_region_must_be_a_region_code() {
        let err = ResidencyGuard::new(site("china")).unwrap_err();
        assert!(err.to_string().contains("`china`"), "{err}");
    }
}
