//! The wgpu backend (the fallback where CUDA cannot be had) against the CPU backend: the same
//! weights and input give the same outputs, and a short run on wgpu trains.
//!
//! Needs a Vulkan (or Metal/DX12) driver; CI installs lavapipe (`mesa-vulkan-drivers`), a
//! software Vulkan, and sets `PERCEPT_REQUIRE_WGPU=1`, which turns a missing driver into a
//! failure. Elsewhere the tests are skipped, with a note, when no Vulkan driver is installed.

use std::time::Instant;

use burn::backend::flex::FlexDevice;
use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::module::{AutodiffModule, Module};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use percept::commands;
use percept::data::{AugmentConfig, FlipPolicy};
use percept::model::{ModelSize, PerceptionNetConfig};
use percept::train::export::{output_values, probe_input};
use percept::train::DeviceSpec;

mod common;
use common::{step_segmentation_losses, synth, H, W};

/// Whether the wgpu tests can run here; panics when CI requires them and they cannot.
fn wgpu_available() -> bool {
    let icds = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    let found = icds
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    if !found {
        assert!(
            std::env::var_os("PERCEPT_REQUIRE_WGPU").is_none(),
            "PERCEPT_REQUIRE_WGPU is set but no Vulkan driver is installed: \
             apt-get install -y mesa-vulkan-drivers"
        );
        eprintln!("no Vulkan driver (apt-get install -y mesa-vulkan-drivers): wgpu test skipped");
    }
    found
}

/// Forward outputs on wgpu match the CPU backend's on the same weights and input, in eval mode
/// (running statistics) and in training mode (batch statistics), within 1e-3 x (1 + |value|).
/// The kernels sum in other orders and lavapipe's `exp` differs from Rust's in the last bits;
/// over ~40 layers of f32 that grows to ~1e-5 (the test prints what it measured); 1e-3 still
/// catches any wrong layer, stride or layout, which gives differences of order one.
#[test]
fn wgpu_forward_matches_cpu() {
    if !wgpu_available() {
        return;
    }
    let (h, w) = (H as usize, W as usize);
    let config = PerceptionNetConfig::new(ModelSize::Nano, 10);
    let cpu = config.init::<Autodiff<Flex>>(&FlexDevice);
    // Batch statistics from a few training-mode passes, so that eval mode normalises like a
    // trained network does (fresh running statistics would shrink the signal layer by layer
    // until the outputs were the heads' biases alone).
    for _ in 0..40 {
        cpu.forward(probe_input::<Autodiff<Flex>>(h, w, &FlexDevice));
    }
    let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(cpu.clone().into_record(), ())
        .unwrap();
    let device = WgpuDevice::default();
    let gpu = config.init::<Autodiff<Wgpu>>(&device).load_record(
        BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes, &device)
            .unwrap(),
    );

    let started = Instant::now();
    let got = output_values(&gpu.valid(), probe_input::<Wgpu>(h, w, &device));
    eprintln!(
        "wgpu forward (first, kernels compiled): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let want = output_values(&cpu.valid(), probe_input::<Flex>(h, w, &FlexDevice));
    assert_close("eval mode", &got, &want);

    let got = output_values(&gpu, probe_input::<Autodiff<Wgpu>>(h, w, &device));
    let want = output_values(&cpu, probe_input::<Autodiff<Flex>>(h, w, &FlexDevice));
    assert_close("training mode", &got, &want);
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diffs: Vec<f32> = got.iter().zip(want).map(|(g, c)| (g - c).abs()).collect();
    let worst = diffs.iter().fold(0.0f32, |m, d| m.max(*d));
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let spread = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    eprintln!(
        "wgpu vs cpu, {what}: {} outputs, rms {spread:.3}, largest |value| {scale:.3}; \
         difference largest {worst:e}, mean {mean:e}",
        diffs.len()
    );
    for (i, (g, c)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - c).abs() <= 1e-3 * (1.0 + c.abs()),
            "{what}, output {i}: wgpu {g}, cpu {c}"
        );
    }
}

/// A short run on wgpu lowers the loss: every step sees the same 4 frames without
/// augmentation, so a falling loss is the optimiser working, not an easier batch.
#[test]
fn wgpu_training_lowers_the_loss() {
    if !wgpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 3);
    let mut config = common::run_config(dir.path(), &[&data], "DE", 8, "");
    config.train.batch_size = 4;
    config.train.lr = 0.01;
    config.checkpoint.every = 0;
    config.data.augment = AugmentConfig {
        scale: 0.0,
        translate: 0.0,
        hue: 0.0,
        saturation: 0.0,
        value: 0.0,
        flip: FlipPolicy::Off,
        mosaic_probability: 0.0,
        ..config.data.augment.clone()
    };
    config.validate().unwrap();
    let summary = commands::train(&config, DeviceSpec::Wgpu).unwrap();
    assert_eq!(summary.steps, 8);
    // The segmentation terms: detection's targets move as it learns (see end_to_end.rs).
    let losses = step_segmentation_losses(&config.run_dir());
    eprintln!("wgpu segmentation losses by step: {losses:?}");
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (first, last) = (losses[0], losses[7]);
    assert!(
        last < 0.8 * first,
        "loss went {first} -> {last}: {losses:?}"
    );
}

/// Values uniform in [-1, 1) from a seeded RNG, on `device`.
fn seeded<B: burn::tensor::backend::Backend, const D: usize>(
    shape: [usize; D],
    rng: &mut rand_chacha::ChaCha8Rng,
    device: &B::Device,
) -> burn::tensor::Tensor<B, D> {
    use rand::Rng;
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
}

