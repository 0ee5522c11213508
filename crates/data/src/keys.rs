//! Ed25519 keys: a data steward's key signs dataset manifests, a site's key signs its runs'
//! audit logs, and a site's trust store lists the stewards whose signatures it accepts.
//!
//! The unkeyed blake3 seals of manifests and audit entries catch accidents; anyone who can edit
//! the files can recompute them. A signature needs the private key, so a manifest relabelled
//! from DE to CN and resealed, or an audit log rewritten and rehashed, no longer verifies.
//! Signing is ed25519-dalek's; nothing here is home-made cryptography.
//!
//! # Files
//!
//! - Secret key (`percept keys new --out FILE`): JSON
//!   `{"format":1,"kind":"percept-ed25519-secret","name":…,"secret":"<64 hex>"}`, created with
//!   mode 0600. [`SecretKey::load`] refuses a file that group or others may read.
//! - Public key (`FILE.pub`, written beside it): JSON
//!   `{"format":1,"kind":"percept-ed25519-public","name":…,"public_key":"<64 hex>","fingerprint":…}`.
//! - Trust store (TOML, named by a run config's `site.trust_store`):
//!   ```toml
//!   [[steward]]
//!   name = "cn-data-office"
//!   regions = ["CN"]          # regions of collection whose manifests it may sign
//!   public_key = "<64 hex>"   # from the steward's .pub file
//!   ```
//!
//! A key is named by its fingerprint, `ed25519:` and the first 32 hex digits of the blake3 of
//! its 32 public-key bytes. Every signature signs `percept/<domain>\n` followed by the message,
//! so a signature made for one purpose (a manifest seal) is never valid for another (an audit
//! entry).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};

use crate::atomic_file::AtomicFile;
use crate::error::{DataError, Result};
use crate::manifest::{is_region_code, Manifest, ManifestSignature};

const KEY_FORMAT: u32 = 1;
const SECRET_KIND: &str = "percept-ed25519-secret";
const PUBLIC_KIND: &str = "percept-ed25519-public";

/// What a signature is for: part of the signed bytes, so signatures never cross purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureDomain {
    /// A manifest's `seal` (its content hash), signed by a data steward.
    ManifestSeal,
    /// An audit entry's `hash`, signed by the run's site.
    AuditEntry,
}

impl SignatureDomain {
    fn tag(self) -> &'static str {
        match self {
            SignatureDomain::ManifestSeal => "manifest-seal",
            SignatureDomain::AuditEntry => "audit-entry",
        }
    }

    fn message(self, message: &[u8]) -> Vec<u8> {
        let mut bytes = format!("percept/{}\n", self.tag()).into_bytes();
        bytes.extend_from_slice(message);
        bytes
    }
}

