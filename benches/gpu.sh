#!/usr/bin/env bash
# Every GPU measurement percept needs, in one call of under 9 minutes on one GPU:
#
#   1. percept nano, cold kernel cache: first step (kernels compiled, autotune keys tuned) and
#      steady state (`percept bench train`, convolutions `auto` = im2col on a GPU)
#   2. the same again in a second process: the warm cache's first step
#   3. the PyTorch reference, eager f32 and bf16 autocast, nano (then small at the end)
#   4. percept small; percept nano and small in bf16 (cuda only)
#   5. `--conv burn` (burn's autotuned convolution, own cold cache) and `--conv im2col`
#
# then one JSON summary. Each command runs under a deadline so the whole call stays inside
# BUDGET seconds: the most important measurements come first, and a step that would not fit
# is recorded as skipped.
#
#   bash benches/gpu.sh [DEVICE]        DEVICE: cuda:0 (default) or wgpu
#
# Environment:
#   OUT          results folder (the device tool's $OUT; default bench-gpu/)
#   BIN          percept binary (default target/release/percept, built with --features cuda;
#                BIN.gz is unpacked if BIN is missing)
#   MODELS       percept models after nano (default "small")
#   BATCH WIDTH HEIGHT STEPS WARMUP   bench train settings (default 32, 320, 192, 20, 3)
#   BUDGET       seconds for the whole call (default 530)
#   SCALE        factor on each command's own time cap (default 1 on cuda, 6 on wgpu, whose
#                software driver compiles kernels for minutes)
#   WARM_CACHE   a kernel cache folder from an earlier call ($OUT/kernel-cache), copied in
#                before step 1 so that step 1 times a warm start on a fresh process
#   TORCH        0 to leave out PyTorch (default 1 on cuda, 0 on wgpu)
#
# Results in $OUT: one JSON per percept and PyTorch run, their logs, summary.json, and the
# kernel caches (kernel-cache/, kernel-cache-burn/) for a second call to carry back.
set -uo pipefail
cd "$(dirname "$0")/.."

device=${1:-cuda:0}
out=${OUT:-bench-gpu}
bin=${BIN:-target/release/percept}
models=${MODELS-small}
batch=${BATCH:-32}
width=${WIDTH:-320}
height=${HEIGHT:-192}
steps=${STEPS:-20}
warmup=${WARMUP:-3}
budget=${BUDGET:-530}
case "$device" in cuda*) gpu=cuda ;; wgpu) gpu=wgpu ;; *) echo "device: cuda:N or wgpu, not $device" >&2; exit 2 ;; esac
scale=${SCALE:-$([ "$gpu" = cuda ] && echo 1 || echo 6)}
torch=${TORCH:-$([ "$gpu" = cuda ] && echo 1 || echo 0)}
start=$(date +%s)
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ ! -x "$bin" ] && [ -f "$bin.gz" ]; then
    gunzip -c "$bin.gz" > "$out/percept" && chmod +x "$out/percept" && bin="$out/percept"
fi
[ -x "$bin" ] || { echo "no percept binary at $bin (build: see the README's CUDA section)" >&2; exit 2; }

if [ "$gpu" = cuda ]; then
    . benches/cuda-libs.sh
    cuda_libs "$out/lib"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
[ "$torch" = 1 ] && python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'

cache="$out/kernel-cache"
if [ -n "${WARM_CACHE:-}" ]; then
    rm -rf "$cache" && cp -r "$WARM_CACHE" "$cache" && echo "warm start: kernel cache from $WARM_CACHE"
fi

ran=()
# run NAME CAP CMD...: runs CMD with stdout to NAME.json-or-log, under min(CAP, time left).
run() {
    local name=$1 cap=$(($2 * scale))
    shift 2
    local left=$((budget - ($(date +%s) - start) - 10))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        echo "== $name: skipped, ${left}s left"
        ran+=("{\"name\": \"$name\", \"status\": \"skipped\"}")
        return
    fi
    echo "== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$? t1=$(date +%s)
    tail -n 16 "$out/$name.log"
    echo "   exit $rc after $((t1 - t0))s"
    ran+=("{\"name\": \"$name\", \"status\": $rc, \"seconds\": $((t1 - t0))}")
}

percept() {  # percept NAME CAP CACHE ARGS...: one bench train, JSON to NAME.json
    local name=$1 cap=$2 dir=$3
    shift 3
    run "$name" "$cap" env PERCEPT_KERNEL_CACHE="$dir" "$bin" bench train --device "$device" \
        --batch "$batch" --width "$width" --height "$height" --steps "$steps" --warmup "$warmup" \
        --json "$out/$name.json" "$@"
}

pytorch() {  # pytorch NAME MODEL [--amp bf16]
    local name=$1 model=$2
    shift 2
    [ "$torch" = 1 ] || return 0
    run "$name" 90 sh -c "python3 benches/reference/bench.py --model $model --batch $batch \
        --width $width --height $height --device cuda --steps $steps --warmup $warmup \
        --breakdown $* > '$out/$name.json'"
}

percept percept-nano-f32-cold 240 "$cache" --model nano
percept percept-nano-f32-warm 120 "$cache" --model nano
pytorch pytorch-nano-f32 nano
pytorch pytorch-nano-bf16 nano --amp bf16
for model in $models; do
    percept "percept-$model-f32" 150 "$cache" --model "$model"
done
if [ "$gpu" = cuda ]; then
    percept percept-nano-bf16 120 "$cache" --model nano --precision bf16
    for model in $models; do
        percept "percept-$model-bf16" 120 "$cache" --model "$model" --precision bf16
        pytorch "pytorch-$model-f32" "$model"
        pytorch "pytorch-$model-bf16" "$model" --amp bf16
    done
fi
percept percept-nano-conv-burn 200 "$out/kernel-cache-burn" --model nano --conv burn
percept percept-nano-conv-im2col 100 "$cache" --model nano --conv im2col

# One summary: every run's status and the numbers that matter from each JSON.
python3 - "$out" "$device" "$(IFS=,; echo "${ran[*]}")" <<'EOF'
import json, os, sys
out, device, ran = sys.argv[1], sys.argv[2], json.loads("[" + sys.argv[3] + "]")
summary = {"device": device, "runs": []}
for r in ran:
    path = os.path.join(out, r["name"] + ".json")
    try:
        with open(path) as f:
            report = json.loads(f.read().strip().splitlines()[-1] if r["name"].startswith("pytorch") else f.read())
    except (OSError, ValueError, IndexError):
        report = None
    if report and r["name"].startswith("percept"):
        k = report.get("kernels") or {}
        r.update({
            "conv": report["conv"], "precision": report["precision"],
            "first_step_s": report["first_step_ms"] / 1e3,
            "images_per_second": report["fixed_batch"]["images_per_second"],
            "median_step_ms": report["fixed_batch"]["median_step_ms"],
            "breakdown_ms": {p: report["breakdown"][p] for p in ("forward_loss_ms", "backward_ms", "optimizer_ms")},
            "kernels_first_step": k.get("first_step"), "kernels_later": k.get("steady_state"),
            "device_memory_mib": report["memory"].get("device_in_use_mib"),
        })
    elif report:
        r.update({k: report.get(k) for k in ("first_step_ms", "images_per_second", "step_ms_median",
                                               "cuda_max_allocated_mib", "cuda_max_reserved_mib")})
    summary["runs"].append(r)
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
for r in summary["runs"]:
    print(r["name"], r.get("status"), r.get("first_step_s", ""), r.get("images_per_second", ""))
EOF
echo "total $(( $(date +%s) - start ))s; summary $out/summary.json"
