#!/usr/bin/env python3
"""percept's detector side by side with ultralytics' YOLO, both trained from scratch on the same
synthetic frames and scored on the same held-out frames with percept's own COCO AP.

See README.md beside this file. In short:

  python benches/ultralytics/side_by_side.py --percept-bin target/release/percept --out runs/yolo-side

1. `percept synth` writes the dataset (the quickstart's by default: region DE, 2000 train +
   200 val frames, 256x160, seed 7) into OUT/data.
2. `yolo_export` (examples/yolo_export.rs) writes it in YOLO's layout into OUT/yolo.
3. For each budget of images seen (default 2000 and 8000), alternating between the methods:
   - percept: `percept train` on a config that extends configs/smoke.toml with steps =
     budget / batch_size, then `percept eval` on the val split;
   - ultralytics: YOLO("yolo11n.yaml") trained from scratch for budget / train-frames epochs,
     predictions on the val frames at conf 0.001, scored by `score_detections`
     (examples/score_detections.rs, percept's evaluator); `model.val()` as a cross-check.
4. OUT/results.json and OUT/results.md: mAP@0.5, mAP@[.5:.95], per-class AP@0.5, training
   wall time per (method, budget). Each (method, budget) is cached in
   OUT/<method>/b<budget>/result.json, keyed by its settings, so runs can be split
   (`--only percept`, `--only ultralytics`) and resumed.

Only the ultralytics side needs the packages of requirements.txt; `--only percept` runs on the
standard library alone. The ultralytics side runs with every network connection refused (see
`_no_network`): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = None

REPO = Path(__file__).resolve().parents[2]
METHODS = ("percept", "ultralytics")


def log(msg: str) -> None:
    print(f"[side_by_side {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(c) for c in cmd))
    res = subprocess.run([str(c) for c in cmd], **kw)
    if res.returncode != 0:
        sys.exit(f"side_by_side: command failed (exit {res.returncode}): {' '.join(map(str, cmd))}")
    return res


def write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        sys.exit(f"side_by_side: {path}: not valid JSON ({e})")


# --------------------------------------------------------------------------------------------
# Dataset and export


def dataset_spec(args) -> dict:
    return {
        "region": args.region,
        "width": args.width,
        "height": args.height,
        "train": args.train,
        "val": args.val,
        "seed": args.seed,
        "name": args.name,
    }


def tool(args, name: str) -> Path:
    """The yolo_export / score_detections binary: given, or cargo's examples/ beside percept."""
    given = getattr(args, name)
    path = Path(given) if given else Path(args.percept_bin).resolve().parent / "examples" / name
    if not path.is_file():
        sys.exit(
            f"side_by_side: {path}: no {name} binary; build it with "
            f"`cargo build --release --example {name}` (it lands in target/release/examples/) "
            f"or pass --{name.replace('_', '-')}"
        )
    return path


def make_dataset(args, out: Path, export: bool) -> tuple[Path, Path]:
    """The percept dataset in OUT/data and, with `export`, its YOLO export in OUT/yolo."""
    data, yolo = out / "data", out / "yolo"
    spec = dataset_spec(args)
    marker = out / "dataset.json"
    done = read_json(marker)
    if done is not None and done.get("spec") == spec and (data / "manifest.json").exists():
        log(f"reusing the dataset in {data} ({spec})")
    else:
        if data.exists() or yolo.exists():
            if done is not None and done.get("spec") != spec:
                sys.exit(
                    f"side_by_side: {out} holds a dataset made with {done.get('spec')}, not "
                    f"{spec}; use another --out"
                )
            # An interrupted synthesis or export of this script: start it over.
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(yolo, ignore_errors=True)
        run(
            [
                args.percept_bin, "synth", "--out", data, "--region", args.region,
                "--train", args.train, "--val", args.val, "--width", args.width,
                "--height", args.height, "--seed", args.seed, "--name", args.name,
            ]
        )
        manifest = json.loads((data / "manifest.json").read_text())
        write_json(marker, {"spec": spec, "manifest_seal": manifest.get("seal")})
    if export and not (yolo / "data.yaml").exists():
        shutil.rmtree(yolo, ignore_errors=True)
        run([tool(args, "yolo_export"), data, yolo])
    return data, yolo


