#!/usr/bin/env bash
# Training-step speed on a CUDA machine: percept (`bench train --device cuda:0`) and the PyTorch
# reference (eager f32 and bf16 autocast), same models, batch and input size, then a smoke
# training run on the GPU.
#
#   bash benches/cuda.sh [PERCEPT_BINARY] [OUT_DIR]
#
# PERCEPT_BINARY defaults to target/release/percept (built with `--features cuda`). JSON reports
# and logs go to OUT_DIR (default: bench-cuda/). Environment: MODELS (default "nano small"),
# BATCHES (default "32"), STEPS (default 20), SMOKE_STEPS (default 260, configs/smoke.toml's).
set -uo pipefail

bin=${1:-target/release/percept}
out=${2:-bench-cuda}
models=${MODELS:-nano small}
batches=${BATCHES:-32}
steps=${STEPS:-20}
mkdir -p "$out"

# burn-cuda loads the driver, NVRTC and NCCL at run time (cudarc's dynamic loading) and looks for
# unversioned names or `.so.<CUDA major>`: point it at the toolkit's, or at pip's wheels. The driver
# (libcuda.so.1) is found where the system keeps it; a toolkit's compat/ copy would not match it.
libs=$(mktemp -d)
for name in libnvrtc.so libnccl.so; do
    found=$(find /usr/local/cuda*/ /usr/local/nvidia /usr/lib/x86_64-linux-gnu /opt \
        -name "$name*" \( -type f -o -type l \) 2>/dev/null | grep -v -e stub -e alt | sort | head -1)
    [ -n "$found" ] && ln -sf "$found" "$libs/$name" && echo "using $found for $name"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>&1

for model in $models; do
    for batch in $batches; do
        tag="$model-b$batch"
        for precision in f32 bf16; do
            echo "== percept $tag $precision"
            timeout 300 "$bin" bench train --model "$model" --device cuda:0 --batch "$batch" \
                --steps "$steps" --precision "$precision" --json "$out/percept-$tag-$precision.json" \
                > "$out/percept-$tag-$precision.log" 2>&1
            echo "exit $?"; grep -v -e '^\s*$' "$out/percept-$tag-$precision.log" | tail -22
        done
        for amp in none bf16; do
            echo "== pytorch $tag amp=$amp"
            args=()
            [ "$amp" != none ] && args=(--amp "$amp")
            timeout 300 python3 benches/reference/bench.py --model "$model" --batch "$batch" \
                --device cuda --steps "$steps" --breakdown "${args[@]}" 2>&1 \
                | tee "$out/pytorch-$tag-$amp.json"
        done
    done
done

echo "== smoke training on cuda:0 (configs/smoke.toml)"
"$bin" synth --out runs/synth-de --region DE --width 256 --height 160 > /tmp/synth.log 2>&1
timeout 300 "$bin" train --config configs/smoke.toml --device cuda:0 \
    --set logging.progress=lines --set "train.steps=${SMOKE_STEPS:-260}" > "$out/train-smoke.log" 2>&1
echo "exit $?"; tail -8 "$out/train-smoke.log"
