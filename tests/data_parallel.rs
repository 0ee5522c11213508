//! Data-parallel training (`--devices`): replicas averaging their gradients with
//! burn-collective's all-reduce must train exactly as one device does on the same global batch.
//!
//! On one device, a global batch of `devices x batch_size` images taken as `devices`
//! micro-batches with gradient accumulation has the same mean gradient as the replicas'
//! all-reduced one, and the same batch-norm batch statistics (each micro-batch / part is
//! normalised on its own). With plain SGD the update is `lr x gradient`, so equal weights after
//! the steps mean equal gradients; measured: bit-identical over 3 steps. CPU replicas share the
//! one CPU device: the path is the same as on several GPUs, minus the device copies.
//!
//! Everything using the collective is in one test, in its own test binary: the collective is
//! process-wide. Runs over several processes (mpirun) are `tests/mpi.rs`'s.

use std::collections::BTreeMap;
use std::path::Path;

use percept::commands;
use percept::train::Devices;
use safetensors::SafeTensors;

mod common;
use common::{sgd_config, step_losses, synth};

/// The trainable tensors of a model file (batch-norm running statistics left out: each replica
/// keeps those of its own part), by name.
fn trainable(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(name, _)| !name.contains("running_"))
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest difference between two models' tensors, each asserted to be at most 1e-6.
fn largest_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for (name, x) in a {
        for (x, y) in x.iter().zip(&b[name]) {
            assert!(
                (x - y).abs() <= 1e-6,
                "{name}: {x} (data-parallel) vs {y} (1 device)"
            );
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn two_replicas_train_like_one_device_on_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 24, 11);

    // 2 replicas x 2 images = 4 images a step ...
    let parallel = sgd_config(dir.path(), &data, "parallel", 3, 1);
    let devices: Devices = "cpu,cpu".parse().unwrap();
    let p = commands::train(&parallel, devices).unwrap();
    assert_eq!(p.steps, 3);
    // ... and one device taking the same 4 as 2 micro-batches of 2.
    let single = sgd_config(dir.path(), &data, "single", 3, 2);
    let s = commands::train(&single, percept::train::DeviceSpec::Cpu).unwrap();

    let (lp, ls) = (
        step_losses(&parallel.run_dir()),
        step_losses(&single.run_dir()),
    );
    assert_eq!(lp.len(), 3);
    for (a, b) in lp.iter().zip(&ls) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "losses {lp:?} vs {ls:?}");
    }

    let initial = {
        // The initial weights: the same seed, steps too small to move them.
        let mut c = sgd_config(dir.path(), &data, "initial", 3, 1);
        c.train.lr = 1e-12;
        trainable(
            &commands::train(&c, percept::train::DeviceSpec::Cpu)
                .unwrap()
                .checkpoint,
        )
    };
    let (wp, ws) = (trainable(&p.checkpoint), trainable(&s.checkpoint));
    assert_eq!(wp.len(), ws.len());
    let mut moved = 0.0f32;
    let mut worst = 0.0f32;
    for (name, a) in &wp {
        let b = &ws[name];
        for ((x, y), x0) in a.iter().zip(b).zip(&initial[name]) {
            // 3 SGD steps of lr 0.05: a gradient difference of d moves a weight by 0.05 d.
            assert!(
                (x - y).abs() <= 1e-6,
                "{name}: {x} (2 replicas) vs {y} (1 device)"
            );
            moved = moved.max((y - x0).abs());
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("largest weight difference {worst:e}; largest move {moved:e}");
    assert!(
        moved > 1e-3,
        "training moved no weight: the comparison proves nothing"
    );

    // With accumulation on each replica (2 devices x 2 micro-batches of 2 against one device x
    // 4): the mean gradient is summed in another order ((a + b) + (c + d) against
    // ((a + b) + c) + d), which rounds differently, so only the first step can match to
    // rounding. After it the weights differ by ~1e-7, and a freshly initialised network at
    // batch 2 amplifies that in its next gradient (measured: 5e-4 of the gradient norm at step
    // 2, the same for learning rates 0.05 and 0.005, and nothing at 1e-6, where the first step
    // moved no weight by a rounding step).
    let d: Devices = "cpu,cpu".parse().unwrap();
    let mut c = sgd_config(dir.path(), &data, "accumulating", 3, 2);
    c.train.steps = 1;
    let p = commands::train(&c, d).unwrap();
    let mut c = sgd_config(dir.path(), &data, "single-4", 3, 4);
    c.train.steps = 1;
    let s = commands::train(&c, percept::train::DeviceSpec::Cpu).unwrap();
    // lr 0.05: a gradient difference of 2e-5 would move a weight by 1e-6.
    let worst = largest_difference(&trainable(&p.checkpoint), &trainable(&s.checkpoint));
    eprintln!("with accumulation, after one step: largest weight difference {worst:e}");
}

/// A percept built without MPI, started by an MPI launcher as one of several processes,
/// refuses: each copy would otherwise run the whole job into the same run directory.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_percept"))
        .args(["synth", "--out"])
        .arg(dir.path().join("s"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("OMPI_COMM_WORLD_SIZE=2") && stderr.contains("--features mpi"),
        "{stderr}"
    );
    assert!(!dir.path().join("s").exists());
}