# --------------------------------------------------------------------------------------------
# percept


def percept_side(args, out: Path, data: Path, budget: int) -> dict:
    bdir = out / "percept" / f"b{budget}"
    bdir.mkdir(parents=True, exist_ok=True)
    base = Path(args.percept_config).resolve()
    name = f"percept-{budget}"
    runs = bdir / "runs"

    def config_text(steps: int | None) -> str:
        lines = [
            "# Written by benches/ultralytics/side_by_side.py",
            f"extends = {json.dumps(str(base))}",
            f"name = {json.dumps(name)}",
            f"runs_dir = {json.dumps(str(runs))}",
            "[model]",
            f"input = {{ width = {args.width}, height = {args.height} }}",
            "[data]",
            f"datasets = [{json.dumps(str(data.resolve()))}]",
        ]
        if steps is not None:
            lines += ["[train]", f"steps = {steps}"]
        return "\n".join(lines) + "\n"

    config = bdir / "config.toml"
    config.write_text(config_text(None))
    sets = [a for s in args.percept_set for a in ("--set", s)]
    shown = run(
        [args.percept_bin, "config", "show", "--config", config, *sets],
        capture_output=True, text=True,
    ).stdout
    if tomllib is None:
        sys.exit("side_by_side: the percept side needs Python 3.11+ (tomllib)")
    resolved = tomllib.loads(shown)
    batch = resolved["train"]["batch_size"] * resolved["train"].get("grad_accumulation", 1)
    if budget % batch:
        sys.exit(f"side_by_side: budget {budget} is not a whole number of percept steps of {batch} images")
    steps = budget // batch
    config.write_text(config_text(steps))
    key = {
        "method": "percept",
        "budget": budget,
        "dataset": dataset_spec(args),
        "config": config.read_text(),
        "base_config_text": base.read_text(),
        "sets": args.percept_set,
        # A rebuilt percept (a new recipe) trains again; the config alone would not say so.
        "percept_bin_sha256": file_sha256(Path(args.percept_bin)),
    }
    result_path = bdir / "result.json"
    cached = read_json(result_path)
    if cached is not None and cached.get("key") == key:
        log(f"percept b{budget}: cached in {result_path}")
        return cached
    run_dir = runs / name
    final = run_dir / "checkpoints" / "final.safetensors"
    run_key = bdir / "run_key.json"
    if run_dir.exists() and read_json(run_key) != key:
        # A run with other settings (or of unknown ones): train again from scratch.
        log(f"percept b{budget}: {run_dir} was trained with other settings; training again")
        shutil.rmtree(run_dir)
        (bdir / "train_wall.json").unlink(missing_ok=True)
    write_json(run_key, key)
    resumed = False
    timing = bdir / "train_wall.json"
    if final.exists():
        log(f"percept b{budget}: {final} already trained; evaluating it")
        wall = (read_json(timing) or {}).get("train_wall_s")
    else:
        t0 = time.time()
        if run_dir.exists():
            resumed = True
            run([args.percept_bin, "train", "--resume", run_dir])
        else:
            run([args.percept_bin, "train", "--config", config, *sets])
        wall = time.time() - t0
        write_json(timing, {"train_wall_s": wall, "resumed": resumed})
    eval_json = bdir / "eval.json"
    run(
        [
            args.percept_bin, "eval", "--model", final, "--data", data, "--out", eval_json,
            "--examples", "0",
        ]
    )
    report = read_json(eval_json)
    det = report.get("detection")
    if det is None:
        sys.exit(f"side_by_side: {eval_json}: no detection metrics")
    classes = det["classes"]
    per_class = {
        classes[c["class"]]: c["ap50"] for c in det["metrics"]["per_class"]
    }
    result = {
        "key": key,
        "method": "percept",
        "model": f"percept {resolved['model']['size']} (configs/{base.name} + steps)",
        "budget": budget,
        "steps": steps,
        "batch_size": batch,
        "map50": det["metrics"]["map50"],
        "map50_95": det["metrics"]["map50_95"],
        "per_class_ap50": per_class,
        "train_wall_s": wall,
        "resumed": resumed,
        "checkpoint": str(final),
        "eval_json": str(eval_json),
    }
    write_json(result_path, result)
    return result


