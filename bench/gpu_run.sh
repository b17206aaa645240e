#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the binaries packed by scripts/pack-gpu.sh
# in .carry/gpu-bundle.tar.xz: the GPU tests, the memory checker over them, the operator and model benchmarks,
# and the PyTorch peers, each log under $OUT. Usage: bench/gpu_run.sh [tests|bench|all|quick]
# (quick: the tests and our benchmarks, without the memory checker and the peers)
set -uo pipefail
what=${1:-all}
out=${OUT:-/tmp/out}
mkdir -p "$out"
bin=/tmp/mhla-bin
mkdir -p "$bin" && tar -C "$bin" -xJf .carry/gpu-bundle.tar.xz
export LD_LIBRARY_PATH="$bin:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export MHLA_TEST_DATA_DIR="$PWD/tests/data"
export PYTHONUNBUFFERED=1
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
} | tee "$out/header.txt"
status=0
if [[ $what != bench ]]; then
  "$bin/mhla_cuda_tests" --durations yes 2>&1 | tee "$out/gpu-tests.log" || status=1
fi
if [[ $what == tests || $what == all ]]; then
  if command -v compute-sanitizer >/dev/null || [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
    san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    "$san" --tool memcheck --leak-check full --error-exitcode 3 "$bin/mhla_cuda_tests" 2>&1 |
      tail -n 40 | tee "$out/gpu-memcheck.log" || status=1
  fi
fi
if [[ $what != tests ]]; then
  "$bin/mhla_bench_cuda_model" 2>&1 | tee "$out/bench-model.txt" || status=1
  "$bin/mhla_bench_cuda_op" 2>&1 | tee "$out/bench-op.txt" || status=1
fi
if [[ $what == bench || $what == all ]]; then
  python3 bench/peers.py 2>&1 | tee "$out/peers.txt" || status=1
fi
exit $status
