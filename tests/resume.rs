//! Crash safety: a run killed with SIGKILL at a random moment and resumed ends with weights
//! bit-identical to an uninterrupted run; torn or partial checkpoints are passed over with a
//! warning; non-finite steps are skipped and, in a row, stop the run with its last checkpoint
//! intact.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use percept::commands;
use percept::train::checkpoint::{CheckpointDir, TrainingState};
use percept::train::config::{EmaConfig, RunConfig};
use percept::train::trainer::Faults;
use percept::train::{DeviceSpec, TrainError};
use rand::{Rng, SeedableRng};

mod common;
use common::{percept, synth};

/// The tensor bytes of a safetensors file (header metadata such as provenance differs between
/// runs; the data section must not).
fn tensor_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

/// A run exercising everything a checkpoint must carry: EMA, gradient accumulation, a
/// learning-rate multiplier group, warm-up + cosine, AdamW moments, the sampler.
fn resumable_config(dir: &Path, data: &Path, name: &str) -> RunConfig {
    let mut c = common::run_config(dir, &[data], "DE", 10, "");
    c.name = name.into();
    c.train.grad_accumulation = 2;
    c.train.ema = Some(EmaConfig {
        decay: 0.99,
        warmup_steps: 4,
    });
    c.optimizer.lr_multipliers.insert("backbone".into(), 0.5);
    c.optimizer.weight_decay = 0.01;
    c.optimizer.grad_clip = Some(5.0);
    c.schedule.kind = percept::train::config::ScheduleKind::Cosine;
    c.schedule.warmup_steps = 2;
    c.checkpoint.every = 2;
    c.checkpoint.keep_last = 2;
    c.validate().unwrap();
    c
}

