#!/usr/bin/env python3
"""Batch-1 CPU latency of a percept model: percept-infer (Rust, burn-flex) against ONNX Runtime
on the ONNX export of the same model, on the same input.

    percept export --checkpoint ckpt.safetensors --format onnx --decode raw --out model.onnx
    python3 benches/infer/latency.py --model model.safetensors --onnx model.onnx --image img.png

`--decode raw` makes the graph end at the network's outputs (`class_logits`, `box_logits`,
`distances`, `drivable`, `lanes`), which is what the Rust forward computes; the outputs the
graph has are printed with the table.

The Rust side is percept-infer's `detect` example (`--repeat`): it times the network forward
alone and the whole `detect()` (letterbox + forward + decode + masks back to the image) and
writes the letterboxed, normalised input it used (`--save-input`). ONNX Runtime
(CPUExecutionProvider) runs that same input through `session.run`, batch 1. Both use the same
thread count (`--threads`, default every core): `RAYON_NUM_THREADS` for burn-flex's pool,
`intra_op_num_threads` for ONNX Runtime. The two alternate for `--rounds` rounds of `--repeat`
timed runs each (after 3 warm-up runs), so that drift in the machine's state (clock, other load)
hits both; the table gives, per runtime, the median over rounds of each round's median and p90.

The example is built with `cargo build --release -p percept-infer --example detect` (percept-infer
alone: percept-model without its training `flex` feature, as a deployment builds it) unless
`--example` names a binary. Needs `onnxruntime` and `numpy`.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
WARM_UP = 3


def quantile(sorted_ms, q):
    """Nearest-rank quantile of sorted values (as the Rust example computes it)."""
    rank = min(max(int(np.ceil(q * len(sorted_ms))), 1), len(sorted_ms))
    return sorted_ms[rank - 1]


def build_example():
    subprocess.run(
        ["cargo", "build", "--release", "-p", "percept-infer", "--example", "detect"],
        cwd=REPO,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "examples" / "detect"


def run_rust(example, args, threads, extra=()):
    """One round of the Rust example; returns its JSON line as a dict."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(example), "--model", args.model, "--image", args.image, "--repeat", str(args.repeat)]
    out = subprocess.run(cmd + list(extra), env=env, check=True, capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"the detect example printed no JSON line:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


def run_ort(session, feed, repeat):
    """One round of ONNX Runtime: `repeat` timed runs after the warm-up; (median, p90) in ms."""
    for _ in range(WARM_UP):
        session.run(None, feed)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        runs.append((time.perf_counter() - start) * 1e3)
    runs.sort()
    return quantile(runs, 0.5), quantile(runs, 0.9)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="percept model file (safetensors)")
    p.add_argument("--onnx", required=True, help="ONNX export of the same model (percept export --format onnx)")
    p.add_argument("--image", required=True, help="PNG or JPEG frame")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per runtime (default 5)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per round (default 30)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both runtimes (default: every core)")
    p.add_argument("--example", help="the built detect example (default: build it in release mode)")
    args = p.parse_args()

    example = Path(args.example) if args.example else build_example()
    with tempfile.TemporaryDirectory() as tmp:
        input_file = Path(tmp) / "input.f32"
        first = run_rust(example, args, args.threads, ["--save-input", str(input_file)])
        width, height = first["input"]
        images = np.fromfile(input_file, dtype="<f4").reshape(1, 3, height, width)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    if "images" not in inputs:
        sys.exit(f"{args.onnx}: no input named `images` (inputs: {', '.join(inputs)})")
    dims = inputs["images"].shape
    if list(dims[1:]) != [3, height, width] and all(isinstance(d, int) for d in dims[1:]):
        sys.exit(f"{args.onnx}: input `images` is {dims}; the model card's input is [*, 3, {height}, {width}]")
    feed = {"images": images}

    rust_forward, rust_detect, onnx = [], [], []
    # The first round above was the input's; its timings count too, then the two alternate.
    rust = first
    for r in range(args.rounds):
        if r > 0:
            rust = run_rust(example, args, args.threads)
        rust_forward.append((rust["forward_ms"]["median"], rust["forward_ms"]["p90"]))
        rust_detect.append((rust["detect_ms"]["median"], rust["detect_ms"]["p90"]))
        onnx.append(run_ort(session, feed, args.repeat))

    def row(name, rounds):
        median = statistics.median(m for m, _ in rounds)
        p90 = statistics.median(q for _, q in rounds)
        return f"| {name} | {median:.2f} | {p90:.2f} |"

    print(
        f"{cpu_name()}, {args.threads} thread(s); input {width}x{height} from a "
        f"{first['image'][0]}x{first['image'][1]} image; {args.rounds} alternating rounds of "
        f"{args.repeat} runs (after {WARM_UP} warm-up runs); onnxruntime {ort.__version__}, "
        f"graph outputs: {', '.join(o.name for o in session.get_outputs())}\n"
    )
    print("| batch 1, CPU | median ms | p90 ms |")
    print("|---|---:|---:|")
    print(row("percept-infer, network forward (burn-flex)", rust_forward))
    print(row("ONNX Runtime, `session.run` (CPUExecutionProvider)", onnx))
    print(row("percept-infer, whole `detect()` (letterbox + forward + decode)", rust_detect))


if __name__ == "__main__":
    main()
