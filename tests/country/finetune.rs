//! Country fine-tuning: class rows mapped from the base, architecture and residency refusals,
//! freezing, distillation (weight 0 is a plain fine-tune, bit for bit) and L2-SP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use percept::data::{CountryProfile, Split};
use percept::eval::inputs::batch_tensors;
use percept::eval::model_file::{read_model_card, save_model};
use percept::model::{ModelSize, PerceptionNet, PerceptionNetConfig};
use percept::synth::SYNTH_CLASSES;
use percept::train::config::RunConfig;
use percept::train::data::open_for_site;
use percept::train::finetune::{class_rows_of, FinetuneBase};
use percept::train::DeviceSpec;

use crate::common;
use crate::common::{step_loss_objects, synth, H, W};

type B = Flex;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A base model file: a seeded (untrained) nano network of `classes`, trained "at DE".
fn base_model(dir: &Path, classes: &[String], seed: u64) -> (PathBuf, PerceptionNet<B>) {
    let card = common::model_card(
        classes,
        common::provenance("DE", "global", &["DE", "US"], 100),
    );
    let net: PerceptionNet<B> = card.architecture.init_seeded(seed, &Default::default());
    let path = dir.join(format!("base-{seed}.safetensors"));
    save_model(&net, &card, &path).unwrap();
    (path, net)
}