# --------------------------------------------------------------------------------------------
# ultralytics


def ultralytics_side(args, out: Path, data: Path, yolo: Path, budget: int) -> dict:
    method = ultralytics_method(args)
    bdir = out / method / f"b{budget}"
    bdir.mkdir(parents=True, exist_ok=True)
    if budget % args.train:
        sys.exit(
            f"side_by_side: budget {budget} is not a whole number of epochs of {args.train} frames"
        )
    extra = dict(kv.split("=", 1) for kv in args.ultra_arg)
    job = {
        "method": method,
        "budget": budget,
        "dataset": dataset_spec(args),
        "model": args.yolo_model,
        "epochs": budget // args.train,
        "imgsz": args.width,
        "batch": args.batch,
        "workers": args.workers,
        "seed": args.seed,
        "conf": 0.001,
        "iou": args.yolo_iou,
        "max_det": args.max_det,
        "extra": extra,
    }
    result_path = bdir / "result.json"
    cached = read_json(result_path)
    if cached is not None and cached.get("key") == job:
        log(f"ultralytics b{budget}: cached in {result_path}")
        return cached
    spec = bdir / "job.json"
    write_json(
        spec,
        {**job, "data_yaml": str((yolo / "data.yaml").resolve()), "dir": str(bdir.resolve())},
    )
    # A fresh interpreter per job: ultralytics' environment is set before it is imported, and
    # the network guard is installed first.
    run([sys.executable, Path(__file__).resolve(), "_ultralytics_job", spec])
    trained = read_json(bdir / "trained.json")
    scores = bdir / "scores.json"
    run(
        [
            tool(args, "score_detections"), data, bdir / "predictions.json",
            "--input", f"{args.width}x{args.height}", "--out", scores,
        ],
        stdout=subprocess.DEVNULL,
    )
    s = read_json(scores)
    settings = "".join(f", {k}={v}" for k, v in extra.items())
    result = {
        "key": job,
        "method": method,
        "model": f"{args.yolo_model} (ultralytics {trained['versions']['ultralytics']}, from scratch{settings})",
        "budget": budget,
        "epochs": job["epochs"],
        "batch_size": args.batch,
        "map50": s["map50"],
        "map50_95": s["map50_95"],
        "per_class_ap50": {c["name"]: c["ap50"] for c in s["per_class"]},  # class order
        "train_wall_s": trained["train_wall_s"],
        "ultralytics_val": trained["val"],
        "versions": trained["versions"],
        "network_attempts": trained["network_attempts"],
        "weights": trained["weights"],
        "scores_json": str(scores),
    }
    write_json(result_path, result)
    return result


_NETWORK_ATTEMPTS: list = []


