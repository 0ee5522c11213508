//! The data layer end to end: the residency guard refuses before any read, the audit log
//! records and proves what a run did, integrity policies, and an exactly resumable data stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percept::commands;
use percept::data::{audit, Manifest, ShardReader, Site, TrafficSide};
use percept::train::config::RunConfig;
use percept::train::data::TrainingData;
use percept::train::loader::{BatchBuilder, LoadedBatch, LoaderOptions};
use percept::train::trainer::RunState;
use percept::train::{DeviceSpec, TrainError};

mod common;
use common::{percept, synth, H, W};

fn config(dir: &Path, data: &[&Path], site: &str, extra: &str) -> RunConfig {
    common::run_config(dir, data, site, 2, extra)
}

fn audit_kinds(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"]["kind"].as_str().unwrap().to_string()
        })
        .collect()
}

fn audit_events(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "shard"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_cn_site_over_de_data_is_refused_before_any_shard_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 1);
    // With every shard gone, any attempt to read one would fail with an I/O error instead.
    for shard in shard_files(&data) {
        std::fs::remove_file(shard).unwrap();
    }
    let err =
        commands::train(&config(dir.path(), &[&data], "CN", ""), DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Residency(_)), "{err}");
    let msg = err.to_string();
    for want in [
        "`test-DE`",
        "manifest.json",
        "collected in DE",
        "policy.processing_regions = [\"DE\"]",
        "region CN",
        "test-site",
    ] {
        assert!(msg.contains(want), "`{want}` missing from: {msg}");
    }
    let run = dir.path().join("runs/run");
    assert_eq!(
        audit_kinds(&run),
        ["run_start", "guard_decision", "run_end"],
        "no shard_opened entry may appear"
    );
    let decision = &audit_events(&run, "guard_decision")[0];
    assert_eq!(decision["allowed"], false);
    assert_eq!(decision["data_region"], "DE");
    assert_eq!(decision["site_region"], "CN");
    audit::verify(run.join("audit.jsonl")).unwrap();

    // The same run at a DE site gets past the guard and fails on the first missing shard: so
    // the refusal above really came before any shard access.
    let err = commands::train(&config(dir.path(), &[&data], "DE", ""), DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-00000.shard"), "{err}");
}

#[test]
fn an_edited_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 1);
    let path = data.join("manifest.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // Someone drops a shard from the list by hand (keeping the old seal).
    json["shards"].as_array_mut().unwrap().remove(0);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let err = commands::train(&config(dir.path(), &[&data], "DE", ""), DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("edited after it was written"), "{err}");
    assert!(err.contains("manifest.json"), "{err}");
    let decision = &audit_events(&dir.path().join("runs/run"), "guard_decision")[0];
    assert_eq!(decision["allowed"], false);
    assert!(decision["reason"]
        .as_str()
        .unwrap()
        .contains("cannot be verified"));
}

/// The training shards of a dataset directory, in file order.
fn train_shards(dir: &Path) -> Vec<PathBuf> {
    shard_files(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train")
        })
        .collect()
}

/// The training data of `config`, opened at its site under its integrity policy (no audit log).
fn open_training(config: &RunConfig) -> Arc<TrainingData> {
    let site = Site {
        region: config.site.region.clone(),
        name: config.site.name.clone(),
    };
    let data = TrainingData::open_dirs(
        &config.data.datasets,
        &site,
        config.data.integrity,
        false,
        None,
    )
    .unwrap();
    Arc::new(data)
}

/// Flips one byte inside record `k` of `shard` (records follow the 8-byte magic back to back).
fn damage_record(shard: &Path, k: usize) {
    let reader = ShardReader::open(shard).unwrap();
    let offset: usize = 8
        + (0..k)
            .map(|i| reader.record_bytes(i).unwrap().len())
            .sum::<usize>();
    let len = reader.record_bytes(k).unwrap().len();
    drop(reader);
    let mut bytes = std::fs::read(shard).unwrap();
    bytes[offset + len / 2] ^= 0x5a;
    std::fs::write(shard, bytes).unwrap();
}

