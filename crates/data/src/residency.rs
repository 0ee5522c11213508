//! The residency guard: the only way to a dataset's shards.
//!
//! A run declares its [`Site`]. Before any shard byte is read, [`ResidencyGuard::check`] loads
//! the dataset's manifest (verifying its seal) and compares the site's region with the
//! manifest's `policy.processing_regions`. A dataset that may not be processed at the site is
//! refused; one that may comes back as a [`ClearedDataset`], and [`Dataset::open`] takes nothing
//! else, so no code path opens shards the guard has not cleared. There is no switch that turns
//! the guard off.
//!
//! A site may also hold a [`TrustStore`]: the data stewards whose Ed25519 signatures it accepts,
//! per region ([`SignaturePolicy`]). Then a manifest must carry a valid signature by a trusted
//! steward for the manifest's region of collection, or the dataset is refused before any shard
//! byte is read: unsigned (unless the site allows unsigned data, which every decision records),
//! signed by a key not in the store, signed for another region, or changed since it was signed.
//!
//! Every check yields a [`GuardDecision`] (allowed or not, and why) for the run's audit log.
//!
//! [`Dataset::open`]: crate::Dataset::open

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::keys::{SignatureDomain, TrustStore};
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
    /// Why, in words: the policy line that allows or forbids it, and what the signature check
    /// found.
    pub reason: String,
    /// Fingerprint of the trusted steward key whose signature on the manifest verified; `None`
    /// when unsigned or not checked (no trust store).
    pub signed_by: Option<String>,
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

/// What a site requires of manifest signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// The stewards whose signatures the site accepts; `None`: signatures are not checked.
    pub trust_store: Option<TrustStore>,
    /// Whether an unsigned manifest may be processed (each such decision says so).
    pub allow_unsigned: bool,
}

impl SignaturePolicy {
    /// No trust store: unsigned data allowed, signatures not checked.
    pub fn unchecked() -> Self {
        SignaturePolicy {
            trust_store: None,
            allow_unsigned: true,
        }
    }
}

/// Checks dataset manifests against a site.
#[derive(Debug, Clone)]
pub struct ResidencyGuard {
    site: Site,
    signatures: SignaturePolicy,
}

impl ResidencyGuard {
    /// A guard for `site` that does not check signatures ([`SignaturePolicy::unchecked`]).
    pub fn new(site: Site) -> Result<Self, DataError> {
        Self::with_signatures(site, SignaturePolicy::unchecked())
    }