def _no_network() -> None:
    """Refuses every connection and name lookup that is not local, and records each attempt:
    the proof that ultralytics downloads nothing (a download it needed would fail loudly)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    local = ("localhost", "127.0.0.1", "::1", "")

    def allowed(sock, address) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True  # Unix sockets: the data loader's workers
        host = address[0] if isinstance(address, tuple) else address
        return host in local or str(host).startswith("127.")

    def connect(sock, address):
        if not allowed(sock, address):
            _NETWORK_ATTEMPTS.append(f"connect {address}")
            raise OSError(f"side_by_side: network refused ({address})")
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if not allowed(sock, address):
            _NETWORK_ATTEMPTS.append(f"connect {address}")
            raise OSError(f"side_by_side: network refused ({address})")
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *a, **kw):
        if host not in local and not str(host).startswith("127."):
            _NETWORK_ATTEMPTS.append(f"resolve {host}")
            raise socket.gaierror(f"side_by_side: network refused (resolving {host})")
        return real_getaddrinfo(host, *a, **kw)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo


def ultralytics_method(args) -> str:
    """`ultralytics`, or `ultralytics-<variant>` for a run with other settings beside it."""
    return f"ultralytics-{args.variant}" if args.variant else "ultralytics"


def _ultralytics_job(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    bdir = Path(job["dir"])
    config_dir = bdir.parent / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    # Before ultralytics is imported: its settings and font cache live here, not in ~/.config;
    # YOLO_OFFLINE makes its online check answer "offline" without trying.
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "True")
    _no_network()
    import torch
    import ultralytics
    from ultralytics import YOLO, settings
    from ultralytics.utils import USER_CONFIG_DIR

    # ultralytics' dataset check makes sure Arial.ttf is in its config dir and downloads it
    # when it is not (it only draws plots with it, and plots are off here). matplotlib, one of
    # its own dependencies, ships DejaVu Sans: placed under that name, nothing is fetched.
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for font in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (USER_CONFIG_DIR / font).exists():
            shutil.copyfile(dejavu, USER_CONFIG_DIR / font)
    # No analytics events, no experiment-tracker callbacks.
    off = ("sync", "hub", "platform", "clearml", "comet", "dvc", "mlflow", "raytune",
           "tensorboard", "wandb", "vscode_msg", "openvino_msg")
    settings.update({k: False for k in off if k in settings})
    versions = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    train_dir = bdir / "train"
    if train_dir.exists():
        shutil.rmtree(train_dir)  # an interrupted earlier job: train again from scratch
    model = YOLO(job["model"])  # a .yaml: the architecture only, randomly initialised
    t0 = time.time()
    model.train(
        data=job["data_yaml"],
        epochs=job["epochs"],
        imgsz=job["imgsz"],
        batch=job["batch"],
        workers=job["workers"],
        device="cpu",
        seed=job["seed"],
        deterministic=True,
        pretrained=False,
        amp=False,
        plots=False,
        val=False,
        project=str(bdir),
        name="train",
        exist_ok=True,
        **{k: _yaml_value(v) for k, v in job["extra"].items()},
    )
    wall = time.time() - t0
    weights = train_dir / "weights" / "last.pt"
    trained = YOLO(str(weights))
    # Cross-check: ultralytics' own mAP on the same val frames (its evaluator, its NMS).
    metrics = trained.val(
        data=job["data_yaml"], imgsz=job["imgsz"], batch=job["batch"], device="cpu",
        conf=0.001, iou=job["iou"], max_det=job["max_det"], plots=False, workers=job["workers"],
        project=str(bdir), name="val", exist_ok=True,
    )
    val = {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "note": "ultralytics' own evaluator (COCO-style 101-point, its matching); cross-check only",
    }
    # Predictions on every val frame, in the frame's own pixels, keyed by its export name.
    images = sorted((Path(job["data_yaml"]).parent / "images" / "val").glob("*.png"))
    predictions = {}
    for r in trained.predict(
        source=[str(p) for p in images], imgsz=job["imgsz"], conf=0.001, iou=job["iou"],
        max_det=job["max_det"], device="cpu", stream=True, verbose=False, batch=job["batch"],
    ):
        b = r.boxes
        predictions[Path(r.path).stem] = [
            {"class": int(c), "score": float(s), "bbox": [float(v) for v in xyxy]}
            for c, s, xyxy in zip(b.cls.tolist(), b.conf.tolist(), b.xyxy.tolist())
        ]
    write_json(bdir / "predictions.json", predictions)
    write_json(
        bdir / "trained.json",
        {
            "train_wall_s": wall,
            "val": val,
            "versions": versions,
            "weights": str(weights),
            "network_attempts": _NETWORK_ATTEMPTS,
        },
    )


def _yaml_value(v: str):
    """A --ultra-arg value as ultralytics' CLI would read it: number, bool, None or string."""
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


# --------------------------------------------------------------------------------------------
# Report