fn bad_key(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadKey {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The most a key or trust-store file may hold: a key file is a few hundred bytes, a trust
/// store a few hundred bytes per steward.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Reads a key or trust-store file: a regular file of at most [`MAX_KEY_FILE_BYTES`].
fn read_small(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let meta = file.metadata().map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() {
        return Err(bad_key(path, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(bad_key(
            path,
            "larger than 1 MiB: not a key or trust store file",
        ));
    }
    Ok(bytes)
}

/// Refuses a key file of the other kind (a secret key given where a public one is wanted, or
/// the other way round) with a message that says which file to give.
fn check_kind(path: &Path, bytes: &[u8], wanted: &str) -> Result<()> {
    let kind = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string));
    match kind.as_deref() {
        Some(k) if k == wanted => Ok(()),
        Some(SECRET_KIND) => Err(bad_key(
            path,
            "is a secret key; give the public key, the `.pub` file beside it",
        )),
        Some(PUBLIC_KIND) => Err(bad_key(
            path,
            "is a public key; signing needs the secret key (the file without `.pub`)",
        )),
        _ => Err(bad_key(
            path,
            format!(
                "is not a percept key file (no `kind` = `{wanted}`); `percept keys new` writes one"
            ),
        )),
    }
}

/// A public key: verifies signatures; named by its [`fingerprint`](Self::fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// From 64 hex digits (a `.pub` file's or a trust store's `public_key`).
    pub fn from_hex(s: &str) -> std::result::Result<PublicKey, String> {
        let bytes = unhex::<32>(s)
            .ok_or_else(|| format!("`{s}` is not a public key: expected 64 hex digits"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("`{s}` is not a valid Ed25519 public key"))?;
        Ok(PublicKey { key })
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(self.key.as_bytes())
    }

    /// `ed25519:` and the first 32 hex digits of the blake3 of the key's bytes.
    pub fn fingerprint(&self) -> String {
        let hash = blake3::hash(self.key.as_bytes()).to_hex();
        format!("ed25519:{}", &hash[..32])
    }

    /// Whether `signature` (128 hex digits) signs `message` for `domain` with this key.
    pub fn verifies(&self, domain: SignatureDomain, message: &[u8], signature: &str) -> bool {
        let Some(bytes) = unhex::<64>(signature) else {
            return false;
        };
        self.key
            .verify(&domain.message(message), &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// Loads a `.pub` file written by [`SecretKey::create`]; returns the key and its name.
    pub fn load(path: impl AsRef<Path>) -> Result<(PublicKey, String)> {
        let path = path.as_ref();
        let bytes = read_small(path)?;
        check_kind(path, &bytes, PUBLIC_KIND)?;
        let file: PublicKeyFile = serde_json::from_slice(&bytes).map_err(|e| {
            bad_key(
                path,
                format!("not a percept public key file ({e}); `percept keys new` writes one"),
            )
        })?;
        if file.kind != PUBLIC_KIND || file.format != KEY_FORMAT {
            return Err(bad_key(
                path,
                format!(
                    "`kind` is `{}` (format {}); expected `{PUBLIC_KIND}` (format {KEY_FORMAT})",
                    file.kind, file.format
                ),
            ));
        }
        let key = PublicKey::from_hex(&file.public_key).map_err(|e| bad_key(path, e))?;
        if key.fingerprint() != file.fingerprint {
            return Err(bad_key(
                path,
                format!(
                    "`fingerprint` says {} but the key's fingerprint is {}: the file was edited",
                    file.fingerprint,
                    key.fingerprint()
                ),
            ));
        }
        Ok((key, file.name))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    format: u32,
    kind: String,
    name: String,
    secret: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    format: u32,
    kind: String,
    name: String,
    public_key: String,
    fingerprint: String,
}

/// A private signing key, held in memory only while a command runs; never written to a run
/// directory, a log or an export.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    /// Shows the name and fingerprint, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("fingerprint", &self.public().fingerprint())
            .finish()
    }
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|e| {
            DataError::InvalidOptions(format!("the system's random source failed: {e}"))
        })?;
        Ok(SecretKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The name given at creation (a steward or site, for people; not checked).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// Signs `message` for `domain`: 128 hex digits.
    pub fn sign(&self, domain: SignatureDomain, message: &[u8]) -> String {
        hex(&self.key.sign(&domain.message(message)).to_bytes())
    }

    /// The public key file written beside a secret key file: `FILE.pub`.
    pub fn public_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".pub");
        path.with_file_name(name)
    }

    /// Writes the key to `path` (mode 0600) and its public half to `FILE.pub`. Refuses to
    /// replace either file: a lost key cannot sign again, and its signatures stay in use.
    pub fn create(&self, path: &Path) -> Result<PathBuf> {
        let public_path = Self::public_path(path);
        for p in [path, public_path.as_path()] {
            if p.exists() || p.is_symlink() {
                return Err(bad_key(
                    p,
                    "already exists; a key is never overwritten (its signatures are still in \
                     use): choose another file name",
                ));
            }
        }
        let secret = SecretKeyFile {
            format: KEY_FORMAT,
            kind: SECRET_KIND.into(),
            name: self.name.clone(),
            secret: hex(self.key.as_bytes()),
        };
        let public = PublicKeyFile {
            format: KEY_FORMAT,
            kind: PUBLIC_KIND.into(),
            name: self.name.clone(),
            public_key: self.public().to_hex(),
            fingerprint: self.public().fingerprint(),
        };
        let mut file = AtomicFile::create(path)?;
        // Owner-only before a byte of the secret is written.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let tmp = file.temporary_path().to_path_buf();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| DataError::io(&tmp, e))?;
        }
        let mut json = serde_json::to_vec_pretty(&secret).expect("a key file serialises");
        json.push(b'\n');
        file.write_all(&json)?;
        file.commit()?;
        let mut json = serde_json::to_vec_pretty(&public).expect("a key file serialises");
        json.push(b'\n');
        crate::atomic_file::write_atomic(&public_path, &json)?;
        Ok(public_path)
    }

    /// Loads a secret key file. Refuses one that group or others may read or write (on Unix),
    /// saying how to fix it, and anything that is not a percept secret key.
    pub fn load(path: impl AsRef<Path>) -> Result<SecretKey> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad_key(
                    path,
                    format!(
                        "is a secret key readable by others (mode {mode:03o}); a secret key \
                         must be owner-only: run `chmod 600 {}`, and if others could have \
                         read it, make a new key and retire this one",
                        path.display()
                    ),
                ));
            }
        }
        let _ = meta;
        let bytes = read_small(path)?;
        check_kind(path, &bytes, SECRET_KIND)?;
        let file: SecretKeyFile = serde_json::from_slice(&bytes).map_err(|e| {
            bad_key(
                path,
                format!("not a percept secret key file ({e}); `percept keys new` writes one"),
            )
        })?;
        if file.kind != SECRET_KIND || file.format != KEY_FORMAT {
            return Err(bad_key(
                path,
                format!(
                    "`kind` is `{}` (format {}); expected `{SECRET_KIND}` (format {KEY_FORMAT})",
                    file.kind, file.format
                ),
            ));
        }
        let seed = unhex::<32>(&file.secret)
            .ok_or_else(|| bad_key(path, "`secret` is not 64 hex digits"))?;
        Ok(SecretKey {
            name: file.name,
            key: SigningKey::from_bytes(&seed),
        })
    }
}

