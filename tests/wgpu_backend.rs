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
use percept::data::{AugmentConfig, FlipPolicy};
use percept::model::{ModelSize, PerceptionNetConfig};
use percept::train::export::{output_values, probe_input};
use percept::train::{commands, DeviceSpec};

mod common;
use common::{step_losses, synth, H, W};

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
    let losses = step_losses(&config.run_dir());
    eprintln!("wgpu losses by step: {losses:?}");
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (first, last) = (losses[0], losses[7]);
    assert!(
        last < 0.8 * first,
        "loss went {first} -> {last}: {losses:?}"
    );
}
