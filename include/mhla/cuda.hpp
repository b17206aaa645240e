#pragma once
// The CUDA backend of the causal MHLA operator (built when the CUDA toolkit is found).
//
// GpuCausalOperator keeps the recurrent state of many sequences on the device in a pool of
// slots, so sequences come and go without reallocation. Inputs and outputs are device
// pointers; q/k/v/o use the CPU layout ([tokens][heads][width], row-major), in fp32 or bf16.
// The state is fp32. This backend covers the unnormalized causal form (what the language
// models use); the normalized form runs on the CPU backend.
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mhla/causal.hpp"

namespace mhla::cuda {

// Number of usable CUDA devices; 0 without a GPU or driver (never throws).
int device_count();
std::string device_name(int device);

enum class Precision {
  f32,   // fp32 inputs, fp32 products: the exact path
  bf16,  // bf16 inputs and block summaries, fp32 accumulation and state
};

class GpuCausalOperator {
public:
  // Throws mhla::Error for options the GPU path does not cover (normalized form) or without a
  // device. `prefill_tile_blocks` (>= L) groups blocks for the prefill's mixing products.
  GpuCausalOperator(CausalOptions options, MixingWeights weights, int max_sequences, Precision precision,
                    int prefill_tile_blocks = 64);
  GpuCausalOperator(GpuCausalOperator&&) noexcept;
  GpuCausalOperator& operator=(GpuCausalOperator&&) noexcept;
  ~GpuCausalOperator();

  const CausalOptions& options() const;
  Precision precision() const;

  // State slots: a fresh slot is at position 0.
  int acquire();
  void release(int slot);
  long long position(int slot) const;
  size_t slot_bytes() const;

  // Slot `to` (in use) becomes a copy of slot `from`: a fork, on the device.
  void copy_slot(int from, int to);

  // Copies between a slot and a CPU state of the same configuration.
  void upload(int slot, const CausalState& state);
  CausalState download(int slot) const;

  // Prefill of a whole sequence into a fresh slot (every block at once on the device).
  void prefill(int slot, const void* q, const void* k, const void* v, long long tokens, float* o);

  // One decode step for each listed slot (all distinct): q [B][H][dk], k [B][Hkv][dk],
  // v [B][Hkv][dv], o [B][H][dv] fp32, in the operator's precision for q/k/v.
  void decode(std::span<const int> slots, const void* q, const void* k, const void* v, float* o);
  // The same step in two halves, for CUDA graphs: decode_prepare does the host's bookkeeping
  // and writes the step's tables to pinned memory; decode_launch copies them and launches the
  // kernels, with shapes that depend only on the batch size, so a graph captured from it can
  // be replayed after each later prepare of the same batch size. Between a prepare and its
  // launch (or replay) no other step of this operator may run, and the caller waits for a
  // replayed step to finish before the next prepare.
  void decode_prepare(std::span<const int> slots);
  void decode_launch(int batch, const void* q, const void* k, const void* v, float* o);

  // From now on the operator's work goes to the caller's stream (a cudaStream_t that outlives
  // the operator), so it is ordered with the caller's kernels without synchronization.
  void set_stream(void* stream);

  // Waits for the device work issued so far.
  void synchronize() const;

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mhla::cuda