// Signing lives beside the keys, so the manifest module needs nothing of them.
impl Manifest {
    /// Signs the manifest's seal with a data steward's key (replacing any earlier signature);
    /// [`save`](Manifest::save) then writes it. Whoever changes the content afterwards without the
    /// key leaves a signature that no longer verifies.
    pub fn sign(&mut self, key: &SecretKey) {
        self.seal = self.content_seal();
        self.signature = Some(ManifestSignature {
            key: key.public().fingerprint(),
            steward: key.name().to_string(),
            signature: key.sign(SignatureDomain::ManifestSeal, self.seal.as_bytes()),
        });
    }
}

/// One data steward a site trusts: its key and the regions whose data it may vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steward {
    pub name: String,
    /// Regions of collection whose manifests this steward may sign.
    pub regions: Vec<String>,
    pub key: PublicKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustStoreFile {
    #[serde(default)]
    steward: Vec<StewardEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StewardEntry {
    name: String,
    regions: Vec<String>,
    public_key: String,
}

/// The stewards whose manifest signatures a site accepts, by key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustStore {
    path: PathBuf,
    stewards: BTreeMap<String, Steward>,
}

impl TrustStore {
    /// Loads and checks a trust store file; errors name the file and the steward at fault.
    pub fn load(path: impl AsRef<Path>) -> Result<TrustStore> {
        let path = path.as_ref();
        let text = String::from_utf8(read_small(path)?)
            .map_err(|_| bad_key(path, "not UTF-8 text; a trust store is TOML"))?;
        let file: TrustStoreFile = toml::from_str(&text)
            .map_err(|e| bad_key(path, format!("not a trust store: {}", e.message())))?;
        let mut stewards = BTreeMap::new();
        for (i, entry) in file.steward.into_iter().enumerate() {
            let at = format!("steward[{i}] (`{}`)", entry.name);
            let key = PublicKey::from_hex(&entry.public_key)
                .map_err(|e| bad_key(path, format!("{at}: public_key: {e}")))?;
            if entry.regions.is_empty() {
                return Err(bad_key(
                    path,
                    format!("{at}: `regions` is empty; list the regions it may sign for"),
                ));
            }
            if let Some(r) = entry.regions.iter().find(|r| !is_region_code(r)) {
                return Err(bad_key(
                    path,
                    format!(
                        "{at}: region `{r}` is not an ISO 3166-1 alpha-2 code (two uppercase \
                         letters such as `DE`)"
                    ),
                ));
            }
            let fingerprint = key.fingerprint();
            let steward = Steward {
                name: entry.name,
                regions: entry.regions,
                key,
            };
            if stewards.insert(fingerprint.clone(), steward).is_some() {
                return Err(bad_key(
                    path,
                    format!("{at}: key {fingerprint} is listed twice; list each key once"),
                ));
            }
        }
        if stewards.is_empty() {
            return Err(bad_key(
                path,
                "lists no [[steward]]: a trust store that trusts nobody refuses every dataset",
            ));
        }
        Ok(TrustStore {
            path: path.to_path_buf(),
            stewards,
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The steward whose key has `fingerprint`.
    pub fn steward(&self, fingerprint: &str) -> Option<&Steward> {
        self.stewards.get(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_key_message_and_domain() {
        let a = SecretKey::generate("a").unwrap();
        let b = SecretKey::generate("b").unwrap();
        let sig = a.sign(SignatureDomain::ManifestSeal, b"seal");
        assert_eq!(sig.len(), 128);
        assert!(a
            .public()
            .verifies(SignatureDomain::ManifestSeal, b"seal", &sig));
        assert!(!a
            .public()
            .verifies(SignatureDomain::ManifestSeal, b"seaL", &sig));
        assert!(!a
            .public()
            .verifies(SignatureDomain::AuditEntry, b"seal", &sig));
        assert!(!b
            .public()
            .verifies(SignatureDomain::ManifestSeal, b"seal", &sig));
        assert!(!a
            .public()
            .verifies(SignatureDomain::ManifestSeal, b"seal", "zz"));
        let fp = a.public().fingerprint();
        assert!(fp.starts_with("ed25519:") && fp.len() == 8 + 32, "{fp}");
        assert_ne!(fp, b.public().fingerprint());
    }

    #[test]
    fn key_files_round_trip_owner_only_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steward.key");
        let key = SecretKey::generate("cn-office").unwrap();
        let public_path = key.create(&path).unwrap();
        assert_eq!(public_path, dir.path().join("steward.key.pub"));
        let loaded = SecretKey::load(&path).unwrap();
        assert_eq!(loaded.public(), key.public());
        assert_eq!(loaded.name(), "cn-office");
        let (public, name) = PublicKey::load(&public_path).unwrap();
        assert_eq!((public, name.as_str()), (key.public(), "cn-office"));
        // The secret is in the key file only, never in the public one or in Debug output.
        let secret_hex = hex(key.key.as_bytes());
        assert!(!std::fs::read_to_string(&public_path)
            .unwrap()
            .contains(&secret_hex));
        assert!(!format!("{key:?}").contains(&secret_hex));

        let before = std::fs::read(&path).unwrap();
        let err = SecretKey::generate("x").unwrap().create(&path).unwrap_err();
        assert!(err.to_string().contains("never overwritten"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = SecretKey::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("mode 644") && err.contains("chmod 600"),
                "{err}"
            );
        }
        // A public key is not a secret key, and the other way round.
        std::fs::write(
            dir.path().join("wrong.key"),
            std::fs::read(&public_path).unwrap(),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join("wrong.key");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = SecretKey::load(dir.path().join("wrong.key"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a public key; signing needs the secret key"),
            "{err}"
        );
        let err = PublicKey::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("is a secret key; give the public key"),
            "{err}"
        );
    }

    #[test]
    fn truncated_flipped_and_oversized_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SecretKey::generate("k").unwrap();
        let public_path = key.create(&path).unwrap();
        let bytes = std::fs::read(&public_path).unwrap();
        let damaged = dir.path().join("damaged.pub");
        let mut flipped = bytes.clone();
        // A digit of the public key changed: the fingerprint no longer matches.
        let at = String::from_utf8_lossy(&bytes).find("public_key").unwrap() + 20;
        flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
        for (content, want) in [
            (bytes[..bytes.len() / 2].to_vec(), "not a percept key file"),
            (flipped, "the file was edited"),
            (
                vec![b' '; (MAX_KEY_FILE_BYTES + 1) as usize],
                "larger than 1 MiB",
            ),
        ] {
            std::fs::write(&damaged, &content).unwrap();
            let err = PublicKey::load(&damaged).unwrap_err().to_string();
            // A changed digit may also leave no valid curve point (the key is random).
            let found = err.contains(want) || err.contains("not a valid Ed25519 public key");
            assert!(
                found && err.contains("damaged.pub"),
                "`{want}` not in: {err}"
            );
        }
        let err = TrustStore::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn trust_store_loads_stewards_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate("cn").unwrap();
        let path = dir.path().join("trust.toml");
        std::fs::write(
            &path,
            format!(
                "[[steward]]\nname = \"cn-office\"\nregions = [\"CN\"]\npublic_key = \"{}\"\n",
                key.public().to_hex()
            ),
        )
        .unwrap();
        let store = TrustStore::load(&path).unwrap();
        let steward = store.steward(&key.public().fingerprint()).unwrap();
        assert_eq!(
            (steward.name.as_str(), steward.regions.clone()),
            ("cn-office", vec!["CN".to_string()])
        );
        for (text, want) in [
            (
                "[[steward]]\nname = \"x\"\nregions = [\"china\"]\npublic_key = \"KEY\"\n",
                "region `china`",
            ),
            (
                "[[steward]]\nname = \"x\"\nregions = [\"CN\"]\npublic_key = \"abc\"\n",
                "steward[0] (`x`): public_key",
            ),
            (
                "[[steward]]\nname = \"x\"\nregions = []\npublic_key = \"KEY\"\n",
                "`regions` is empty",
            ),
            ("", "lists no [[steward]]"),
            ("[[stewards]]\n", "not a trust store"),
        ] {
            std::fs::write(&path, text.replace("KEY", &key.public().to_hex())).unwrap();
            let err = TrustStore::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("trust.toml"),
                "`{want}` not in: {err}"
            );
        }
    }
}