/// A profile file for the region `code` whose classes are `classes` (TOML `[[classes]]`).
fn profile_file(dir: &Path, code: &str, classes: &str) -> PathBuf {
    let text = format!(
        r#"
code = "{code}"
name = "Testland"
[traffic]
side = "left"
source = "test"
[markings]
centre_line = "white"
edge_lines = "solid"
source = "test"
[signs]
warning = "red-triangle"
stop = "octagon"
source = "test"
[input]
width = {W}
height = {H}
why = "test"
{classes}
"#
    );
    let path = dir.join(format!("profile-{code}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A profile that keeps the synthetic classes as they are.
fn identity_profile(dir: &Path, code: &str) -> PathBuf {
    let classes: String = SYNTH_CLASSES
        .iter()
        .map(|c| format!("[[classes]]\nname = \"{c}\"\nfrom = [\"{c}\"]\n"))
        .collect();
    profile_file(dir, code, &classes)
}

/// A fine-tune config: `common::run_config` plus `[finetune]` (`extra` appended to it).
fn finetune_config(
    dir: &Path,
    data: &Path,
    site: &str,
    base: &Path,
    profile: &Path,
    name: &str,
    extra: &str,
) -> RunConfig {
    let mut text = common::run_config(dir, &[data], site, 3, "").to_toml();
    text.push_str(&format!(
        "\n[finetune]\nbase = {:?}\nprofile = {:?}\n{extra}\n",
        base.display().to_string(),
        profile.display().to_string()
    ));
    let mut config = RunConfig::parse(&text, Path::new("finetune.toml")).unwrap();
    config.name = name.into();
    config
}

/// Every tensor of a model file, by name, as raw bytes.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn class_rows_are_copied_merged_or_fresh_and_everything_else_is_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let global = strings(&SYNTH_CLASSES);
    let (base_path, base_net) = base_model(dir.path(), &global, 1);
    // car kept, truck + bus merged, cyclist renamed, a new class; the rest dropped.
    let profile = profile_file(
        dir.path(),
        "IN",
        r#"
[[classes]]
name = "car"
from = ["car"]
[[classes]]
name = "heavy vehicle"
from = ["truck", "bus"]
source = "test"
[[classes]]
name = "two-wheeler"
from = ["cyclist"]
[[classes]]
name = "auto-rickshaw"
shape = "auto-rickshaw"
source = "test"
"#,
    );
    let data = synth(dir.path(), "IN", 2, 1);
    let config = finetune_config(dir.path(), &data, "IN", &base_path, &profile, "ft", "");
    let base = FinetuneBase::open(&config, CountryProfile::load(&profile).unwrap()).unwrap();
    assert_eq!(
        base.mapping.class_names(),
        strings(&["car", "heavy vehicle", "two-wheeler", "auto-rickshaw"])
    );
    assert_eq!(
        base.mapping.dropped,
        strings(&["pedestrian", "traffic light", "traffic sign"])
    );
    let fresh: PerceptionNet<B> =
        PerceptionNetConfig::new(ModelSize::Nano, 4).init_seeded(9, &Default::default());
    let fresh_rows = class_rows_of(&fresh);
    let student = base.student(fresh).unwrap();
    let (rows, base_rows) = (class_rows_of(&student), class_rows_of(&base_net));
    assert_eq!(rows.len(), 6);
    for (name, r) in &rows {
        let b = &base_rows[name];
        let width = b.values.len() / 7;
        let row = |v: &[f32], i: usize| v[i * width..(i + 1) * width].to_vec();
        assert_eq!(r.shape[0], 4, "{name}");
        // Kept and renamed rows are copies.
        assert_eq!(row(&r.values, 0), row(&b.values, 0), "{name}: car");
        assert_eq!(row(&r.values, 2), row(&b.values, 4), "{name}: cyclist");
        if name.ends_with("weight") {
            let mean: Vec<f32> = (0..width)
                .map(|k| (b.values[width + k] + b.values[2 * width + k]) / 2.0)
                .collect();
            assert_eq!(row(&r.values, 1), mean, "{name}: truck + bus");
        } else {
            let s = |x: f32| 1.0 / (1.0 + (-x as f64).exp());
            let p = 1.0 - (1.0 - s(b.values[1])) * (1.0 - s(b.values[2]));
            let want = (p / (1.0 - p)).ln() as f32;
            assert!(
                (r.values[1] - want).abs() < 1e-5,
                "{name}: {} vs {want}",
                r.values[1]
            );
        }
        // The new class keeps its fresh init, which no base row equals.
        let new = row(&r.values, 3);
        assert_eq!(new, row(&fresh_rows[name].values, 3), "{name}: new");
        assert!((0..7).all(|g| row(&b.values, g) != new), "{name}");
    }
    // Everything else is the base's: the segmentation outputs agree exactly.
    let dataset = open_for_site(&data, Split::Val, "IN").unwrap();
    let batch = percept::data::collate(&[dataset.get(0).unwrap()], W, H);
    let (images, _) = batch_tensors::<B>(&batch, &Default::default());
    let (a, b) = (student.forward(images.clone()), base_net.forward(images));
    assert_eq!(
        a.drivable.unwrap().into_data(),
        b.drivable.unwrap().into_data()
    );
    // The box branch too.
    assert_eq!(
        a.detection.unwrap().box_logits.into_data(),
        b.detection.unwrap().box_logits.into_data()
    );
}

#[test]
fn an_architecture_that_differs_from_the_base_is_refused_with_every_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, _) = base_model(dir.path(), &strings(&SYNTH_CLASSES), 1);
    let profile = identity_profile(dir.path(), "JP");
    let data = synth(dir.path(), "JP", 2, 1);
    let mut config = finetune_config(dir.path(), &data, "JP", &base_path, &profile, "ft", "");
    config.model.size = ModelSize::Small;
    config.model.tasks.lanes = false;
    let e = match percept::finetune_cmd::finetune(&config, DeviceSpec::Cpu) {
        Ok(_) => panic!("a small fine-tune of a nano base was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("model.size: the base is nano, the config says small"),
        "{e}"
    );
    assert!(
        e.contains("model.tasks.lanes: on in the base, off in the config"),
        "{e}"
    );
    assert!(e.contains(&base_path.display().to_string()), "{e}");
    // Nothing of the run was written.
    assert!(!dir.path().join("runs/ft").exists());
}

#[test]
fn a_site_that_may_not_process_the_country_data_is_refused_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, _) = base_model(dir.path(), &strings(&SYNTH_CLASSES), 1);
    let profile = identity_profile(dir.path(), "JP");
    let data = synth(dir.path(), "JP", 2, 1);
    // A German site fine-tuning on Japanese frames.
    let config = finetune_config(dir.path(), &data, "DE", &base_path, &profile, "ft", "");
    let e = match percept::finetune_cmd::finetune(&config, DeviceSpec::Cpu) {
        Ok(_) => panic!("Japanese data was processed at a German site"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("JP") && e.contains("DE"), "{e}");
    let log = std::fs::read_to_string(dir.path().join("runs/ft/audit.jsonl")).unwrap();
    assert!(
        log.contains("\"guard_decision\"") && log.contains("\"allowed\":false"),
        "{log}"
    );
    assert!(!log.contains("\"shard_opened\""), "{log}");
    assert!(!dir.path().join("runs/ft/checkpoints").exists());
}

