//! Runs over several processes launched by `mpirun` (feature `mpi`; Open MPI or MPICH
//! installed): two CPU ranks averaging their gradients with MPI's all-reduce must train exactly
//! as one process does with gradient accumulation over the same global batch.
//!
//! One process with `grad_accumulation = 2` takes each step's 4 images as 2 micro-batches of 2,
//! each loss divided by 2 before backward, and adds the gradients: `g0/2 + g1/2`. Two ranks of
//! 2 images each sum theirs with `MPI_Allreduce` and divide by 2: `(g0 + g1)/2`, the same value
//! in IEEE arithmetic (halving is exact). With plain SGD the update is `lr x gradient`, so the
//! weights must be bit-identical.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use percept::commands;
use percept::train::checkpoint::CheckpointDir;
use percept::train::config::RunConfig;
use safetensors::SafeTensors;

mod common;
use common::{sgd_config, step_losses, synth, Output};

/// `percept ARGS` as `ranks` MPI processes on this machine, one compute thread each.
fn mpirun(ranks: usize, args: &[&str]) -> Output {
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "--bind-to", "none", "-np"])
        .arg(ranks.to_string())
        .args(["-x", "RAYON_NUM_THREADS=1"])
        .arg(env!("CARGO_BIN_EXE_percept"))
        .args(args)
        // CI runs as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun on the PATH (apt-get install openmpi-bin)");
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The trainable tensors of a model file (batch-norm running statistics left out: each rank
/// keeps those of its own part), by name, as raw bytes.
fn trainable(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(name, _)| !name.contains("running_"))
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

fn write_config(dir: &Path, config: &RunConfig) -> PathBuf {
    let file = dir.join(format!("{}.toml", config.name));
    std::fs::write(&file, config.to_toml()).unwrap();
    file
}

fn final_model(run: &Path) -> PathBuf {
    run.join("checkpoints/final.safetensors")
}

#[test]
fn two_mpi_ranks_train_bit_identically_to_one_process_with_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 24, 11);
    let ranks = sgd_config(dir.path(), &data, "mpi", 3, 1);
    let file = write_config(dir.path(), &ranks);
    let out = mpirun(2, &["train", "--config", file.to_str().unwrap()]);
    assert!(out.ok, "mpirun: {}", out.stderr);
    assert!(
        out.stderr.contains("rank 1 of 2") && out.stderr.contains("Open MPI"),
        "{}",
        out.stderr
    );

    // The same 4 images a step in one process, as 2 micro-batches of 2.
    let single = sgd_config(dir.path(), &data, "single", 3, 2);
    let s = commands::train(&single, percept::train::DeviceSpec::Cpu).unwrap();

    let rank0 = ranks.run_dir();
    let rank1 = rank0.with_file_name("mpi-rank1");
    let (w0, w1, ws) = (
        trainable(&final_model(&rank0)),
        trainable(&final_model(&rank1)),
        trainable(&s.checkpoint),
    );
    assert!(w0.len() > 100, "{} tensors", w0.len());
    assert!(w0 == w1, "the two ranks hold different weights");
    let differing: Vec<&String> = w0.keys().filter(|k| w0[*k] != ws[*k]).collect();
    assert!(
        differing.is_empty(),
        "{} of {} tensors differ from one process's, e.g. {:?}",
        differing.len(),
        w0.len(),
        &differing[..differing.len().min(3)]
    );
    // Every rank logs the mean loss over both ranks: equal to one process's, which averages
    // its 2 micro-batches.
    let (l0, l1, ls) = (
        step_losses(&rank0),
        step_losses(&rank1),
        step_losses(&single.run_dir()),
    );
    assert_eq!(l0.len(), 3);
    assert_eq!(l0, l1);
    for (a, b) in l0.iter().zip(&ls) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "losses {l0:?} vs {ls:?}");
    }
    // Each rank cleared the data through the residency guard itself, in its own audit log,
    // and each log verifies.
    for run in [&rank0, &rank1] {
        let log = std::fs::read_to_string(run.join("audit.jsonl")).unwrap();
        assert!(
            log.contains("\"guard_decision\"") && log.contains("\"allowed\":true"),
            "{}: {log}",
            run.display()
        );
        let verify = common::percept(&["audit", "verify", run.to_str().unwrap()]);
        assert!(verify.ok, "{}: {}", run.display(), verify.stderr);
    }
}

