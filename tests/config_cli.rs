//! `percept config show|check` and `percept train`'s argument rules, through the binary.

use std::path::{Path, PathBuf};

mod common;
use common::percept;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let base = configs().join("base.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            r#"extends = {base:?}
name = "bad"
colour = "red"
[train]
batch_size = "two"
seed = -3
[optimizer]
kind = "adam"
[data.augment]
scale = 2.0
"#,
            base = base.display().to_string()
        ),
    )
    .unwrap();
    let out = percept(&[
        "config",
        "check",
        "--config",
        arg(&bad),
        "--set",
        "train.lr=5",
    ]);
    assert!(!out.ok, "{}", out.stdout);
    let bad_ = bad.display().to_string();
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let e = &out.stderr;
    assert!(
        e.contains(&format!("error: config {bad_}: 6 problems:")),
        "{e}"
    );
    for problem in [
        format!("{bad_}: colour: unknown key; valid top-level keys: extends, name, runs_dir"),
        format!("{bad_}: train.batch_size = \"two\": expected a whole number >= 0"),
        format!("{bad_}: train.seed = -3: expected a whole number >= 0"),
        format!("{bad_}: optimizer.kind = \"adam\": expected one of \"adamw\", \"sgd\""),
        format!("{bad_}: data.augment.scale = 2: give a value in [0, 1)"),
        "--set train.lr=5: train.lr = 5: give a value in (0, 1]".to_string(),
    ] {
        assert!(e.contains(&problem), "missing {problem:?} in\n{e}");
    }
    // No backtrace, no panic: the usual error path.
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
}

#[test]
fn check_and_show_resolve_extends_and_set() {
    let jp = configs().join("finetune-jp.toml");
    let out = percept(&["config", "check", "--config", arg(&jp)]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("{}: ok", jp.display()));

    let out = percept(&[
        "config",
        "show",
        "--config",
        arg(&jp),
        "--set",
        "train.lr=0.5",
        "--set",
        "optimizer.kind=sgd",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let shown = &out.stdout;
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines.contains(&"lr = 0.5"), "{shown}");
    assert!(lines.contains(&"kind = \"sgd\""), "{shown}");
    // From finetune-jp.toml, and inherited from base.toml.
    assert!(lines.contains(&"name = \"finetune-jp\""), "{shown}");
    assert!(lines.contains(&"batch_size = 32"), "{shown}");
    assert!(lines.contains(&"backbone = 0.1"), "{shown}");
    // A default no file sets.
    assert!(lines.contains(&"max_nonfinite_steps = 5"), "{shown}");
    assert!(lines[0].starts_with("# resolved from "), "{shown}");
    assert!(
        lines[0].contains("finetune-jp.toml, --set train.lr=0.5"),
        "{shown}"
    );
}

#[test]
fn train_argument_rules() {
    let smoke = configs().join("smoke.toml");
    let out = percept(&["train"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("--config"), "{}", out.stderr);
    let out = percept(&["train", "--config", arg(&smoke), "--resume", "runs/x"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    let out = percept(&["train", "--resume", "runs/x", "--set", "train.lr=0.1"]);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("a resumed run keeps the config it started with"),
        "{}",
        out.stderr
    );
    let out = percept(&["train", "--config", arg(&smoke), "--set", "train.lr"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("--set \"train.lr\": no '='"),
        "{}",
        out.stderr
    );
}

/// `percept warmup` refuses what it cannot do before touching a GPU or the kernel cache: the
/// CPU device, a config whose data is not here without `--classes`, and a conv setting that
/// does not exist.
#[test]
fn warmup_refuses_the_cpu_missing_manifests_and_unknown_conv_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let smoke = configs().join("smoke.toml");
    let cache = dir.path().join("cache");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_percept"))
            .args(args)
            .env("PERCEPT_KERNEL_CACHE", &cache)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["warmup", "--config", arg(&smoke), "--device", "cpu"]);
    assert!(
        e.contains("--device cpu: the CPU backend compiles no kernels"),
        "{e}"
    );
    // smoke.toml reads runs/synth-de, which this directory does not have.
    let e = run(&["warmup", "--config", arg(&smoke), "--device", "wgpu"]);
    assert!(
        e.contains("data.datasets: runs/synth-de")
            && e.contains("give --classes N where the data is not on this machine"),
        "{e}"
    );
    let e = run(&[
        "warmup",
        "--config",
        arg(&smoke),
        "--device",
        "wgpu",
        "--set",
        "train.conv=gemm",
    ]);
    assert!(
        e.contains("train.conv = \"gemm\": expected one of \"auto\", \"burn\", \"im2col\""),
        "{e}"
    );
    assert!(
        !cache.exists(),
        "nothing may be written to the kernel cache"
    );
}

/// A problem only a `--set` caused is reported against the `--set`, not the config file.
#[test]
fn set_problems_name_the_set_not_the_file() {
    let smoke = configs().join("smoke.toml");
    let out = percept(&[
        "config",
        "check",
        "--config",
        arg(&smoke),
        "--set",
        "train.lr=5",
    ]);
    assert!(!out.ok);
    assert_eq!(
        out.stderr,
        format!(
            "error: --set (not {}): 1 problem:\n  --set train.lr=5: train.lr = 5: give a value \
             in (0, 1]\n",
            smoke.display()
        )
    );
    let out = percept(&["train", "--config", arg(&smoke), "--set", "train.lr"]);
    assert!(!out.ok);
    assert_eq!(
        out.stderr,
        "error: --set \"train.lr\": no '='; give KEY=VALUE, e.g. --set train.lr=0.002\n"
    );
}

/// `config check` refuses an `lr_multipliers` prefix that matches no parameter, with the
/// message `train` gives (it used to pass the check and fail only in `train`).
#[test]
fn config_check_refuses_the_lr_multiplier_prefix_train_refuses() {
    let smoke = configs().join("smoke.toml");
    let set = "optimizer.lr_multipliers.head=0.3";
    let problem = format!(
        "--set {set}: optimizer.lr_multipliers.head: no parameter's path starts with \"head\"; \
         paths are dotted module names such as \"backbone.stem.conv.weight\", and the top-level \
         modules are backbone, neck, detection_head, drivable_head, lane_head"
    );
    for command in ["config check", "train"] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.extend(["--config", arg(&smoke), "--set", set]);
        let out = percept(&args);
        assert!(!out.ok, "{command}: {}", out.stdout);
        assert!(out.stderr.contains(&problem), "{command}: {}", out.stderr);
    }
    let out = percept(&[
        "config",
        "check",
        "--config",
        arg(&smoke),
        "--set",
        "optimizer.lr_multipliers.detection_head=0.3",
    ]);
    assert!(out.ok, "{}", out.stderr);
}

/// An OS error is printed once, not once by the error and again as its source.
#[test]
fn os_error_text_appears_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = percept(&["config", "check", "--config", arg(&missing)]);
    assert!(!out.ok);
    assert_eq!(
        out.stderr,
        format!(
            "error: {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}
