//! `percept compare` on hand-made eval.json files (the table's values and differences, a
//! report with an extra class, files that are not eval reports), and `percept eval` of models
//! whose classes differ from the dataset's (a fine-tune's class mapping, names, none shared),
//! whose reports `compare` then joins.

use crate::common;

use std::path::{Path, PathBuf};

use percept::data::{ClassMapping, ClassOrigin};
use percept::eval::compare::{compare_reports, read_eval_report, RowKind};
use percept::eval::eval::EvalReport;
use percept::eval::model_file::{save_model, FinetuneRecord};
use serde_json::{json, Value};

use crate::common::percept;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An eval.json: `classes` with their AP@0.5 (`None`: no ground truth), the mAPs, drivable
/// mIoU and lane IoU.
fn eval_json(classes: &[(&str, Option<f64>)], map: (f64, f64), drivable: f64, lanes: f64) -> Value {
    let seg = |iou: f64| {
        json!({ "iou": iou, "miou": iou, "pixel_recall": 0.9, "balanced_accuracy": 0.8,
                "confusion": [[10, 1], [1, 5]] })
    };
    let per_class: Vec<Value> = classes
        .iter()
        .enumerate()
        .map(|(i, (_, ap))| {
            json!({ "class": i, "ap50": ap, "ap50_95": ap.map(|a| a / 2.0),
                    "num_gt": if ap.is_some() { 10 } else { 0 }, "num_det": 12,
                    "recall50": ap, "precision50": [] })
        })
        .collect();
    json!({
        "images": 50,
        "resolution": "original",
        "input": [96, 64],
        "detection": {
            "classes": classes.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "metrics": { "per_class": per_class, "map50": map.0, "map50_95": map.1 },
            "recall50_at_threshold": 0.5,
            "operating_threshold": 0.25,
            "vehicle_ap50": null,
        },
        "drivable": seg(drivable),
        "lanes": seg(lanes),
        "slices": [],
    })
}

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

