//! The commands that make and use keys: `percept keys new`, `percept sign` (a data steward
//! signs a dataset's manifest) and `percept audit export-head` (a site anchors its signed audit
//! head elsewhere). What they sign is checked by the residency guard and `percept audit verify`.

use std::path::{Path, PathBuf};

use percept_data::audit::{signed_head, SignedHead};
use percept_data::{write_atomic, Manifest, SecretKey, MANIFEST_FILE};
use percept_train::TrainError;

use crate::commands::audit_log_path;

/// A key `percept keys new` wrote.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub fingerprint: String,
    pub public_hex: String,
}

/// Writes a new Ed25519 key to `out` (owner-only) and its public half to `out.pub`; refuses to
/// replace an existing file.
pub fn new_key(out: &Path, name: &str) -> Result<NewKey, TrainError> {
    if name.trim().is_empty() {
        return Err(TrainError::Invalid(
            "--name is empty: name the key's holder (a steward or a site), e.g. --name \
             cn-data-office"
                .into(),
        ));
    }
    let key = SecretKey::generate(name)?;
    let public = key.create(out)?;
    Ok(NewKey {
        secret: out.to_path_buf(),
        public,
        fingerprint: key.public().fingerprint(),
        public_hex: key.public().to_hex(),
    })
}

/// A dataset `percept sign` signed.
#[derive(Debug, Clone)]
pub struct SignedDataset {
    pub manifest: PathBuf,
    pub name: String,
    pub region: String,
    pub fingerprint: String,
    /// The fingerprint of the signature it replaced, if any.
    pub replaced: Option<String>,
}

/// Signs the manifest of the dataset in `dir` with a steward's secret key. The manifest is
/// verified (seal) first, so a steward never signs a manifest someone edited; the signed one is
/// written atomically.
pub fn sign_dataset(dir: &Path, key: &Path) -> Result<SignedDataset, TrainError> {
    let key = SecretKey::load(key)?;
    let path = if dir.is_dir() {
        dir.join(MANIFEST_FILE)
    } else {
        dir.to_path_buf()
    };
    let mut manifest = Manifest::load(&path)?;
    let replaced = manifest.signature.as_ref().map(|s| s.key.clone());
    manifest.sign(&key);
    manifest.save(&path)?;
    Ok(SignedDataset {
        manifest: path,
        name: manifest.name.clone(),
        region: manifest.region.clone(),
        fingerprint: key.public().fingerprint(),
        replaced,
    })
}

/// The signed head of the run's audit log (`run` is the run directory or its log), written as
/// JSON to `out` when given.
pub fn export_head(run: &Path, out: Option<&Path>) -> Result<SignedHead, TrainError> {
    let log = audit_log_path(run)?;
    let head = signed_head(&log).map_err(|e| TrainError::Audit(e.to_string()))?;
    if let Some(out) = out {
        let mut json = serde_json::to_vec_pretty(&head).expect("a head serialises");
        json.push(b'\n');
        write_atomic(out, &json)?;
    }
    Ok(head)
}