fn write_config(dir: &Path, config: &RunConfig) -> PathBuf {
    let path = dir.join(format!("{}.toml", config.name));
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// Starts `percept` with `args` for run `run`, waits until its `metrics.jsonl` shows step
/// `step` done, then `extra` longer (to land anywhere in a step or a checkpoint write), and
/// kills it with SIGKILL. Says whether it was still running then.
fn kill_at(args: &[&str], run: &Path, step: u64, extra: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_percept"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(run.with_extension("stderr")).unwrap())
        .spawn()
        .unwrap();
    let metrics = run.join("metrics.jsonl");
    let reached = || {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["step"].as_u64().is_some_and(|s| s >= step))
    };
    while !reached() {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(extra);
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    running
}

/// Starts `percept train` for `run`, sends SIGINT once step `step` is done, and returns the
/// exit code and stdout.
fn interrupt_at(config: &Path, run: &Path, step: u64) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_percept"))
        .args(["train", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = run.join("metrics.jsonl");
    while !std::fs::read_to_string(&metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["step"].as_u64().is_some_and(|s| s >= step))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The raw weights in a training state file, as safetensors tensor bytes (the burn record also
/// holds parameter ids, which differ between independent runs).
fn raw_weights(path: &Path, config: &RunConfig) -> Vec<u8> {
    use burn::backend::Flex;
    use burn::module::Module;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    let state = TrainingState::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let arch = percept::model::PerceptionNetConfig {
        size: config.model.size,
        num_classes: 7,
        tasks: config.model.tasks,
    };
    let device = Default::default();
    let net = arch.init::<Flex>(&device).load_record(
        BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(state.model, &device)
            .unwrap(),
    );
    let mut store = burn::store::SafetensorsStore::from_bytes(None);
    use burn::store::ModuleSnapshot;
    net.save_into(&mut store).unwrap();
    let bytes = store.get_bytes().unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

fn newest_step(run: &Path) -> Option<usize> {
    CheckpointDir::new(run.join("checkpoints"))
        .list()
        .into_iter()
        .find_map(|f| f.state.ok().map(|s| s.step))
}

#[test]
fn killed_runs_resume_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 12, 11);

    let reference = resumable_config(dir.path(), &data, "reference");
    let out = percept(&[
        "train",
        "--config",
        write_config(dir.path(), &reference).to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    let want = tensor_bytes(&reference.run_dir().join("checkpoints/final.safetensors"));
    let want_raw = raw_weights(
        &reference
            .run_dir()
            .join("checkpoints/final.train.safetensors"),
        &reference,
    );

    // A fixed seed by default so a failure reproduces; PERCEPT_KILL_SEED explores other kill
    // points (the seed is in every message).
    let seed: u64 = std::env::var("PERCEPT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Three kills at random steps; the second and third trial also damage the newest
    // checkpoint before resuming (torn training state; missing commit record).
    for trial in 0..3 {
        let config = resumable_config(dir.path(), &data, &format!("trial{trial}"));
        let path = write_config(dir.path(), &config);
        let run = config.run_dir();
        // Steps 1..=7 of 10, then up to 300 ms: a step of this run takes longer than that, so
        // the kill lands before the end (a kill that came too late is reported, not hidden).
        let step = rng.random_range(1..=7);
        let extra = Duration::from_millis(rng.random_range(0..300));
        let killed = kill_at(
            &["train", "--config", path.to_str().unwrap()],
            &run,
            step,
            extra,
        );
        let at = newest_step(&run);
        let context = format!(
            "seed {seed}, trial {trial}, killed {extra:?} after step {step}, newest checkpoint at step {at:?}"
        );
        assert!(
            killed,
            "the run ended before the kill: {context}: {}",
            std::fs::read_to_string(run.with_extension("stderr")).unwrap_or_default()
        );
        let mut damaged = false;
        // Finished checkpoints (with a commit record) before any damage.
        let committed = std::fs::read_dir(run.join("checkpoints"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".state.json"))
                })
                .count()
            })
            .unwrap_or(0);
        if let Some(step) = at.filter(|_| trial > 0) {
            let files =
                CheckpointDir::new(run.join("checkpoints")).files(&format!("step-{step:06}"));
            if trial == 1 {
                let mut bytes = std::fs::read(&files.training).unwrap();
                let i = bytes.len() / 2;
                bytes[i] ^= 0x40;
                std::fs::write(&files.training, bytes).unwrap();
            } else {
                std::fs::remove_file(&files.state).unwrap();
            }
            damaged = true;
        }
        let out = percept(&["train", "--resume", run.to_str().unwrap()]);
        if damaged && trial == 1 && committed == 1 {
            // The only finished checkpoint damaged: resume refuses and names it (starting over
            // would lose the run's work).
            assert!(!out.ok, "{context}: {}", out.stderr);
            assert!(
                out.stderr.contains("cannot be resumed")
                    && out.stderr.contains(&format!("step-{:06}", at.unwrap())),
                "{context}: {}",
                out.stderr
            );
            continue;
        }
        assert!(out.ok, "{context}: {}", out.stderr);
        if damaged && trial == 1 {
            assert!(out.stderr.contains("unusable"), "{context}: {}", out.stderr);
        }
        let got = tensor_bytes(&run.join("checkpoints/final.safetensors"));
        assert!(
            got == want,
            "EMA weights differ from the uninterrupted run: {context}"
        );
        let got_raw = raw_weights(&run.join("checkpoints/final.train.safetensors"), &config);
        assert!(got_raw == want_raw, "raw weights differ: {context}");
        let audit = percept(&["audit", "verify", run.to_str().unwrap()]);
        assert!(audit.ok, "{context}: {}", audit.stderr);
    }

    // Ctrl-C: the step finishes, a checkpoint of it is written, the process exits with 130
    // and says how to resume; resuming ends where the uninterrupted run did.
    let config = resumable_config(dir.path(), &data, "sigint");
    let path = write_config(dir.path(), &config);
    let run = config.run_dir();
    let (code, stdout) = interrupt_at(&path, &run, 3);
    assert_eq!(code, Some(130), "{stdout}");
    let at = newest_step(&run).expect("a checkpoint on interrupt");
    assert!(
        stdout.contains(&format!("interrupted after step {at}:")) && stdout.contains("--resume"),
        "{stdout}"
    );
    assert!((3..10).contains(&at), "{at}");
    let out = percept(&["train", "--resume", run.to_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    assert!(tensor_bytes(&run.join("checkpoints/final.safetensors")) == want);
}

#[test]
fn keep_last_and_resume_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let mut config = common::run_config(dir.path(), &[&data], "DE", 5, "");
    config.checkpoint.keep_last = 2;
    commands::train(&config, DeviceSpec::Cpu).unwrap();
    let names: BTreeSet<String> = std::fs::read_dir(config.run_dir().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = ["step-000003", "step-000004", "final"]
        .iter()
        .flat_map(|n| {
            [".safetensors", ".train.safetensors", ".state.json"].map(|e| format!("{n}{e}"))
        })
        .collect();
    assert_eq!(names, want);

    // A finished run has nothing to resume; a fresh run into it is refused.
    let e = commands::resume(&config.run_dir(), DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to resume"), "{e}");
    let e = commands::train(&config, DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let e = commands::resume(&dir.path().join("nowhere"), DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.toml"), "{e}");
}

/// Checkpoints that exist but cannot be used (the config edited, a flipped byte) make resume
/// refuse, naming each; it used to start over from step 0 and let pruning delete them.
#[test]
fn resume_refuses_when_no_checkpoint_can_be_used_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let config = resumable_config(dir.path(), &data, "unusable");
    let path = write_config(dir.path(), &config);
    // Interrupted (Ctrl-C) after step 3 or so: checkpoints, and no final one.
    let (code, stdout) = interrupt_at(&path, &config.run_dir(), 3);
    assert_eq!(code, Some(130), "{stdout}");
    let run = config.run_dir();
    let checkpoints = run.join("checkpoints");
    let listing = || -> BTreeSet<(String, Vec<u8>)> {
        std::fs::read_dir(&checkpoints)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    };
    let before = listing();
    assert!(before.iter().any(|(n, _)| n.ends_with(".state.json")));
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();

    // The run's config edited: every checkpoint's config hash differs now.
    let edited = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .replace("seed = ", "seed = 1");
    std::fs::write(run.join("config.toml"), edited).unwrap();
    let e = commands::resume(&run, DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be resumed"), "{e}");
    for (name, _) in before.iter().filter(|(n, _)| n.ends_with(".state.json")) {
        let stem = name.trim_end_matches(".state.json");
        assert!(e.contains(stem), "{stem} not named in: {e}");
    }
    assert!(e.contains("--set name="), "{e}");
    assert_eq!(listing(), before, "no checkpoint file changed or deleted");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
}

#[test]
fn nonfinite_steps_are_skipped_then_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 4);

    // One bad step: skipped and counted, the run completes.
    let mut config = common::run_config(dir.path(), &[&data], "DE", 4, "");
    config.name = "one".into();
    let faults = Faults {
        nonfinite_steps: [2].into(),
    };
    let s = commands::train_with(&config, DeviceSpec::Cpu, faults).unwrap();
    assert_eq!((s.steps, s.nonfinite_steps), (4, 1));
    let metrics = std::fs::read_to_string(config.run_dir().join("metrics.jsonl")).unwrap();
    let step2: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["step"] == 2 && v["kind"] == "step")
        .unwrap();
    assert_eq!(step2["nonfinite_steps"], 1);
    // The skipped step applied no update: checkpoints 1 and 2 hold the same weights.
    let ck = config.run_dir().join("checkpoints");
    assert!(
        tensor_bytes(&ck.join("step-000001.safetensors"))
            == tensor_bytes(&ck.join("step-000002.safetensors"))
    );
    assert!(
        tensor_bytes(&ck.join("step-000002.safetensors"))
            != tensor_bytes(&ck.join("step-000003.safetensors"))
    );

    // Three in a row with max_nonfinite_steps = 3: the run stops, naming the last checkpoint,
    // which is intact (the resumable state from before the bad steps).
    config.name = "three".into();
    config.train.max_nonfinite_steps = 3;
    let faults = Faults {
        nonfinite_steps: [2, 3, 4].into(),
    };
    let e = commands::train_with(&config, DeviceSpec::Cpu, faults).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::NonFinite {
                step: 4,
                in_a_row: 3,
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("step-000003.safetensors"), "{text}");
    let dir3 = CheckpointDir::new(config.run_dir().join("checkpoints"));
    let (latest, warnings) = dir3.latest_intact(&config.hash());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(latest.unwrap().step, 3);
    assert!(
        tensor_bytes(&config.run_dir().join("checkpoints/step-000001.safetensors"))
            == tensor_bytes(&config.run_dir().join("checkpoints/step-000003.safetensors"))
    );
}

/// The events of a run's audit log, in order.
fn audit_events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join(percept::data::AUDIT_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

/// Every file under `dir` (relative path and bytes).
fn files_under(dir: &Path) -> BTreeSet<(String, Vec<u8>)> {
    let mut out = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// A run of `steps` steps with a checkpoint every step, its final checkpoint deleted: what a
/// run killed just before its end leaves, resumable from step `steps - 1`.
fn unfinished_run(
    dir: &Path,
    data: &Path,
    name: &str,
    steps: usize,
    keep_last: usize,
) -> RunConfig {
    let mut config = common::run_config(dir, &[data], "DE", steps, "");
    config.name = name.into();
    config.checkpoint.keep_last = keep_last;
    commands::train(&config, DeviceSpec::Cpu).unwrap();
    let checkpoints = CheckpointDir::new(config.run_dir().join("checkpoints"));
    checkpoints.remove("final").unwrap();
    config
}

/// A checkpoint that cannot be written (here a directory stands where its training state must
/// go; a full disk fails the same way) is removed, recorded as a failure, not as a checkpoint,
/// and under `checkpoint.on_error = "continue"` the run trains on.
#[test]
fn a_failed_checkpoint_write_is_a_recorded_failure_and_continue_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let mut config = common::run_config(dir.path(), &[&data], "DE", 4, "");
    config.checkpoint.on_error = percept::train::config::CheckpointOnError::Continue;
    let run = config.run_dir();
    let checkpoints = run.join("checkpoints");
    std::fs::create_dir_all(checkpoints.join("step-000002.train.safetensors/x")).unwrap();
    let summary = commands::train(&config, DeviceSpec::Cpu).unwrap();
    assert_eq!(summary.steps, 4);
    assert!(!checkpoints.join("step-000002.safetensors").exists());
    assert!(!checkpoints.join("step-000002.state.json").exists());
    let listed: Vec<String> = CheckpointDir::new(checkpoints.clone())
        .list()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(listed, ["final", "step-000003", "step-000001"]);
    let events = audit_events(&run);
    let step2 = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["step"] == 2)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(step2("checkpoint").is_empty(), "{events:?}");
    let failed = step2("checkpoint_failed");
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(
        failed[0]["path"],
        checkpoints
            .join("step-000002.safetensors")
            .display()
            .to_string()
    );
    assert_eq!(failed[0]["action"], "continue");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("step-000002.train.safetensors") && error.contains("Is a directory"),
        "{error}"
    );
    // The other checkpoints are whole, and so is the audit chain.
    let (latest, warnings) = CheckpointDir::new(checkpoints.clone()).latest_intact(&config.hash());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(latest.unwrap().step, 4);
    percept::data::audit::verify(run.join(percept::data::AUDIT_FILE)).unwrap();
}

/// Under `checkpoint.on_error = "stop"` (the default) the same failure ends `percept train`
/// with a non-zero status, naming the file and the reason, and the run resumes from the last
/// checkpoint.
#[test]
fn a_failed_checkpoint_write_stops_the_run_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let config = common::run_config(dir.path(), &[&data], "DE", 4, "");
    let path = write_config(dir.path(), &config);
    let checkpoints = config.run_dir().join("checkpoints");
    std::fs::create_dir_all(checkpoints.join("step-000002.train.safetensors/x")).unwrap();
    let out = percept(&["train", "--config", path.to_str().unwrap()]);
    assert!(!out.ok, "{}", out.stdout);
    let training = checkpoints.join("step-000002.train.safetensors");
    assert!(
        out.stderr.contains(&format!(
            "error: checkpoint {} (step 2) could not be written: I/O error on {}: Is a \
             directory (os error 21). checkpoint.on_error = \"stop\" stopped the run",
            checkpoints.join("step-000002.safetensors").display(),
            training.display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "The last checkpoint, {}, is intact.",
            checkpoints.join("step-000001.safetensors").display()
        )),
        "{}",
        out.stderr
    );
    assert!(!checkpoints.join("step-000002.safetensors").exists());
    let events = audit_events(&config.run_dir());
    assert!(events
        .iter()
        .any(|e| e["kind"] == "checkpoint_failed" && e["step"] == 2 && e["action"] == "stop"));
    assert!(!events
        .iter()
        .any(|e| e["kind"] == "checkpoint" && e["step"] == 2));
}

/// Temporary files a killed write left (in the run directory and in `checkpoints/`) are never
/// taken for checkpoints, and the next start of the run removes them and records it.
#[test]
fn leftover_temporary_files_are_removed_when_the_run_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let config = unfinished_run(dir.path(), &data, "temps", 3, 0);
    let run = config.run_dir();
    let leftovers = [
        run.join("checkpoints/.step-000009.safetensors.4242.0.tmp"),
        run.join("checkpoints/.step-000009.state.json.4242.1.tmp"),
        run.join(".summary.json.4242.2.tmp"),
    ];
    for p in &leftovers {
        std::fs::write(p, b"torn").unwrap();
    }
    let listed: Vec<String> = CheckpointDir::new(run.join("checkpoints"))
        .list()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(listed, ["step-000002", "step-000001"]);
    let s = commands::resume(&run, DeviceSpec::Cpu).unwrap();
    assert_eq!((s.start_step, s.steps), (2, 3));
    for p in &leftovers {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    let removed: Vec<serde_json::Value> = audit_events(&run)
        .into_iter()
        .filter(|e| e["kind"] == "temporaries_removed")
        .collect();
    let mut want: Vec<String> = leftovers.iter().map(|p| p.display().to_string()).collect();
    want.sort();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["files"], serde_json::json!(want));
}

/// Resuming from an older checkpoint because the newer one is damaged: the newer one is moved
/// aside whole, neither overwritten by the resumed run's checkpoint of the same step nor
/// pruned; the checkpoint resumed from survives pruning until a newer one is written.
#[test]
fn resuming_from_an_older_checkpoint_keeps_the_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let config = unfinished_run(dir.path(), &data, "older", 5, 2);
    let run = config.run_dir();
    let checkpoints = run.join("checkpoints");
    let model4 = checkpoints.join("step-000004.safetensors");
    let mut bytes = std::fs::read(&model4).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&model4, &bytes).unwrap();
    let damaged: BTreeSet<(String, Vec<u8>)> = files_under(&checkpoints)
        .into_iter()
        .filter(|(n, _)| n.starts_with("step-000004"))
        .collect();
    assert_eq!(damaged.len(), 3);
    let s = commands::resume(&run, DeviceSpec::Cpu).unwrap();
    assert_eq!((s.start_step, s.steps), (3, 5));
    let after = files_under(&checkpoints);
    for (name, bytes) in &damaged {
        assert!(
            after.contains(&(format!("unusable/{name}"), bytes.clone())),
            "{name} was not kept as it was"
        );
    }
    // keep_last = 2 over the whole checkpoints this run knows: 3 and the new 4.
    let listed: Vec<String> = CheckpointDir::new(checkpoints.clone())
        .list()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(listed, ["final", "step-000004", "step-000003"]);
    // A checkpoint the caller names as the last one known to be whole is never pruned.
    let dir = CheckpointDir::new(checkpoints.clone());
    assert!(dir
        .retain(1, 0, &["step-000003".into()])
        .unwrap()
        .is_empty());
    assert!(checkpoints.join("step-000003.state.json").exists());
    assert_eq!(dir.retain(1, 0, &[]).unwrap(), ["step-000003"]);
}

