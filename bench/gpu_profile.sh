#!/usr/bin/env bash
# On the GPU machine: per-kernel device times (Nsight Compute, clocks left alone) of the
# operator's prefill and decode step and of one model decode step, to see where time goes.
# Uses the bundle of scripts/pack-gpu.sh; logs under $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
bin=/tmp/mhla-bin
mkdir -p "$bin" && tar -C "$bin" -xJf .carry/gpu-bundle.tar.xz
export LD_LIBRARY_PATH="$bin:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1 || echo /usr/local/cuda/bin/ncu)
profile() {  # name, then the command
  local name=$1
  shift
  "$ncu" --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel "$@" >"$out/ncu-$name.txt" 2>&1
  echo "== $name: $(grep -c 'gpu__time_duration' "$out/ncu-$name.txt") kernels"
}
profile op-prefill-32k "$bin/mhla_bench_cuda_op" "op prefill N=32768"
profile op-prefill-128k "$bin/mhla_bench_cuda_op" "op prefill N=131072"
profile op-decode-b1 -c 400 "$bin/mhla_bench_cuda_op" "op decode step B=1"
MHLA_BENCH_STEPS=4 profile model-decode-b1 "$bin/mhla_bench_cuda_model" "model decode B=1 ctx=1024"
MHLA_BENCH_STEPS=4 profile model-decode-b64 "$bin/mhla_bench_cuda_model" "model decode B=64 ctx=1024"