/// Trains a 3-step fine-tune of the base at seed 1 on `data`; returns the run directory.
fn run(dir: &Path, data: &Path, name: &str, extra: &str) -> PathBuf {
    let base = dir.join("base-1.safetensors");
    if !base.exists() {
        base_model(dir, &strings(&SYNTH_CLASSES), 1);
    }
    let profile = identity_profile(dir, "JP");
    let config = finetune_config(dir, data, "JP", &base, &profile, name, extra);
    let outcome = percept::finetune_cmd::finetune(&config, DeviceSpec::Cpu).unwrap();
    assert_eq!(outcome.summary.steps, 3);
    outcome.summary.run_dir
}

#[test]
fn distillation_at_weight_zero_is_a_plain_finetune_bit_for_bit_and_acts_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "JP", 6, 2);
    let plain = run(dir.path(), &data, "plain", "");
    let zero = run(
        dir.path(),
        &data,
        "zero",
        "[finetune.distillation]\nweight = 0.0",
    );
    let one = run(
        dir.path(),
        &data,
        "one",
        "[finetune.distillation]\nweight = 1.0",
    );
    let final_of = |run: &Path| tensors(&run.join("checkpoints/final.safetensors"));
    assert_eq!(final_of(&plain), final_of(&zero));
    assert_ne!(final_of(&plain), final_of(&one));
    // Weight 0 still computes and logs the term (a forgetting monitor); with weight 1 the
    // student is closer to the teacher after its first update. (Not 0 at step 1: the student's batch norms use
    // the batch's statistics, the teacher's its running ones.)
    let kd = |run: &Path| -> Vec<f64> {
        step_loss_objects(run)
            .iter()
            .map(|l| l["distillation"].as_f64().unwrap())
            .collect()
    };
    let (watched, applied) = (kd(&zero), kd(&one));
    assert!(
        watched.iter().all(|v| v.is_finite() && *v > 0.0),
        "{watched:?}"
    );
    assert_eq!(watched[0], applied[0]);
    assert!(applied[1] < watched[1], "{applied:?} vs {watched:?}");
    assert!(step_loss_objects(&plain)[0].get("distillation").is_none());
    // The before/after report compares base and fine-tuned on the held-out split.
    let md = std::fs::read_to_string(plain.join("before-after/compare.md")).unwrap();
    assert!(md.contains("base") && md.contains("fine-tuned"), "{md}");
    // Provenance: the base nested whole, the fine-tune's settings.
    let card = read_model_card(&one.join("checkpoints/final.safetensors")).unwrap();
    let link = card.provenance.base.as_ref().unwrap();
    assert!(link.verifies());
    assert_eq!(link.provenance.site_name, "global");
    let f = card.provenance.finetune.as_ref().unwrap();
    assert_eq!((f.profile.as_str(), f.distillation), ("JP", Some(1.0)));
    assert_eq!(card.provenance.regions, strings(&["DE", "JP", "US"]));
}