#[test]
fn compare_tabulates_values_and_differences_against_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "base.json",
        &eval_json(
            &[("car", Some(0.5)), ("truck", Some(0.3))],
            (0.4, 0.2),
            0.8,
            0.3,
        ),
    );
    let tuned = write(
        dir.path(),
        "tuned.json",
        &eval_json(
            &[("truck", Some(0.25)), ("car", Some(0.65))],
            (0.45, 0.225),
            0.75,
            0.3,
        ),
    );
    let out_dir = dir.path().join("cmp");
    let out = percept(&[
        "compare",
        s(&base),
        s(&tuned),
        "--label",
        "base",
        "--label",
        "finetuned",
        "--out",
        s(&out_dir),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let table = "\
| metric | base | finetuned | Δ finetuned vs base |
| :-- | --: | --: | --: |
| mAP@0.5 | 0.400 | 0.450 | +0.050 |
| mAP@.5:.95 | 0.200 | 0.225 | +0.025 |
| recall@0.5 at the operating threshold | 0.500 | 0.500 | ±0.000 |
| drivable mIoU | 0.800 | 0.750 | -0.050 |
| drivable IoU | 0.800 | 0.750 | -0.050 |
| lane IoU | 0.300 | 0.300 | ±0.000 |
| lane pixel recall | 0.900 | 0.900 | ±0.000 |
| lane balanced accuracy | 0.800 | 0.800 | ±0.000 |
| AP@0.5 car | 0.500 | 0.650 | +0.150 |
| AP@0.5 truck | 0.300 | 0.250 | -0.050 |
";
    assert!(out.stdout.starts_with(table), "{}", out.stdout);
    for name in [
        "compare.json",
        "compare.md",
        "compare.html",
        "ap50_per_class_compare.png",
        "ap50_per_class_compare.svg",
    ] {
        assert!(out_dir.join(name).is_file(), "{name}");
        assert!(out.stdout.contains(name), "{}", out.stdout);
    }
    let md = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    assert!(md.contains(table), "{md}");
    assert!(md.contains("![AP@0.5 per class](ap50_per_class_compare.png)"));
    let html = std::fs::read_to_string(out_dir.join("compare.html")).unwrap();
    assert!(
        html.contains("<td>AP@0.5 car</td><td class=\"num\">0.500</td><td class=\"num\">0.650</td><td class=\"num\">+0.150</td>"),
        "{html}"
    );
    let png = image::open(out_dir.join("ap50_per_class_compare.png")).unwrap();
    assert!(png.width() > 400, "{}", png.width());

    // compare.json: the same numbers, unrounded.
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("compare.json")).unwrap())
            .unwrap();
    assert_eq!(json["reports"][1]["label"], "finetuned");
    assert_eq!(json["classes"], json!(["car", "truck"]));
    let car = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["class"] == "car")
        .unwrap();
    assert_eq!(car["values"], json!([0.5, 0.65]));
    assert!((car["differences"][0].as_f64().unwrap() - 0.15).abs() < 1e-12);

    // A label per report, or none.
    let out = percept(&["compare", s(&base), s(&tuned), "--label", "only-one"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("--label: 1 labels for 2 reports"),
        "{}",
        out.stderr
    );
    let out = percept(&["compare", s(&base), s(&tuned)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with(&format!(
            "| metric | {} | {} | Δ {} vs {} |",
            base.display(),
            tuned.display(),
            tuned.display(),
            base.display()
        )),
        "{}",
        out.stdout
    );
}

#[test]
fn a_class_one_report_lacks_shows_a_dash() {
    let dir = tempfile::tempdir().unwrap();
    let reports: Vec<(String, EvalReport)> = [
        (
            "base",
            eval_json(
                &[("car", Some(0.5)), ("truck", Some(0.3))],
                (0.4, 0.2),
                0.8,
                0.3,
            ),
        ),
        (
            "tuned",
            eval_json(&[("car", Some(0.6)), ("truck", None)], (0.6, 0.3), 0.8, 0.3),
        ),
        (
            "jp",
            eval_json(
                &[("car", Some(0.7)), ("heavy vehicle", Some(0.4))],
                (0.55, 0.3),
                0.8,
                0.3,
            ),
        ),
    ]
    .into_iter()
    .map(|(label, v)| {
        let path = write(dir.path(), &format!("{label}.json"), &v);
        (label.to_string(), read_eval_report(&path).unwrap())
    })
    .collect();
    let c = compare_reports(&reports);
    assert_eq!(c.classes, ["car", "truck", "heavy vehicle"]);
    let class_rows: Vec<_> = c.rows.iter().filter(|r| r.kind == RowKind::Class).collect();
    assert_eq!(class_rows.len(), 3);
    assert_eq!(class_rows[2].values, [None, None, Some(0.4)]);
    assert_eq!(class_rows[2].differences, [None, None]);
    let md = c.markdown();
    assert!(
        md.starts_with(
            "| metric | base | tuned | jp | Δ tuned vs base | Δ jp vs base |\n\
         | :-- | --: | --: | --: | --: | --: |\n\
         | mAP@0.5 | 0.400 | 0.600 | 0.550 | +0.200 | +0.150 |\n"
        ),
        "{md}"
    );
    for row in [
        "| AP@0.5 car | 0.500 | 0.600 | 0.700 | +0.100 | +0.200 |\n",
        // No ground truth (no AP) in one report, no such class in another.
        "| AP@0.5 truck | 0.300 | – | – | – | – |\n",
        "| AP@0.5 heavy vehicle | – | – | 0.400 | – | – |\n",
    ] {
        assert!(md.contains(row), "{row} not in:\n{md}");
    }
    // The library takes references too (the fine-tune command passes its evaluations).
    let borrowed: Vec<(String, &EvalReport)> =
        reports.iter().map(|(l, r)| (l.clone(), r)).collect();
    assert_eq!(compare_reports(&borrowed), c);
}

#[test]
fn files_that_are_not_eval_reports_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "eval.json",
        &eval_json(&[("car", Some(0.5))], (0.5, 0.25), 0.8, 0.3),
    );
    let other = write(
        dir.path(),
        "metrics.json",
        &json!({ "kind": "step", "loss": 1.0 }),
    );
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not json").unwrap();
    let missing = dir.path().join("missing.json");
    for (bad, why) in [
        (&other, "not an evaluation report"),
        (&text, "not an evaluation report"),
        (&missing, "No such file"),
    ] {
        let out = percept(&["compare", s(&good), s(bad)]);
        assert_eq!(out.code, Some(1), "{}", out.stdout);
        assert!(
            out.stderr
                .contains(&format!("error: {}: {why}", bad.display())),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    let out = percept(&["compare", s(&good)]);
    assert_eq!(
        out.code,
        Some(2),
        "one report is not a comparison: {}",
        out.stderr
    );
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A nano model (untrained) for the test datasets' input, trained at a DE site (the synthetic
/// DE data's policy), detecting `classes`; a fine-tune with `mapping` when given.
fn model(dir: &Path, name: &str, classes: &[&str], mapping: Option<ClassMapping>) -> PathBuf {
    let mut card = common::model_card(&names(classes), common::provenance("DE", "lab", &["DE"], 0));
    card.decode.pre_nms_top_k = 100;
    card.decode.max_detections = 50;
    card.provenance.finetune = mapping.map(|class_mapping| FinetuneRecord {
        profile: "XX".into(),
        profile_hash: "0".repeat(64),
        class_mapping,
        freeze: "none".into(),
        freeze_norm_statistics: false,
        distillation: None,
        l2sp: None,
    });
    let net = card
        .architecture
        .init_seeded::<burn::backend::Flex>(3, &Default::default());
    let path = dir.join(name);
    save_model(&net, &card, &path).unwrap();
    path
}

#[test]
fn eval_scores_models_of_other_class_lists_and_compare_joins_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synth(dir.path(), "DE", 2, 1);
    let global = names(&percept::synth::SYNTH_CLASSES);
    let base = model(
        dir.path(),
        "base.safetensors",
        &percept::synth::SYNTH_CLASSES,
        None,
    );
    let mapping = ClassMapping {
        global: global.clone(),
        classes: vec![
            ("car".into(), ClassOrigin::Kept(0)),
            ("heavy vehicle".into(), ClassOrigin::Merged(vec![1, 2])),
            ("auto-rickshaw".into(), ClassOrigin::New),
        ],
        dropped: global[3..].to_vec(),
    };
    let tuned = model(
        dir.path(),
        "tuned.safetensors",
        &["car", "heavy vehicle", "auto-rickshaw"],
        Some(mapping),
    );
    let eval = |model: &Path, json: &Path| {
        percept(&[
            "eval",
            "--model",
            s(model),
            "--data",
            s(&data),
            "--out",
            s(json),
            "--batch-size",
            "4",
        ])
    };

    // The same list: no class_match in eval.json (the path as before).
    let base_json = dir.path().join("base.json");
    let out = eval(&base, &base_json);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&base_json).unwrap()).unwrap();
    assert!(v.get("class_match").is_none(), "{v}");
    assert!(
        !out.stdout.contains("differ from the dataset's"),
        "{}",
        out.stdout
    );

    // The fine-tune on the global data: boxes relabelled through its mapping.
    let tuned_json = dir.path().join("tuned.json");
    let out = eval(&tuned, &tuned_json);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for line in [
        "its boxes are relabelled through the model's fine-tune class mapping",
        "scored: car\n",
        "scored: heavy vehicle <- truck + bus\n",
        "dataset classes dropped (the model has no class for them): pedestrian, cyclist, \
         traffic light, traffic sign",
        "model classes not in the dataset (no AP): auto-rickshaw",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line:?} not in:\n{}",
            out.stdout
        );
    }
    let report = read_eval_report(&tuned_json).unwrap();
    let m = report.class_match.as_ref().unwrap();
    assert_eq!(
        m.relabel,
        [Some(0), Some(1), Some(1), None, None, None, None]
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&tuned_json).unwrap()).unwrap();
    assert_eq!(v["class_match"]["how"], "finetune_mapping");
    let det = report.detection.as_ref().unwrap();
    assert_eq!(det.classes, ["car", "heavy vehicle", "auto-rickshaw"]);
    // No ground truth of the new class: no AP. The synthetic scenes have cars.
    assert_eq!(det.metrics.per_class[2].num_gt, 0);
    assert_eq!(det.metrics.per_class[2].ap50, None);
    let base_report = read_eval_report(&base_json).unwrap();
    let base_det = base_report.detection.as_ref().unwrap();
    assert_eq!(
        det.metrics.per_class[0].num_gt,
        base_det.metrics.per_class[0].num_gt
    );
    assert_eq!(
        det.metrics.per_class[1].num_gt,
        base_det.metrics.per_class[1].num_gt + base_det.metrics.per_class[2].num_gt
    );

    // By name: a model of other classes (no fine-tune record).
    let named = model(
        dir.path(),
        "named.safetensors",
        &["bus", "tram", "car"],
        None,
    );
    let named_json = dir.path().join("named.json");
    let out = eval(&named, &named_json);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("classes are matched by name"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("model classes not in the dataset (no AP): tram"),
        "{}",
        out.stdout
    );
    let named_report = read_eval_report(&named_json).unwrap();
    let named_det = named_report.detection.as_ref().unwrap();
    assert_eq!(
        named_det.metrics.per_class[2].num_gt,
        base_det.metrics.per_class[0].num_gt
    );

    // No class shared: refused, naming both lists.
    let none = model(dir.path(), "none.safetensors", &["tram"], None);
    let out = eval(&none, &dir.path().join("none.json"));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "model {}: the model detects [tram] and the dataset's classes are [{}]: no class is \
             shared",
            none.display(),
            global.join(", ")
        )),
        "{}",
        out.stderr
    );

    // compare joins them by class name.
    let out = percept(&[
        "compare",
        s(&base_json),
        s(&tuned_json),
        "--label",
        "base",
        "--label",
        "JP",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for row in [
        "| AP@0.5 car | ",
        "| AP@0.5 heavy vehicle | – | ",
        "| AP@0.5 auto-rickshaw | – | – | – |",
    ] {
        assert!(out.stdout.contains(row), "{row} not in:\n{}", out.stdout);
    }
}
