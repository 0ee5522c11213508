#!/usr/bin/env bash
# The NCCL path of a run over several processes, checked and timed on one GPU in one call:
#
#   1. `mpirun -np 1 percept bench all-reduce --device cuda:0`: before timing, the rank checks
#      that NCCL's all-reduce gives back its input (the sum over one rank), against values
#      computed by hand; then the time of nano's, small's and medium's gradient all-reduce.
#   2. `percept bench train` on cuda:0, alone and under `mpirun -np 1` (where every step's
#      gradients go through Cluster::mean and NCCL): what the all-reduce adds to a step.
#
#   bash benches/cluster-gpu.sh [DEVICE]     DEVICE: cuda:0 (default), or cpu to try the script
#
# Environment:
#   OUT           results folder (the device tool's $OUT; default bench-cluster-gpu/)
#   BIN           percept built with --features cuda,mpi (default target/release/percept;
#                 BIN.gz is unpacked if BIN is missing)
#   OMPI_TARBALL  an Open MPI tree (Debian's packages unpacked, as .tar.gz), unpacked into
#                 /tmp/ompi and used instead of an installed mpirun (for a machine without one)
#   KERNEL_CACHE  percept's kernel cache for the bench train runs (default $OUT/kernel-cache)
#   BATCH WIDTH HEIGHT STEPS   bench train settings (default 32, 320, 192, 20)
set -uo pipefail
cd "$(dirname "$0")/.."

device=${1:-cuda:0}
out=${OUT:-bench-cluster-gpu}
bin=${BIN:-target/release/percept}
batch=${BATCH:-32}
width=${WIDTH:-320}
height=${HEIGHT:-192}
steps=${STEPS:-20}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${KERNEL_CACHE:-$out/kernel-cache}

if [ ! -x "$bin" ] && [ -f "$bin.gz" ]; then
    gunzip -c "$bin.gz" > /tmp/percept && chmod +x /tmp/percept && bin=/tmp/percept
fi
[ -x "$bin" ] || { echo "no percept binary at $bin (cargo build --release --features cuda,mpi)" >&2; exit 2; }

if [ -n "${OMPI_TARBALL:-}" ]; then
    # Debian's Open MPI, relocated: OPAL_PREFIX tells it where its components and help are.
    mkdir -p /tmp/ompi && tar -C /tmp/ompi -xzf "$OMPI_TARBALL"
    export OPAL_PREFIX=/tmp/ompi/usr
    export LD_LIBRARY_PATH="/tmp/ompi/usr/lib/x86_64-linux-gnu/openmpi/lib:/tmp/ompi/usr/lib/x86_64-linux-gnu:/tmp/ompi/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    mpirun=(/tmp/ompi/usr/bin/orterun)
elif command -v mpirun >/dev/null; then
    mpirun=(mpirun)
else
    echo "no mpirun: install Open MPI, or set OMPI_TARBALL" >&2
    exit 2
fi
# Containers run as root; one node, so no transport beyond shared memory is needed.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader
"${mpirun[@]}" --version | head -1

if [ "$device" != cpu ]; then
    . benches/cuda-libs.sh
    cuda_libs "$out/lib"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

status=0
step() {  # step NAME LIMIT CMD...: CMD's output to NAME.log and the screen's tail
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 14 "$out/$name.log"
    echo "   exit $rc after $(($(date +%s) - t0))s"
    [ "$rc" -eq 0 ] || status=1
}

step nccl-all-reduce 120 env NCCL_DEBUG=WARN "${mpirun[@]}" -np 1 --bind-to none "$bin" bench all-reduce \
    --device "$device" --models nano,small,medium --rounds 20 --json "$out/nccl-all-reduce.json"
if [ "$device" != cpu ] && ! grep -q "NCCL" "$out/nccl-all-reduce.log"; then
    echo "the all-reduce did not go through NCCL"
    status=1
fi

train() {  # train NAME LIMIT [LAUNCHER...]: bench train of nano on the device
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" env PERCEPT_KERNEL_CACHE="$cache" "$@" "$bin" bench train --device "$device" \
        --model nano --batch "$batch" --width "$width" --height "$height" --steps "$steps" \
        --json "$out/$name.json"
}
# Alone first: it compiles the kernels the second run then finds in the cache.
train bench-train-alone 240
train bench-train-mpirun-np1 150 "${mpirun[@]}" -np 1 --bind-to none

exit $status