    /// A guard for `site` with a signature policy. A policy that refuses unsigned data needs a
    /// trust store (else it would refuse everything).
    pub fn with_signatures(site: Site, signatures: SignaturePolicy) -> Result<Self, DataError> {
        if signatures.trust_store.is_none() && !signatures.allow_unsigned {
            return Err(DataError::InvalidOptions(
                "refusing unsigned data needs a trust store (site.trust_store) naming the \
                 stewards whose signatures the site accepts"
                    .into(),
            ));
        }
        if !is_region_code(&site.region) {
            return Err(DataError::InvalidOptions(format!(
                "site region `{}` is not an ISO 3166-1 alpha-2 code (two uppercase letters \
                 such as `DE`)",
                site.region
            )));
        }
        Ok(ResidencyGuard { site, signatures })
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
                    signed_by: None,
                };
                return Err(Box::new(GuardRefusal { decision, error }));
            }
        };
        let signature = self.check_signature(&manifest);
        let (signed_by, signature_note) = match &signature {
            Ok((key, note)) => (key.clone(), note.clone()),
            Err(detail) => (None, detail.clone()),
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
            allowed: allowed && signature.is_ok(),
            reason: format!("{reason}; {signature_note}"),
            signed_by,
        };
        if let Err(detail) = signature {
            let error = DataError::SignatureRefused {
                dataset: manifest.name.clone(),
                manifest: path,
                detail,
            };
            return Err(Box::new(GuardRefusal { decision, error }));
        }
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

    /// The verified signer's fingerprint (if any) and a note for the decision, or why the
    /// manifest's signature is refused.
    fn check_signature(&self, manifest: &Manifest) -> Result<(Option<String>, String), String> {
        let policy = &self.signatures;
        let Some(sig) = &manifest.signature else {
            return match (&policy.trust_store, policy.allow_unsigned) {
                (None, _) => Ok((
                    None,
                    "unsigned, not checked: the site has no trust store".into(),
                )),
                (Some(store), true) => Ok((
                    None,
                    format!(
                        "unsigned, allowed by the site's policy (`site.allow_unsigned = true`; \
                         trust store {})",
                        store.path().display()
                    ),
                )),
                (Some(store), false) => Err(format!(
                    "its manifest is unsigned, and this site (trust store {}) processes only \
                     data signed by a trusted steward. Have the data steward sign it \
                     (`percept sign DATASET --key STEWARD.key`), or allow unsigned data with \
                     `site.allow_unsigned = true` (recorded in the audit log)",
                    store.path().display()
                )),
            };
        };
        let Some(store) = &policy.trust_store else {
            return Ok((
                None,
                format!(
                    "signed by key {} (`{}`), not checked: the site has no trust store",
                    sig.key, sig.steward
                ),
            ));
        };
        let Some(steward) = store.steward(&sig.key) else {
            return Err(format!(
                "its manifest is signed by key {} (named `{}`), which is not in the site's trust \
                 store {}",
                sig.key,
                sig.steward,
                store.path().display()
            ));
        };
        if !steward.key.verifies(
            SignatureDomain::ManifestSeal,
            manifest.seal.as_bytes(),
            &sig.signature,
        ) {
            return Err(format!(
                "the signature of steward `{}` (key {}) does not match the manifest's content: \
                 the manifest was changed and resealed after it was signed, without the \
                 steward's key. Restore the signed manifest, or have the steward sign the new one",
                steward.name, sig.key
            ));
        }
        if !steward.regions.contains(&manifest.region) {
            return Err(format!(
                "it is signed by steward `{}` (key {}), who may sign for {:?} in the site's trust \
                 store {}, but the manifest says its data was collected in {}",
                steward.name,
                sig.key,
                steward.regions,
                store.path().display(),
                manifest.region
            ));
        }
        Ok((
            Some(sig.key.clone()),
            format!(
                "signed by steward `{}` (key {}) for {}",
                steward.name, sig.key, manifest.region
            ),
        ))
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

    /// A trust store with a DE steward (for DE) and a CN steward (for CN); returns the store
    /// and both keys.
    fn stewards(dir: &Path) -> (TrustStore, crate::SecretKey, crate::SecretKey) {
        let de = crate::SecretKey::generate("de-office").unwrap();
        let cn = crate::SecretKey::generate("cn-office").unwrap();
        let path = dir.join("trust.toml");
        std::fs::write(
            &path,
            format!(
                "[[steward]]\nname = \"de-office\"\nregions = [\"DE\"]\npublic_key = \"{}\"\n\n\
                 [[steward]]\nname = \"cn-office\"\nregions = [\"CN\"]\npublic_key = \"{}\"\n",
                de.public().to_hex(),
                cn.public().to_hex()
            ),
        )
        .unwrap();
        (TrustStore::load(&path).unwrap(), de, cn)
    }

    fn signed_guard(region: &str, store: &TrustStore, allow_unsigned: bool) -> ResidencyGuard {
        let policy = SignaturePolicy {
            trust_store: Some(store.clone()),
            allow_unsigned,
        };
        ResidencyGuard::with_signatures(site(region), policy).unwrap()
    }

    #[test]
    fn de_manifest_resealed_as_cn_without_the_stewards_key_is_refused_at_a_cn_site() {
        let keys = tempfile::tempdir().unwrap();
        let (store, de, _cn) = stewards(keys.path());
        let data = tempfile::tempdir().unwrap();
        let path = data.path().join(MANIFEST_FILE);
        let mut m = Manifest::new("fleet-de", "DE", vec!["car".into()]).unwrap();
        m.sign(&de);
        m.save(&path).unwrap();
        let cleared = signed_guard("DE", &store, false)
            .check(data.path())
            .unwrap();
        assert_eq!(
            cleared.decision().signed_by,
            Some(de.public().fingerprint())
        );
        assert!(cleared
            .decision()
            .reason
            .contains("signed by steward `de-office`"));

        // Relabelled as CN data, processed in CN, and resealed: the seal holds, the signature
        // does not.
        let mut forged = Manifest::load(&path).unwrap();
        forged.region = "CN".into();
        forged.policy.processing_regions = vec!["CN".into()];
        forged.save(&path).unwrap();
        assert!(Manifest::load(&path).is_ok(), "the reseal itself verifies");
        let refusal = signed_guard("CN", &store, false)
            .check(data.path())
            .unwrap_err();
        assert!(!refusal.decision.allowed);
        assert_eq!(refusal.decision.signed_by, None);
        let msg = refusal.to_string();
        for want in [
            "`fleet-de`",
            "steward `de-office`",
            &de.public().fingerprint(),
            "does not match the manifest's content",
        ] {
            assert!(msg.contains(want), "`{want}` missing from: {msg}");
        }
        assert!(matches!(refusal.error, DataError::SignatureRefused { .. }));

        // The stale signature dropped: unsigned, refused where the site requires signatures,
        // allowed (and said so) where its policy allows unsigned data.
        forged.signature = None;
        forged.save(&path).unwrap();
        let msg = signed_guard("CN", &store, false)
            .check(data.path())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("unsigned") && msg.contains("trust.toml"),
            "{msg}"
        );
        let allowed = signed_guard("CN", &store, true).check(data.path()).unwrap();
        assert!(allowed
            .decision()
            .reason
            .contains("unsigned, allowed by the site's policy"));
    }

    #[test]
    fn signatures_by_unknown_keys_or_for_other_regions_are_refused_naming_the_key() {
        let keys = tempfile::tempdir().unwrap();
        let (store, de, _cn) = stewards(keys.path());
        let data = tempfile::tempdir().unwrap();
        let path = data.path().join(MANIFEST_FILE);

        let stranger = crate::SecretKey::generate("stranger").unwrap();
        let mut m = Manifest::new("fleet-cn", "CN", vec!["car".into()]).unwrap();
        m.sign(&stranger);
        m.save(&path).unwrap();
        let msg = signed_guard("CN", &store, true)
            .check(data.path())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&stranger.public().fingerprint())
                && msg.contains("not in the site's trust store"),
            "{msg}"
        );

        // The DE steward's key signing CN data: a valid signature, the wrong steward.
        m.sign(&de);
        m.save(&path).unwrap();
        let msg = signed_guard("CN", &store, true)
            .check(data.path())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("may sign for [\"DE\"]") && msg.contains("collected in CN"),
            "{msg}"
        );

        // Without a trust store a signature is recorded as not checked.
        let cleared = ResidencyGuard::new(site("CN"))
            .unwrap()
            .check(data.path())
            .unwrap();
        assert!(
            cleared.decision().reason.contains("not checked"),
            "{}",
            cleared.decision().reason
        );
        assert_eq!(cleared.decision().signed_by, None);
        let err = ResidencyGuard::with_signatures(
            site("CN"),
            SignaturePolicy {
                trust_store: None,
                allow_unsigned: false,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs a trust store"), "{err}");
    }
}