def table(results: list, classes: list) -> str:
    """The Markdown table; per-class columns in the dataset's class order."""
    classes = list(classes)
    for r in results:
        for c in r["per_class_ap50"]:
            if c not in classes:
                classes.append(c)

    def f(v, digits=3):
        return "–" if v is None else f"{v:.{digits}f}"

    head = ["method", "images seen", "mAP@0.5", "mAP@[.5:.95]", *[f"AP@0.5 {c}" for c in classes],
            "train wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        wall = r.get("train_wall_s")
        row = [
            r["model"], str(r["budget"]), f(r["map50"]), f(r["map50_95"]),
            *[f(r["per_class_ap50"].get(c)) for c in classes],
            "–" if wall is None else f"{wall / 60:.1f} min",
        ]
        lines.append("| " + " | ".join(row) + " |")
    cross = [r for r in results if r["method"].startswith("ultralytics")]
    if cross:
        lines.append("")
        lines.append("ultralytics' own `model.val()` on the same frames (cross-check):")
        for r in cross:
            v = r["ultralytics_val"]
            lines.append(f"- {r['model']}, {r['budget']} images: mAP50 {v['map50']:.3f}, mAP50-95 {v['map50_95']:.3f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_ultralytics_job":
        _ultralytics_job(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--percept-bin", required=True, help="the percept binary (runs synth, train, eval)")
    p.add_argument("--yolo-export", help="examples/yolo_export binary (default: examples/ beside --percept-bin)")
    p.add_argument("--score-detections", help="examples/score_detections binary (default: examples/ beside --percept-bin)")
    p.add_argument("--out", default="runs/yolo-side", help="output directory (default: %(default)s)")
    p.add_argument("--only", choices=METHODS, help="run one method only")
    p.add_argument("--budgets", default="2000,8000", help="images seen in training, comma-separated (default: %(default)s)")
    g = p.add_argument_group("dataset (percept synth's flags; defaults: the quickstart's)")
    g.add_argument("--region", default="DE")
    g.add_argument("--width", type=int, default=256)
    g.add_argument("--height", type=int, default=160)
    g.add_argument("--train", type=int, default=2000, help="training frames")
    g.add_argument("--val", type=int, default=200, help="held-out frames")
    g.add_argument("--seed", type=int, default=7, help="synthesis seed, also ultralytics' training seed")
    g.add_argument("--name", default="synthetic-quickstart", help="dataset name in the manifest")
    g = p.add_argument_group("percept")
    g.add_argument("--percept-config", default=str(REPO / "configs" / "smoke.toml"),
                   help="config the run's config extends (default: configs/smoke.toml)")
    g.add_argument("--percept-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `percept train --set` override (repeatable)")
    g = p.add_argument_group("ultralytics")
    g.add_argument("--yolo-model", default="yolo11n.yaml", help="model yaml, from scratch (default: %(default)s)")
    g.add_argument("--batch", type=int, default=8, help="ultralytics batch size (default: %(default)s, percept smoke's)")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--yolo-iou", type=float, default=0.7, help="NMS IoU of predict/val (ultralytics' val default)")
    g.add_argument("--max-det", type=int, default=100, help="detections kept per image (percept's eval.max_detections)")
    g.add_argument("--ultra-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model.train() argument, e.g. nbs=8 (repeatable)")
    g.add_argument("--variant", help="name of a run with other ultralytics settings: its results "
                   "go to OUT/ultralytics-VARIANT/ and join the table beside the default's")
    args = p.parse_args()
    args.percept_bin = str(Path(args.percept_bin).resolve())
    if not Path(args.percept_bin).is_file():
        sys.exit(f"side_by_side: {args.percept_bin}: no such binary")
    budgets = [int(b) for b in args.budgets.split(",") if b]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = [args.only] if args.only else list(METHODS)
    data, yolo = make_dataset(args, out, export="ultralytics" in methods)
    for budget in budgets:
        for method in methods:
            if method == "percept":
                percept_side(args, out, data, budget)
            else:
                ultralytics_side(args, out, data, yolo, budget)
    # The report covers every cached result of this dataset, whichever run produced it.
    results = []
    # percept first, then ultralytics, then its variants.
    dirs = sorted((d for d in out.iterdir() if d.is_dir() and d.name.startswith(METHODS)),
                  key=lambda d: (not d.name.startswith("percept"), d.name))
    for budget in budgets:
        for d in dirs:
            r = read_json(d / f"b{budget}" / "result.json")
            if r is not None and r["key"]["dataset"] == dataset_spec(args):
                results.append({k: v for k, v in r.items() if k != "key"})
    summary = {"dataset": dataset_spec(args), "results": results}
    write_json(out / "results.json", summary)
    md = table(results, (read_json(yolo / "export.json") or {}).get("classes", []))
    (out / "results.md").write_text(md)
    print(md)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