#[test]
fn a_frozen_backbone_keeps_the_base_weights_and_statistics_and_l2sp_pulls_by_its_formula() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "JP", 6, 2);
    let frozen = run(dir.path(), &data, "frozen", "freeze = \"backbone\"");
    let base = tensors(&dir.path().join("base-1.safetensors"));
    let tuned = tensors(&frozen.join("checkpoints/final.safetensors"));
    let (mut same, mut moved) = (0, 0);
    for (name, bytes) in &base {
        if name.starts_with("backbone.") {
            assert_eq!(&tuned[name], bytes, "{name} moved");
            same += 1;
        } else if name.starts_with("neck.") && tuned[name] != *bytes {
            moved += 1;
        }
    }
    assert!(same > 50 && moved > 10, "{same} {moved}");

    // L2-SP: the penalty logged at step 2 is alpha / 2 * |w1 - w0|^2 over the parameters
    // (not the class outputs, not batch-norm statistics), w1 being step 1's weights.
    let alpha = 0.5;
    let pulled = run(dir.path(), &data, "l2sp", &format!("l2sp = {alpha}"));
    let w1 = tensors(&pulled.join("checkpoints/step-000001.safetensors"));
    let mut sq = 0.0f64;
    for (name, bytes) in &base {
        if name.contains("cls_out") || name.contains("running_") {
            continue;
        }
        for (a, b) in floats(&w1[name]).iter().zip(floats(bytes)) {
            sq += ((a - b) as f64).powi(2);
        }
    }
    let logged: Vec<f64> = step_loss_objects(&pulled)
        .iter()
        .map(|l| l["l2sp"].as_f64().unwrap())
        .collect();
    assert_eq!(logged[0], 0.0);
    let want = alpha / 2.0 * sq;
    assert!(
        want > 0.0 && (logged[1] - want).abs() <= 1e-3 * want,
        "{logged:?} vs {want}"
    );
}

#[test]
fn a_resumed_finetune_keeps_its_base_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "JP", 6, 2);
    let run_dir = run(
        dir.path(),
        &data,
        "resumable",
        "[finetune.distillation]\nweight = 1.0",
    );
    let uninterrupted = tensors(&run_dir.join("checkpoints/final.safetensors"));
    // As if the process had died after step 2: the final checkpoint never happened.
    for entry in std::fs::read_dir(run_dir.join("checkpoints")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("final.")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    // Another file where the base was: the teacher would not be the run's. Refused, and
    // nothing changes.
    let base = dir.path().join("base-1.safetensors");
    let original = std::fs::read(&base).unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_base, _) = base_model(&other, &strings(&SYNTH_CLASSES), 2);
    std::fs::copy(&other_base, &base).unwrap();
    let e = match percept::finetune_cmd::finetune_resume(&run_dir, DeviceSpec::Cpu) {
        Ok(_) => panic!("resumed with another base"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("is not the one this run started from"), "{e}");
    assert!(!run_dir.join("checkpoints/final.safetensors").exists());
    // With the base back, the resumed run ends where the uninterrupted one did.
    std::fs::write(&base, original).unwrap();
    let outcome = percept::finetune_cmd::finetune_resume(&run_dir, DeviceSpec::Cpu).unwrap();
    assert_eq!((outcome.summary.start_step, outcome.summary.steps), (2, 3));
    assert_eq!(
        tensors(&run_dir.join("checkpoints/final.safetensors")),
        uninterrupted
    );
}

#[test]
fn the_cli_refuses_a_config_without_a_finetune_table_naming_it() {
    let out = common::percept(&[
        "finetune",
        "--base",
        "model.safetensors",
        "--config",
        "configs/smoke.toml",
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("configs/smoke.toml has no [finetune] table")
            && out.stderr.contains("finetune.profile"),
        "{}",
        out.stderr
    );
}
