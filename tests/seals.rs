//! Signed data and signed audit logs through the `percept` binary: a steward signs a dataset,
//! a site with a trust store trains on it with its own key, and what an attacker without the
//! keys can do (relabel and reseal a manifest, rewrite the audit log) is refused or caught.

mod common;

use std::path::{Path, PathBuf};

use common::{percept, run_config, synth};
use percept::data::audit::canonical_json;
use percept::data::{Manifest, PublicKey};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `percept keys new`; returns the secret key path and the public key.
fn new_key(dir: &Path, file: &str, name: &str) -> (PathBuf, PublicKey) {
    let path = dir.join(file);
    let out = percept(&["keys", "new", "--out", s(&path), "--name", name]);
    assert!(out.ok, "{}", out.stderr);
    let (public, loaded_name) = PublicKey::load(dir.join(format!("{file}.pub"))).unwrap();
    assert_eq!(loaded_name, name);
    assert!(out.stdout.contains(&public.fingerprint()), "{}", out.stdout);
    assert!(out.stdout.contains(&public.to_hex()), "{}", out.stdout);
    (path, public)
}

/// A run config at `region` with the site's trust store and key, written to `dir/<name>.toml`.
fn site_config(dir: &Path, data: &Path, region: &str, trust: &Path, key: &Path) -> PathBuf {
    let mut config = run_config(dir, &[data], region, 1, "");
    config.name = format!("run-{region}");
    config.checkpoint.every = 0;
    config.site.trust_store = Some(trust.to_path_buf());
    config.site.key = Some(key.to_path_buf());
    let path = dir.join(format!("{}.toml", config.name));
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// Rewrites the audit log's lines from `from` on as someone without the site key would: the
/// edit applied, every entry rehashed and relinked; with `strip`, signatures and the site key
/// removed, else the old signatures left in place.
fn rewrite_log(log: &Path, from: usize, strip: bool, edit: impl Fn(&mut Value)) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    edit(&mut lines[from]);
    for i in from..lines.len() {
        let prev = if i == 0 {
            "0".repeat(64)
        } else {
            lines[i - 1]["hash"].as_str().unwrap().to_string()
        };
        let entry = lines[i].as_object_mut().unwrap();
        entry.insert("prev".into(), Value::String(prev));
        let sig = entry.remove("sig");
        entry.remove("hash");
        if strip {
            if let Some(event) = entry.get_mut("event").and_then(Value::as_object_mut) {
                event.remove("site_key");
            }
        }
        let hash = blake3::hash(canonical_json(&lines[i]).as_bytes())
            .to_hex()
            .to_string();
        let entry = lines[i].as_object_mut().unwrap();
        entry.insert("hash".into(), Value::String(hash));
        if let (Some(sig), false) = (sig, strip) {
            entry.insert("sig".into(), sig);
        }
    }
    let mut out: String = lines
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    std::fs::write(log, out).unwrap();
}