/// A config edited in a key that cannot alter the results (`logging.every`) resumes, the
/// change recorded in the audit log; one edited in a key that can (`train.lr`) is refused,
/// naming the key and both values, and nothing is changed.
#[test]
fn resume_allows_and_records_a_logging_change_and_refuses_a_learning_rate_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 6, 2);
    let config = unfinished_run(dir.path(), &data, "edited", 3, 0);
    let run = config.run_dir();
    let config_path = run.join("config.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    assert!(original.contains("lr = 0.002\n"), "{original}");
    std::fs::write(
        &config_path,
        original.replace("lr = 0.002\n", "lr = 0.003\n"),
    )
    .unwrap();
    let before = files_under(&run);
    let e = commands::resume(&run, DeviceSpec::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be resumed"), "{e}");
    assert!(
        e.contains(
            "it was written with another config: train.lr = 0.003 (the checkpoint's: 0.002) \
             changed since; only logging.every, logging.line_seconds, logging.progress, \
             data.workers, data.prefetch_batches, checkpoint.on_error may change on resume"
        ),
        "{e}"
    );
    assert_eq!(
        files_under(&run),
        before,
        "a refused resume changes nothing"
    );

    let logging = "[logging]\nevery = 1\n";
    assert!(original.contains(logging), "{original}");
    std::fs::write(
        &config_path,
        original.replace(logging, "[logging]\nevery = 2\n"),
    )
    .unwrap();
    let s = commands::resume(&run, DeviceSpec::Cpu).unwrap();
    assert_eq!((s.start_step, s.steps), (2, 3));
    let changed: Vec<serde_json::Value> = audit_events(&run)
        .into_iter()
        .filter(|e| e["kind"] == "config_changed")
        .collect();
    assert_eq!(
        changed,
        [
            serde_json::json!({"kind": "config_changed", "key": "logging.every", "old": "1", "new": "2"})
        ]
    );
    percept::data::audit::verify(run.join(percept::data::AUDIT_FILE)).unwrap();
}
