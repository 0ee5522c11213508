#!/usr/bin/env bash
# What each ONNX precision costs against fp32 on held-out frames, measured in ONNX Runtime by
# percept's own evaluator: exports MODEL as fp32, fp16 and INT8 (calibrated on DATA's train
# split, percentile and max ranges), evaluates each and the safetensors model on DATA's val
# split, and prints one Markdown table.
#
#   benches/onnx/precision.sh MODEL DATA [OUT_DIR] [CALIBRATION_FRAMES]
#
# PERCEPT names the binary (default target/release/percept, else target/debug/percept).
set -euo pipefail
model=$1
data=$2
out=${3:-runs/onnx-precision}
frames=${4:-256}
bin=${PERCEPT:-target/release/percept}
[ -x "$bin" ] || bin=target/debug/percept
mkdir -p "$out"

export_onnx() {
  local name=$1
  shift
  "$bin" export --checkpoint "$model" --format onnx --out "$out/$name.onnx" "$@" >/dev/null
}
export_onnx fp32
export_onnx fp16 --precision fp16
export_onnx int8 --precision int8 --calibration-data "$data" --calibration-frames "$frames"
export_onnx int8-max --precision int8 --calibration-data "$data" --calibration-frames "$frames" \
  --calibration-method max

"$bin" eval --model "$model" --data "$data" --split val --out "$out/safetensors.json" >/dev/null
for name in fp32 fp16 int8 int8-max; do
  "$bin" eval --model "$out/$name.onnx" --data "$data" --split val --out "$out/$name.json" >/dev/null
done

python3 - "$out" "$frames" <<'PY'
import json, os, sys
out, frames = sys.argv[1], sys.argv[2]
rows = [
    ("percept (safetensors, burn-flex)", "safetensors", None),
    ("ONNX fp32", "fp32", "fp32.onnx"),
    ("ONNX fp16", "fp16", "fp16.onnx"),
    (f"ONNX INT8, percentile:99.99 ranges, {frames} frames", "int8", "int8.onnx"),
    (f"ONNX INT8, max ranges, {frames} frames", "int8-max", "int8-max.onnx"),
]
def metrics(name):
    d = json.load(open(os.path.join(out, name + ".json")))
    return (d["detection"]["metrics"]["map50"], d["drivable"]["miou"], d["lanes"]["iou"], d["images"])
base = metrics("fp32")
print("| model | file MB | mAP@0.5 | drivable mIoU | lane IoU | vs ONNX fp32 (mAP / mIoU / IoU) |")
print("|---|---:|---:|---:|---:|---|")
for label, name, file in rows:
    m = metrics(name)
    size = f"{os.path.getsize(os.path.join(out, file)) / 1e6:.1f}" if file else ""
    delta = " / ".join(f"{a - b:+.4f}" for a, b in zip(m[:3], base[:3]))
    print(f"| {label} | {size} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {delta} |")
print(f"\n{base[3]} held-out images.")
PY