#[test]
fn signed_data_and_a_signed_audit_log_hold_and_forgeries_without_the_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (de_steward, de_public) = new_key(&keys, "de-steward.key", "de-office");
    let (_, cn_public) = new_key(&keys, "cn-steward.key", "cn-office");
    let (site_key, site_public) = new_key(&keys, "site.key", "munich-1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&site_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A key file is never overwritten.
    let again = percept(&["keys", "new", "--out", s(&site_key), "--name", "x"]);
    assert!(
        !again.ok && again.stderr.contains("never overwritten"),
        "{}",
        again.stderr
    );
    let trust = dir.path().join("trust.toml");
    std::fs::write(
        &trust,
        format!(
            "[[steward]]\nname = \"de-office\"\nregions = [\"DE\"]\npublic_key = \"{}\"\n\n\
             [[steward]]\nname = \"cn-office\"\nregions = [\"CN\"]\npublic_key = \"{}\"\n",
            de_public.to_hex(),
            cn_public.to_hex()
        ),
    )
    .unwrap();

    // An unsigned dataset is refused at a site with a trust store, before any shard is read.
    let data = synth(dir.path(), "DE", 4, 1);
    let config = site_config(dir.path(), &data, "DE", &trust, &site_key);
    let out = percept(&["train", "--config", s(&config)]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("unsigned") && out.stderr.contains("percept sign"),
        "{}",
        out.stderr
    );
    let run = dir.path().join("runs/run-DE");
    assert!(!run.join("checkpoints").exists());
    let log = std::fs::read_to_string(run.join("audit.jsonl")).unwrap();
    assert!(!log.contains("shard_opened"), "{log}");
    std::fs::remove_dir_all(&run).unwrap();

    // Signed by the DE steward: the DE site trains on it with its own key.
    let signed = percept(&["sign", s(&data), "--key", s(&de_steward)]);
    assert!(signed.ok, "{}", signed.stderr);
    assert!(
        signed.stdout.contains(&de_public.fingerprint()),
        "{}",
        signed.stdout
    );
    let out = percept(&["train", "--config", s(&config)]);
    assert!(out.ok, "{}", out.stderr);
    let verify = percept(&[
        "audit",
        "verify",
        s(&run),
        "--key",
        &format!("{}.pub", s(&site_key)),
    ]);
    assert!(verify.ok, "{}", verify.stderr);
    assert!(
        verify.stdout.contains(&format!(
            "every entry is signed by the site key {}",
            site_public.fingerprint()
        )),
        "{}",
        verify.stdout
    );

    // The export's provenance carries both fingerprints, and `inspect` shows them.
    let model = dir.path().join("model.safetensors");
    let checkpoint = run.join("checkpoints/final.safetensors");
    let out = percept(&["export", "--checkpoint", s(&checkpoint), "--out", s(&model)]);
    assert!(out.ok, "{}", out.stderr);
    let inspect = percept(&["inspect", s(&model)]);
    assert!(inspect.ok, "{}", inspect.stderr);
    assert!(
        inspect.stdout.contains(&format!(
            "signed by trusted steward key {}",
            de_public.fingerprint()
        )),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains(&format!(
            "{} (signs the run's audit log)",
            site_public.fingerprint()
        )),
        "{}",
        inspect.stdout
    );

    // The signed head anchors the log; `verify --head` checks the log still extends it.
    let head = dir.path().join("head.json");
    let out = percept(&["audit", "export-head", s(&run), "--out", s(&head)]);
    assert!(out.ok, "{}", out.stderr);
    let verify = percept(&["audit", "verify", s(&run), "--head", s(&head)]);
    assert!(verify.ok, "{}", verify.stderr);
    assert!(
        verify.stdout.contains("head.json is in the log"),
        "{}",
        verify.stdout
    );

    // No private key in the run directory, its log or the export.
    let secret = |p: &Path| {
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["secret"].as_str().unwrap().to_string()
    };
    let secrets = [secret(&site_key), secret(&de_steward)];
    let mut files = vec![model.clone(), head.clone()];
    let mut dirs = vec![run.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for f in &files {
        let bytes = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        for secret in &secrets {
            assert!(
                !bytes.contains(secret.as_str()),
                "a secret key is in {}",
                f.display()
            );
        }
    }

    // The audit log rewritten without the site key (an entry edited, the chain rehashed and
    // relinked) fails verification at the edited entry...
    let log = run.join("audit.jsonl");
    let original = std::fs::read(&log).unwrap();
    rewrite_log(&log, 1, false, |v| {
        v["event"]["reason"] = Value::from("all clear");
    });
    let verify = percept(&["audit", "verify", s(&run)]);
    assert!(!verify.ok);
    assert!(
        verify.stderr.contains("line 2 (seq 1)") && verify.stderr.contains("without the site key"),
        "{}",
        verify.stderr
    );
    // ... and, stripped of every signature, is no longer the site's log.
    std::fs::write(&log, &original).unwrap();
    rewrite_log(&log, 0, true, |_| {});
    let pubkey = format!("{}.pub", s(&site_key));
    let verify = percept(&["audit", "verify", s(&run), "--key", &pubkey]);
    assert!(!verify.ok);
    assert!(
        verify.stderr.contains("is unsigned, not by the site key"),
        "{}",
        verify.stderr
    );
    let verify = percept(&["audit", "verify", s(&run), "--head", s(&head)]);
    assert!(!verify.ok, "{}", verify.stdout);
    std::fs::write(&log, &original).unwrap();

    // A DE manifest relabelled as CN and resealed without the steward's key: refused at a CN
    // site, naming the key, before any shard byte is read.
    let mut forged = Manifest::load_dir(&data).unwrap();
    forged.region = "CN".into();
    forged.policy.processing_regions = vec!["CN".into()];
    forged.save(data.join("manifest.json")).unwrap();
    let cn_config = site_config(dir.path(), &data, "CN", &trust, &site_key);
    let out = percept(&["train", "--config", s(&cn_config)]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("does not match the manifest's content")
            && out.stderr.contains(&de_public.fingerprint()),
        "{}",
        out.stderr
    );
    let cn_log = std::fs::read_to_string(dir.path().join("runs/run-CN/audit.jsonl")).unwrap();
    assert!(!cn_log.contains("shard_opened"), "{cn_log}");

    // A site key that others may read is refused, saying how to fix it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&site_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = percept(&["train", "--config", s(&cn_config)]);
        assert!(!out.ok);
        assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    }
}