#[test]
fn a_damaged_sample_stops_the_run_or_is_skipped_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 1);
    damage_record(&train_shards(&data)[0], 2);

    let err = commands::train(&config(dir.path(), &[&data], "DE", ""), DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-00000.shard"), "{err}");
    let opened = audit_events(&dir.path().join("runs/run"), "shard_opened");
    assert!(opened[0]["result"].as_str().unwrap().contains("blake3"));

    // Under `skip` the run goes on: 2 steps x 2 images over 4 samples meets sample 2 once.
    let config = config(dir.path(), &[&data], "DE", "integrity = \"skip\"");
    std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
    let summary = commands::train(&config, DeviceSpec::Cpu).unwrap();
    assert_eq!(summary.skipped_samples, 1);
    let run = dir.path().join("runs/run");
    let skipped = audit_events(&run, "sample_skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["shard"], "train-00000.shard");
    assert_eq!(skipped[0]["index"], 2);
    assert!(skipped[0]["reason"].as_str().unwrap().contains("checksum"));
    let last: serde_json::Value = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["kind"] == "step")
        .unwrap();
    assert_eq!(last["skipped_samples"], 1);
    let end = &audit_events(&run, "run_end")[0];
    assert_eq!(end["skipped_samples"], 1);
    assert_eq!(end["status"], "completed");
}

