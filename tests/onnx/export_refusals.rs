//! What `percept export --format onnx` keeps (the model card and provenance, a fine-tune's
//! chain included) and what it refuses: INT8 of an untrained model, calibration data the site
//! may not process (before a frame is read), flags that do not fit the format.

use std::path::Path;

use burn::backend::Flex;
use percept::data::ClassMapping;
use percept::eval::model_file::{
    save_model, BaseLink, DatasetRef, FinetuneRecord, ModelCard, Provenance,
};
use percept::model::PerceptionNetConfig;
use percept::onnx::{metadata, read_model};
use percept::synth::SYNTH_CLASSES;

use crate::common::{model_card, percept, provenance, synth};
use crate::parity::export;

fn classes() -> Vec<String> {
    SYNTH_CLASSES.iter().map(|c| c.to_string()).collect()
}

/// A DE site's provenance of `steps` steps over one DE dataset.
fn provenance_de(steps: usize) -> Provenance {
    let mut p = provenance("DE", "site-de", &["DE"], steps);
    p.datasets.push(dataset("DE"));
    p
}

fn dataset(region: &str) -> DatasetRef {
    DatasetRef {
        name: format!("test-{region}"),
        region: region.into(),
        manifest_hash: "2".repeat(64),
        signed_by: None,
    }
}

/// A model file of a seeded, never-trained nano network with `card`.
fn model(dir: &Path, name: &str, card: &ModelCard) -> std::path::PathBuf {
    let net = PerceptionNetConfig::init_seeded::<Flex>(&card.architecture, 4, &Default::default());
    let path = dir.join(format!("{name}.safetensors"));
    save_model(&net, card, &path).unwrap();
    path
}

#[test]
fn a_fine_tuned_models_provenance_is_in_the_onnx_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let mut base_p = provenance("US", "global-us", &["DE", "US"], 500);
    base_p.datasets.push(dataset("US"));
    let base = model_card(&classes(), base_p);
    let mut p = provenance("JP", "site-jp", &["JP"], 40);
    p.datasets.push(dataset("JP"));
    p.base_checkpoint = Some("3".repeat(64));
    p.base = Some(Box::new(BaseLink::of(&base)));
    p.finetune = Some(FinetuneRecord {
        profile: "JP".into(),
        profile_hash: "4".repeat(64),
        class_mapping: ClassMapping::identity(&classes()),
        freeze: "backbone".into(),
        freeze_norm_statistics: true,
        distillation: Some(1.0),
        l2sp: None,
    });
    let card = model_card(&classes(), p);
    let file = model(tmp.path(), "ft", &card);
    let out = tmp.path().join("ft.onnx");
    let run = export(&file, &out, &[]);
    assert!(run.ok, "{}", run.stderr);
    let onnx = read_model(&std::fs::read(&out).unwrap()).unwrap();
    let meta = metadata(&onnx);
    let json = &meta
        .iter()
        .find(|(k, _)| k == "percept.model_card")
        .unwrap()
        .1;
    let written: ModelCard = serde_json::from_str(json).unwrap();
    assert_eq!(written, card);
    assert!(written.provenance.base.as_ref().unwrap().verifies());
    let record: serde_json::Value =
        serde_json::from_str(&meta.iter().find(|(k, _)| k == "percept.export").unwrap().1).unwrap();
    assert_eq!(record["precision"], "fp32");
    assert_eq!(record["opset"], 17);
    let source = blake3::hash(&std::fs::read(&file).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(record["source"], source.as_str());
    // `percept inspect` reads it from the graph and verifies the chain.
    let shown = percept(&["inspect", out.to_str().unwrap()]);
    assert!(shown.ok, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("\"precision\":\"fp32\""),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("link 2 -> 1: verifies"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("profile JP"), "{}", shown.stdout);
}

#[test]
fn int8_of_an_untrained_model_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), "DE", 4, 1);
    let data = data.to_str().unwrap();
    // Zero steps in the provenance.
    let file = model(
        tmp.path(),
        "fresh",
        &model_card(&classes(), provenance_de(0)),
    );
    let out = tmp.path().join("fresh.onnx");
    let run = export(
        &file,
        &out,
        &["--precision", "int8", "--calibration-data", data],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("untrained") && run.stderr.contains("0 training steps"),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
    // Steps recorded, but batch norms never saw data.
    let card = model_card(&classes(), provenance_de(100));
    let file = model(tmp.path(), "claims-trained", &card);
    let run = export(
        &file,
        &out,
        &["--precision", "int8", "--calibration-data", data],
    );
    assert!(!run.ok);
    assert!(run.stderr.contains("initial statistics"), "{}", run.stderr);
    assert!(!out.exists());
    // fp32 and fp16 of the same file are fine.
    let run = export(&file, &out, &["--precision", "fp16"]);
    assert!(run.ok, "{}", run.stderr);
}

#[test]
fn calibration_data_the_site_may_not_process_is_refused_before_a_frame_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    // Chinese frames (processed in CN only) for a model of the German site.
    let data = synth(tmp.path(), "CN", 4, 2);
    // With every shard gone, reading a frame would fail differently: the refusal comes first.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "shard") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let card = model_card(&classes(), provenance_de(100));
    let net = crate::parity::network(card.architecture.tasks, classes().len(), 6);
    let file = tmp.path().join("de.safetensors");
    save_model(&net, &card, &file).unwrap();
    let out = tmp.path().join("de.onnx");
    let data = data.to_str().unwrap();
    let run = export(
        &file,
        &out,
        &["--precision", "int8", "--calibration-data", data],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("CN") && run.stderr.contains("DE"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("residency"), "{}", run.stderr);
    assert!(!out.exists());
}

#[test]
fn flags_that_do_not_fit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = model(tmp.path(), "m", &model_card(&classes(), provenance_de(100)));
    let out = tmp.path().join("m.onnx");
    let run = export(&file, &out, &["--opset", "11"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("opset 11") && run.stderr.contains("13 to 21"),
        "{}",
        run.stderr
    );
    let run = export(&file, &out, &["--precision", "int8"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("--calibration-data"), "{}", run.stderr);
    let data = synth(tmp.path(), "DE", 4, 1);
    let run = export(&file, &out, &["--calibration-data", data.to_str().unwrap()]);
    assert!(!run.ok);
    assert!(run.stderr.contains("--precision int8"), "{}", run.stderr);
    assert!(!out.exists());
    let run = percept(&[
        "export",
        "--checkpoint",
        file.to_str().unwrap(),
        "--out",
        tmp.path().join("m2.safetensors").to_str().unwrap(),
        "--precision",
        "fp16",
    ]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("--precision is for --format onnx"),
        "{}",
        run.stderr
    );
}
