#!/usr/bin/env bash
# Packs what a run on a GPU machine needs into .carry/gpu-bundle.tar.xz: the GPU test and
# benchmark binaries built here for sm_90, libmhla, and the non-CUDA shared libraries they load
# (the GPU machine has the CUDA runtime and cuBLAS but not the Debian libraries). Compressed, as
# the working tree and what it carries must stay small. Usage: make bench && scripts/pack-gpu.sh [BUILD]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bins=("$build/tests/mhla_cuda_tests" "$build/bench/mhla_bench_cuda_op" "$build/bench/mhla_bench_cuda_model")
cp "${bins[@]}" "$out/"
for b in "${bins[@]}"; do
  ldd "$b" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libcuda.so*|libcudart.so*|libcublas*|libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|ld-linux*|libpthread*|libdl*|librt*) ;;
    *) cp -L "$lib" "$out/" ;;
  esac
done
rm -rf .carry
mkdir -p .carry
tar -C "$out" -cJf .carry/gpu-bundle.tar.xz .
du -sh .carry/gpu-bundle.tar.xz