#[test]
fn audit_verify_holds_and_catches_deleted_edited_and_truncated_entries() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 1);
    let summary =
        commands::train(&config(dir.path(), &[&data], "DE", ""), DeviceSpec::Cpu).unwrap();
    let run = dir.path().join("runs/run");
    let export = dir.path().join("model.safetensors");
    commands::export_model(&summary.checkpoint, &export, DeviceSpec::Cpu).unwrap();
    assert_eq!(
        audit_kinds(&run),
        [
            "run_start",
            "guard_decision",
            "shard_opened",
            "checkpoint",
            "checkpoint",
            "run_end",
            "export"
        ]
    );
    let checkpoints = audit_events(&run, "checkpoint");
    assert_eq!(checkpoints[0]["step"], 1);
    assert_eq!(checkpoints[1]["hash"], summary.checkpoint_hash);

    // The state beside the step-1 checkpoint holds the sampler one batch in.
    let state = RunState::load(&run.join("checkpoints/step-000001.state.json")).unwrap();
    assert_eq!(
        (state.step, state.sampler.epoch, state.sampler.position),
        (1, 0, 2)
    );
    assert_eq!(
        state.sampler.datasets[0].manifest_hash,
        Manifest::load_dir(&data).unwrap().hash()
    );

    let v = commands::audit_verify(&run, Default::default()).unwrap();
    assert_eq!(v.report.entries, 7);
    assert_eq!(v.pins.len(), 3, "two checkpoint states and the summary");
    let common::Output { ok, stdout, .. } = percept(&["audit", "verify", run.to_str().unwrap()]);
    assert!(
        ok && stdout.contains("the chain holds (7 entries"),
        "{stdout}"
    );

    let log = run.join("audit.jsonl");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let rewrite = |lines: &[&str]| {
        std::fs::write(
            &log,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap()
    };

    // A deleted entry.
    let mut deleted = lines.clone();
    deleted.remove(2);
    rewrite(&deleted);
    let common::Output { ok, stderr, .. } = percept(&["audit", "verify", run.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("line 3") && stderr.contains("seq 2") && stderr.contains("missing"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // An edited entry: the guard decision turned from allowed into denied.
    let edited_line = lines[1].replace("\"allowed\":true", "\"allowed\":false");
    assert_ne!(edited_line, lines[1]);
    let mut edited = lines.clone();
    edited[1] = &edited_line;
    rewrite(&edited);
    let err = commands::audit_verify(&run, Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("edited"), "{err}");

    // Reordered entries.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    rewrite(&swapped);
    let err = commands::audit_verify(&run, Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4"), "{err}");

    // The last entries removed: the chain alone holds, the pinned heads do not.
    rewrite(&lines[..4]);
    audit::verify(&log).unwrap();
    let err = commands::audit_verify(&run, Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pinned by"), "{err}");

    rewrite(&lines);
    commands::audit_verify(&run, Default::default()).unwrap();
}

fn loader_options() -> LoaderOptions {
    let augment = percept::data::AugmentConfig {
        flip: percept::data::FlipPolicy::MirrorTrafficSide,
        mosaic_probability: 0.3,
        ..Default::default()
    };
    LoaderOptions {
        batch_size: 3,
        width: W,
        height: H,
        augment,
        prefetch_batches: 1,
        workers: 2,
    }
}

fn batches(builder: &mut BatchBuilder, n: usize) -> Vec<LoadedBatch> {
    (0..n).map(|_| builder.next_batch().unwrap()).collect()
}

#[test]
fn a_resumed_data_stream_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let de = synth(dir.path(), "DE", 7, 1);
    let at = synth(dir.path(), "AT", 5, 2);
    // The AT data may also be processed in DE.
    let mut m = Manifest::load_dir(&at).unwrap();
    m.policy.processing_regions.push("DE".into());
    m.save(at.join("manifest.json")).unwrap();
    let config = config(
        dir.path(),
        &[&de, &at],
        "DE",
        "region_weights = { DE = 0.3, AT = 0.7 }",
    );
    let open = || open_training(&config);
    let data = open();
    let builder = |data: &Arc<TrainingData>, sampler| {
        BatchBuilder::new(data.clone(), sampler, loader_options()).unwrap()
    };
    let straight = batches(&mut builder(&data, data.sampler(&config).unwrap()), 9);

    // 12 slots per epoch (7 + 5): 0.7 of them AT.
    let at_slots = straight[..4]
        .iter()
        .flat_map(|b| &b.slots)
        .filter(|s| s.dataset == 1)
        .count();
    assert_eq!(
        at_slots, 8,
        "quota of AT in the first epoch is round(0.7 * 12) = 8"
    );
    // Mirrored frames carry the opposite traffic side.
    let sides: Vec<TrafficSide> = straight
        .iter()
        .flat_map(|b| b.batch.traffic_sides.clone())
        .collect();
    assert!(sides.contains(&TrafficSide::Left) && sides.contains(&TrafficSide::Right));

    for cut in [1, 4, 5] {
        let mut first = builder(&data, data.sampler(&config).unwrap());
        let head = batches(&mut first, cut);
        let saved = serde_json::to_string(&head.last().unwrap().sampler_state).unwrap();
        // A new process: datasets reopened, state read back.
        let reopened = open();
        let sampler = reopened
            .resume_sampler(&config, serde_json::from_str(&saved).unwrap())
            .unwrap();
        let tail = batches(&mut builder(&reopened, sampler), 9 - cut);
        for (i, (a, b)) in straight.iter().zip(head.iter().chain(&tail)).enumerate() {
            assert_eq!(a.slots, b.slots, "batch {i} after a cut at {cut}");
            assert_eq!(a.batch, b.batch, "batch {i} after a cut at {cut}");
        }
    }

    // The DE data is rebuilt: same name, different content. Resuming is refused.
    let saved = straight[3].sampler_state.clone();
    std::fs::remove_dir_all(&de).unwrap();
    synth(dir.path(), "DE", 7, 99);
    let err = open()
        .resume_sampler(&config, saved)
        .unwrap_err()
        .to_string();
    assert!(err.contains("test-DE"), "{err}");
}

/// 12 DE training samples, two of them (in different shards) damaged, opened under integrity
/// `skip`.
fn twelve_samples_two_damaged(dir: &Path) -> (RunConfig, Arc<TrainingData>) {
    let data = synth(dir, "DE", 12, 4);
    let train = train_shards(&data);
    damage_record(&train[0], 5);
    damage_record(&train[1], 1);
    let config = config(dir, &[&data], "DE", "integrity = \"skip\"");
    let data = open_training(&config);
    (config, data)
}

#[test]
fn the_stream_does_not_depend_on_the_number_of_workers_even_with_skips() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = twelve_samples_two_damaged(dir.path());
    let stream = |workers| {
        let options = LoaderOptions {
            workers,
            ..loader_options()
        };
        let mut builder =
            BatchBuilder::new(data.clone(), data.sampler(&config).unwrap(), options).unwrap();
        batches(&mut builder, 10)
    };
    let (one, many) = (stream(1), stream(8));
    let skipped: Vec<_> = one.iter().flat_map(|b| b.skipped.clone()).collect();
    assert_eq!(
        skipped.len(),
        2,
        "both damaged samples met and skipped once"
    );
    for (i, (a, b)) in one.iter().zip(&many).enumerate() {
        assert_eq!(a.slots, b.slots, "batch {i}");
        assert_eq!(a.skipped, b.skipped, "batch {i}");
        assert_eq!(a.sampler_state, b.sampler_state, "batch {i}");
        assert_eq!(a.batch, b.batch, "batch {i}");
    }
}

#[test]
fn nodes_reading_only_their_parts_get_exactly_those_parts_of_the_whole_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = twelve_samples_two_damaged(dir.path());
    // A global micro-batch of 4 images over two nodes, 2 images each.
    let options = LoaderOptions {
        batch_size: 4,
        ..loader_options()
    };
    let stream = |own: Option<std::ops::Range<usize>>| {
        let mut builder = BatchBuilder::new(
            data.clone(),
            data.sampler(&config).unwrap(),
            options.clone(),
        )
        .unwrap();
        if let Some(own) = own {
            builder = builder.reading_only(own).unwrap();
        }
        batches(&mut builder, 10)
    };
    let whole = stream(None);
    let nodes = [stream(Some(0..2)), stream(Some(2..4))];
    let met: Vec<_> = whole.iter().flat_map(|b| b.skipped.clone()).collect();
    assert_eq!(
        met.len(),
        2,
        "both damaged samples met once in the whole stream"
    );
    let mut met_by_nodes = std::collections::BTreeSet::new();
    for (i, w) in whole.iter().enumerate() {
        let parts = w.batch.split(2);
        for (n, node) in nodes.iter().enumerate() {
            let b = &node[i];
            assert_eq!(b.batch, parts[n], "batch {i}, node {n}");
            assert_eq!(
                b.slots[..],
                w.slots[2 * n..2 * n + 2],
                "batch {i}, node {n}"
            );
            assert_eq!(b.sampler_state, w.sampler_state, "batch {i}, node {n}");
            for s in &b.skipped {
                assert!(
                    met.contains(s),
                    "node {n} reports {s:?}, which the stream never met"
                );
                met_by_nodes.insert(s.slot);
            }
        }
    }
    // Every damaged sample was met by the node whose part it fell in, and only read there.
    let met: std::collections::BTreeSet<_> = met.iter().map(|s| s.slot).collect();
    assert_eq!(met_by_nodes, met);

    let err = BatchBuilder::new(
        data.clone(),
        data.sampler(&config).unwrap(),
        options.clone(),
    )
    .unwrap()
    .reading_only(3..5)
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("3..5") && err.contains("batch of 4 images"),
        "{err}"
    );
}

#[test]
fn a_dataset_whose_every_sample_fails_stops_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 1);
    for shard in train_shards(&data) {
        let records = ShardReader::open(&shard).unwrap().len();
        // Last first: finding a record's offset reads the records before it.
        for k in (0..records).rev() {
            damage_record(&shard, k);
        }
    }
    let config = config(dir.path(), &[&data], "DE", "integrity = \"skip\"");
    let data = open_training(&config);
    let mut builder = BatchBuilder::new(
        data.clone(),
        data.sampler(&config).unwrap(),
        loader_options(),
    )
    .unwrap();
    let err = builder.next_batch().err().unwrap().to_string();
    assert!(
        err.contains("every one of the 4 samples of dataset test-DE failed"),
        "{err}"
    );
    assert!(err.contains("checksum"), "{err}");
}
