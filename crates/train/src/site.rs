//! A run's site as its config declares it (`[site]`): the residency guard with the site's
//! signature policy, and the site key that signs the run's audit log.

use std::path::Path;

use percept_data::{
    AuditLog, ResidencyGuard, SecretKey, SignaturePolicy, Site, TrustStore, AUDIT_FILE,
};

use crate::config::SiteConfig;
use crate::TrainError;

/// The site as the guard and the audit log name it.
pub fn site(config: &SiteConfig) -> Site {
    Site {
        region: config.region.clone(),
        name: config.name.clone(),
    }
}

/// The residency guard of the site: its region, and its trust store and unsigned-data policy
/// (`site.trust_store`, `site.allow_unsigned`), the store loaded and checked now.
pub fn residency_guard(config: &SiteConfig) -> Result<ResidencyGuard, TrainError> {
    let trust_store = match &config.trust_store {
        Some(path) => Some(TrustStore::load(path).map_err(|e| {
            TrainError::Invalid(format!("site.trust_store = {}: {e}", path.display()))
        })?),
        None => None,
    };
    let allow_unsigned = config.allow_unsigned.unwrap_or(trust_store.is_none());
    let policy = SignaturePolicy {
        trust_store,
        allow_unsigned,
    };
    Ok(ResidencyGuard::with_signatures(site(config), policy)?)
}

/// The site's secret key (`site.key`), loaded (and its permissions checked) now; `None` when the
/// site signs nothing.
pub fn site_key(config: &SiteConfig) -> Result<Option<SecretKey>, TrainError> {
    match &config.key {
        Some(path) => SecretKey::load(path)
            .map(Some)
            .map_err(|e| TrainError::Invalid(format!("site.key = {}: {e}", path.display()))),
        None => Ok(None),
    }
}

/// Opens the audit log of the run in `run_dir` for appending, signing every entry with the
/// site's key when the config names one.
pub fn open_audit_log(run_dir: &Path, config: &SiteConfig) -> Result<AuditLog, TrainError> {
    let key = site_key(config)?;
    AuditLog::open(run_dir.join(AUDIT_FILE))
        .and_then(|log| log.with_signer(key))
        .map_err(|e| TrainError::Audit(e.to_string()))
}
