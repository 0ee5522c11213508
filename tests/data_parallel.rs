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
//! process-wide. The test over several nodes runs `percept` processes, which average through
//! node 0's gradient hub, not the collective.

use std::collections::BTreeMap;
use std::path::Path;

use percept::commands;
use percept::train::config::{OptimizerKind, RunConfig};
use percept::train::Devices;
use safetensors::SafeTensors;

mod common;
use common::{percept, step_losses, synth};

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

fn sgd_config(dir: &Path, data: &Path, name: &str, accumulation: usize) -> RunConfig {
    let mut c = common::run_config(dir, &[data], "DE", 3, "");
    c.name = name.into();
    c.optimizer.kind = OptimizerKind::Sgd;
    c.optimizer.momentum = 0.0;
    c.train.lr = 0.05;
    c.train.grad_accumulation = accumulation;
    c.checkpoint.every = 0;
    c.validate().unwrap();
    c
}

#[test]
fn two_replicas_train_like_one_device_on_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 24, 11);

    // 2 replicas x 2 images = 4 images a step ...
    let parallel = sgd_config(dir.path(), &data, "parallel", 1);
    let devices: Devices = "cpu,cpu".parse().unwrap();
    let p = commands::train(&parallel, devices).unwrap();
    assert_eq!(p.steps, 3);
    // ... and one device taking the same 4 as 2 micro-batches of 2.
    let single = sgd_config(dir.path(), &data, "single", 2);
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
        let mut c = sgd_config(dir.path(), &data, "initial", 1);
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
    let mut c = sgd_config(dir.path(), &data, "accumulating", 2);
    c.train.steps = 1;
    let p = commands::train(&c, d).unwrap();
    let mut c = sgd_config(dir.path(), &data, "single-4", 4);
    c.train.steps = 1;
    let s = commands::train(&c, percept::train::DeviceSpec::Cpu).unwrap();
    // lr 0.05: a gradient difference of 2e-5 would move a weight by 1e-6.
    let worst = largest_difference(&trainable(&p.checkpoint), &trainable(&s.checkpoint));
    eprintln!("with accumulation, after one step: largest weight difference {worst:e}");
}

#[test]
fn two_node_processes_train_like_one_device_on_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 24, 11);
    let nodes = sgd_config(dir.path(), &data, "nodes", 1);
    let file = dir.path().join("nodes.toml");
    std::fs::write(&file, nodes.to_toml()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let master = format!("127.0.0.1:{port}");
    let run = |rank: &'static str| {
        let (file, master) = (file.to_str().unwrap().to_string(), master.clone());
        std::thread::spawn(move || {
            percept(&[
                "train",
                "--config",
                &file,
                "--nodes",
                "2",
                "--node-rank",
                rank,
                "--master",
                &master,
            ])
        })
    };
    let (node0, node1) = (run("0"), run("1"));
    for (rank, node) in [node0, node1].into_iter().enumerate() {
        let out = node.join().unwrap();
        assert!(out.ok, "node {rank}: {}", out.stderr);
    }
    // The same 4 images a step on one device, as 2 micro-batches of 2.
    let single = sgd_config(dir.path(), &data, "single", 2);
    let s = commands::train(&single, percept::train::DeviceSpec::Cpu).unwrap();

    let runs = dir.path().join("runs");
    let final_model = |run: &str| runs.join(run).join("checkpoints/final.safetensors");
    let (w0, w1, ws) = (
        trainable(&final_model("nodes")),
        trainable(&final_model("nodes-node1")),
        trainable(&s.checkpoint),
    );
    assert_eq!(w0, w1, "the two nodes hold different weights");
    let worst = largest_difference(&w0, &ws);
    eprintln!("2 nodes vs 1 device: largest weight difference {worst:e}");
    let (lp, ls) = (
        step_losses(&runs.join("nodes")),
        step_losses(&single.run_dir()),
    );
    assert_eq!(lp.len(), 3);
    for (a, b) in lp.iter().zip(&ls) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "losses {lp:?} vs {ls:?}");
    }

    // Flags that cannot make a run are refused before anything starts, naming the flag.
    let refused = |args: &[&str], needle: &str| {
        let out = percept(args);
        assert!(
            !out.ok && out.stderr.contains(needle),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    };
    let f = file.to_str().unwrap();
    refused(
        &["train", "--config", f, "--nodes", "2"],
        "--master HOST:PORT",
    );
    refused(
        &[
            "train",
            "--config",
            f,
            "--nodes",
            "2",
            "--node-rank",
            "2",
            "--master",
            &master,
        ],
        "0 to 1",
    );
    refused(
        &["train", "--config", f, "--nodes", "2", "--master", "nohost"],
        "HOST:PORT",
    );
}