/// percept's im2col convolution on wgpu equals burn's own convolution on wgpu: the output and
/// the gradients of input, weight and bias, over the network's shapes (3x3 stride 1 and 2,
/// 1x1 with bias) and beyond them (rectangular kernel, uneven stride, dilation, no padding).
#[test]
fn wgpu_im2col_convolution_matches_burns() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Tensor, Tolerance};
    use rand::SeedableRng;
    if !wgpu_available() {
        return;
    }
    type B = Autodiff<Wgpu>;
    // `auto` on wgpu is burn's convolution; this test is what checks `im2col` there.
    let auto = percept::model::conv2d::resolved_name::<B>(percept::model::ConvKernels::Auto);
    assert_eq!(auto, "burn");
    let device = WgpuDevice::default();
    let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let cases: [([usize; 4], [usize; 4], bool, ConvOptions<2>); 5] = [
        (
            [2, 5, 11, 9],
            [7, 5, 3, 3],
            false,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        ),
        (
            [2, 4, 13, 10],
            [6, 4, 3, 3],
            false,
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        ),
        (
            [3, 6, 5, 7],
            [4, 6, 1, 1],
            true,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        ),
        (
            [2, 3, 9, 12],
            [4, 3, 3, 5],
            true,
            ConvOptions::new([1, 2], [2, 1], [2, 1], 1),
        ),
        (
            [1, 2, 6, 5],
            [3, 2, 3, 3],
            true,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        ),
    ];
    let tolerance = Tolerance::<f32>::relative(1e-4).set_absolute(1e-4);
    for (x_shape, w_shape, with_bias, options) in cases {
        let x = seeded::<B, 4>(x_shape, rng, &device).require_grad();
        let weight = seeded::<B, 4>(w_shape, rng, &device).require_grad();
        let bias = with_bias.then(|| seeded::<B, 1>([w_shape[0]], rng, &device).require_grad());
        let ours =
            percept::model::im2col::conv2d(x.clone(), weight.clone(), bias.clone(), &options);
        let burns = conv2d(x.clone(), weight.clone(), bias.clone(), options.clone());
        assert_eq!(ours.dims(), burns.dims(), "{options:?}");
        let r: Tensor<B, 4> = seeded(ours.dims(), rng, &device);
        let g_ours = (ours.clone() * r.clone()).sum().backward();
        let g_burn = (burns.clone() * r).sum().backward();
        ours.into_data()
            .assert_approx_eq(&burns.into_data(), tolerance);
        x.grad(&g_ours)
            .unwrap()
            .into_data()
            .assert_approx_eq(&x.grad(&g_burn).unwrap().into_data(), tolerance);
        weight
            .grad(&g_ours)
            .unwrap()
            .into_data()
            .assert_approx_eq(&weight.grad(&g_burn).unwrap().into_data(), tolerance);
        if let Some(bias) = bias {
            bias.grad(&g_ours)
                .unwrap()
                .into_data()
                .assert_approx_eq(&bias.grad(&g_burn).unwrap().into_data(), tolerance);
        }
    }
}

/// `percept warmup` fills the kernel cache so that a second process, training the same
/// config, tunes no autotune key and compiles only kernels the warm-up compiled (on wgpu's
/// WGSL path cubecl compiles those again in every process; Mesa's shader cache, kept in the
/// same folder, makes that quick). Both processes are the `percept` binary.
#[test]
fn a_warmed_kernel_cache_leaves_the_first_step_nothing_new() {
    if !wgpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 4, 3);
    let cache = dir.path().join("kernel-cache");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"warm\"\nruns_dir = {:?}\n[site]\nregion = \"DE\"\nname = \"lab\"\n\
             [model]\nsize = \"nano\"\ninput = {{ width = {W}, height = {H} }}\n\
             [data]\ndatasets = [{:?}]\n[train]\nsteps = 1\nbatch_size = 2\nseed = 1\nlr = 0.002\n\
             [validation]\nevery = 1\nbatch_size = 3\n",
            dir.path().join("runs").display().to_string(),
            data.display().to_string(),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_percept"))
            .args(args)
            .env("PERCEPT_KERNEL_CACHE", &cache)
            .env_remove("MESA_SHADER_CACHE_DIR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "percept {args:?} failed:\n{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let report = dir.path().join("warmup.json");
    let config = config.to_str().unwrap();
    let (table, _) = run(&[
        "warmup",
        "--config",
        config,
        "--device",
        "wgpu",
        "--steps",
        "1",
        "--json",
        report.to_str().unwrap(),
    ]);
    eprintln!("{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let phases = report["phases"].as_array().unwrap();
    // One training step, then validation's full batch of 3 and the last batch of 1 (4 images).
    let names: Vec<&str> = phases.iter().map(|p| p["what"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "training step 1",
            "validation batch of 3",
            "validation batch of 1"
        ]
    );
    let first = &phases[0]["kernels"];
    assert!(first["compiled"].as_u64().unwrap() > 0, "{first}");
    assert!(cache.join("percept-warmed-kernels.txt").is_file());

    let (_, log) = run(&["train", "--config", config, "--device", "wgpu"]);
    let line = log
        .lines()
        .find(|l| l.contains("first step: "))
        .unwrap_or_else(|| panic!("no first-step line in:\n{log}"));
    eprintln!("{line}");
    assert!(
        line.contains("(0 not compiled by a warm-up), 0 autotune keys tuned (0 candidates timed)"),
        "{line}"
    );
}
