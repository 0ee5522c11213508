//! `percept inspect` on a fine-tuned model: the provenance chain from the first global run to
//! the file, each link checked; an edited link is reported and fails the command; `--base`
//! checks the base file.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use percept::data::{ClassMapping, ClassOrigin};
use percept::eval::model_file::{
    chain_breaks, check_base_file, read_model_card, save_model, BaseLink, DatasetRef,
    FinetuneRecord, ModelCard, MODEL_CARD_KEY,
};

use crate::common::percept;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn hash(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

/// A nano card of `classes` trained at `site` in `region` on one dataset of `region`.
fn card(classes: &[&str], site: &str, region: &str, dataset: &str) -> ModelCard {
    let mut provenance = common::provenance(region, site, &[region], 100);
    provenance.datasets = vec![DatasetRef {
        name: dataset.into(),
        region: region.into(),
        manifest_hash: hash('a'),
        signed_by: None,
    }];
    provenance.config_hash = hash('c');
    common::model_card(&strings(classes), provenance)
}

fn save(card: &ModelCard, path: &Path) -> String {
    let net = card
        .architecture
        .init_seeded::<burn::backend::Flex>(3, &Default::default());
    save_model(&net, card, path).unwrap()
}

/// A global model (car, truck, bus; trained at `hq` in DE on `global-de`) and its JP fine-tune
/// (car, heavy vehicle <- truck + bus; `tokyo` in JP on `jp-roads`); returns their paths.
fn chain(dir: &Path) -> (PathBuf, PathBuf) {
    let global = card(&["car", "truck", "bus"], "hq", "DE", "global-de");
    let global_path = dir.join("global.safetensors");
    let global_hash = save(&global, &global_path);

    let mut jp = card(&["car", "heavy vehicle"], "tokyo", "JP", "jp-roads");
    jp.provenance.regions = strings(&["DE", "JP"]);
    jp.provenance.steps = 40;
    jp.provenance.base_checkpoint = Some(global_hash);
    jp.provenance.base = Some(Box::new(BaseLink::of(&global)));
    jp.provenance.finetune = Some(FinetuneRecord {
        profile: "JP".into(),
        profile_hash: hash('b'),
        class_mapping: ClassMapping {
            global: global.classes.clone(),
            classes: vec![
                ("car".into(), ClassOrigin::Kept(0)),
                ("heavy vehicle".into(), ClassOrigin::Merged(vec![1, 2])),
            ],
            dropped: Vec::new(),
        },
        freeze: "backbone".into(),
        freeze_norm_statistics: true,
        distillation: Some(0.5),
        l2sp: None,
    });
    let jp_path = dir.join("jp.safetensors");
    save(&jp, &jp_path);
    (global_path, jp_path)
}

/// `from` with its model card edited by `edit`, written to `to` (same tensors, same other
/// metadata).
fn edit_card(from: &Path, to: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(from).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    let mut card: serde_json::Value = serde_json::from_str(&meta[MODEL_CARD_KEY]).unwrap();
    edit(&mut card);
    meta.insert(MODEL_CARD_KEY.into(), card.to_string());
    std::fs::write(
        to,
        safetensors::serialize(file.tensors(), Some(meta)).unwrap(),
    )
    .unwrap();
}

#[test]
fn inspect_shows_every_link_and_fails_on_an_edited_one() {
    let dir = tempfile::tempdir().unwrap();
    let (global, jp) = chain(dir.path());

    let out = percept(&["inspect", s(&jp)]);
    assert!(out.ok, "{}", out.stderr);
    let text = &out.stdout;
    for want in [
        "classes     2: car, heavy vehicle",
        "provenance  2 links, newest first (link 1 is this file, link 2 the first run)",
        "link 1 (this file)",
        "  trained at  site `tokyo` in JP, 40 steps, percept test",
        "  regions     DE, JP",
        "  dataset     `jp-roads` (JP), manifest blake3 aaaaaaaaaaaaaaaa,",
        "  config      blake3 cccccccccccccccc",
        "  fine-tune   profile JP (blake3 bbbbbbbbbbbbbbbb), freeze backbone (norm statistics \
         kept), distillation weight 0.5",
        "  class map   car (kept)",
        "              heavy vehicle <- truck + bus (merged)",
        "link 2 -> 1: verifies (provenance digest ",
        "  trained at  site `hq` in DE, 100 steps, percept test",
        "  classes     3: car, truck, bus",
        "  dataset     `global-de` (DE), manifest blake3 aaaaaaaaaaaaaaaa,",
        "  base file   none recorded",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let base_hash = blake3::hash(&std::fs::read(&global).unwrap())
        .to_hex()
        .to_string();
    assert!(
        text.contains(&format!("  base file   blake3 {base_hash} (link 2)")),
        "{text}"
    );
    // Links in order, newest first; the global run has no fine-tune record.
    let (first, second) = text.split_once("link 2 -> 1").unwrap();
    assert!(first.contains("tokyo") && !first.contains("`hq`"), "{text}");
    assert!(
        second.contains("`hq`") && !second.contains("fine-tune"),
        "{text}"
    );
    // Provenance names datasets, never files: no path of this test's directory shows.
    assert!(!text.contains(s(dir.path())), "{text}");

    // --base: the file the fine-tune started from verifies; another file does not.
    let out = percept(&["inspect", s(&jp), "--base", s(&global)]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("match link 2"), "{}", out.stdout);
    let out = percept(&["inspect", s(&jp), "--base", s(&jp)]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("not the model's base: its blake3 is"),
        "{}",
        out.stderr
    );

    // The nested provenance edited (a dataset's region changed): link 2 no longer verifies,
    // inspect still prints the chain, then fails naming the link.
    let edited = dir.path().join("edited.safetensors");
    edit_card(&jp, &edited, |card| {
        card["provenance"]["base"]["provenance"]["datasets"][0]["region"] = "FR".into();
    });
    let card = read_model_card(&edited).unwrap();
    let breaks = chain_breaks(&card);
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert!(
        breaks[0].starts_with(
            "link 2 -> 1: DOES NOT VERIFY: the nested provenance was edited after it was \
             recorded (digest "
        ),
        "{breaks:?}"
    );
    let out = percept(&["inspect", s(&edited)]);
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&breaks[0]), "{}", out.stdout);
    assert!(out.stdout.contains("`global-de` (FR)"), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "error: model file {}: the provenance does not verify:\n  {}",
            edited.display(),
            breaks[0]
        )),
        "{}",
        out.stderr
    );
    // The real base no longer matches the edited link either.
    let err = check_base_file(&card, &global).unwrap_err().to_string();
    assert!(err.contains("provenance digest"), "{err}");
}

#[test]
fn a_model_without_a_base_is_one_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("global.safetensors");
    save(&card(&["car"], "hq", "DE", "global-de"), &path);
    let out = percept(&["inspect", s(&path)]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("provenance  1 link, newest first (link 1 is this file)"),
        "{}",
        out.stdout
    );
    let out = percept(&["inspect", s(&path), "--base", s(&path)]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("the model records no base"),
        "{}",
        out.stderr
    );
}