#[test]
fn ranks_resume_only_from_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 24, 12);
    let mut config = sgd_config(dir.path(), &data, "res", 4, 1);
    config.checkpoint.every = 1;
    config.checkpoint.keep_last = 10;
    config.validate().unwrap();
    let file = write_config(dir.path(), &config);
    let out = mpirun(2, &["train", "--config", file.to_str().unwrap()]);
    assert!(out.ok, "mpirun: {}", out.stderr);
    let rank0 = config.run_dir();
    let rank1 = rank0.with_file_name("res-rank1");
    let want = trainable(&final_model(&rank0));

    // As if the job had died after step 3 on rank 0 and after step 2 on rank 1: the newer
    // checkpoints moved out of the way.
    let aside = dir.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    let move_aside = |run: &Path, names: &[&str]| {
        let dir = CheckpointDir::new(run.join("checkpoints"));
        for name in names {
            let f = dir.files(name);
            // The last step's checkpoint is `final` alone.
            for path in [f.model, f.training, f.state]
                .into_iter()
                .filter(|p| p.exists())
            {
                let to = aside.join(format!(
                    "{}-{}",
                    run.file_name().unwrap().to_str().unwrap(),
                    path.file_name().unwrap().to_str().unwrap()
                ));
                std::fs::rename(&path, to).unwrap();
            }
        }
    };
    move_aside(&rank0, &["final", "step-000004"]);
    move_aside(&rank1, &["final", "step-000004", "step-000003"]);

    // Every rank is given rank 0's directory; they disagree, so the job is refused, naming
    // each rank's step, before anyone trains.
    let resume = |run: &Path| mpirun(2, &["train", "--resume", run.to_str().unwrap()]);
    let out = resume(&rank0);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("rank 0 at step 3")
            && out.stderr.contains("rank 1 at step 2")
            && out.stderr.contains("after step 2"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!final_model(&rank0).exists() && !final_model(&rank1).exists());

    // Once both stand at step 2, the job resumes and ends exactly where the uninterrupted one
    // did.
    move_aside(&rank0, &["step-000003"]);
    let out = resume(&rank0);
    assert!(out.ok, "resume: {}", out.stderr);
    assert!(trainable(&final_model(&rank0)) == want);
    assert!(trainable(&final_model(&rank1)) == want);
}

#[test]
fn commands_that_run_once_are_refused_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let out = mpirun(
        2,
        &[
            "synth",
            "--out",
            dir.path().join("s").to_str().unwrap(),
            "--train",
            "4",
            "--val",
            "2",
        ],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("rank 0 of 2") || out.stderr.contains("rank 1 of 2"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("without mpirun"), "{}", out.stderr);
    assert!(!dir.path().join("s").exists());
}

#[test]
fn all_reduce_benchmark_checks_and_times_the_real_path() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("all-reduce.json");
    let out = mpirun(
        2,
        &[
            "bench",
            "all-reduce",
            "--models",
            "nano",
            "--rounds",
            "2",
            "--warmup",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    // Rank 0 alone reports.
    assert_eq!(
        out.stdout.matches("gradient all-reduce: 2 ranks").count(),
        1,
        "{}",
        out.stdout
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let nano = &report["sizes"][0];
    let elements = nano["elements"].as_u64().unwrap() as f64;
    assert!(elements > 1e6, "{report}");
    // Under a ring each rank moves 2(N-1)/N = 1 x the gradient; the old star's hub 2 x.
    let mb = elements * 4.0 / 1e6;
    assert!((nano["ring_megabytes_per_rank"].as_f64().unwrap() - mb).abs() < 1e-6);
    assert!((nano["star_megabytes_at_hub"].as_f64().unwrap() - 2.0 * mb).abs() < 1e-6);
    assert!(nano["median_ms"].as_f64().unwrap() > 0.0);
}
