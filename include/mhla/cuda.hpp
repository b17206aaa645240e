#pragma once
// The CUDA backend of the MHLA operators (built when the CUDA toolkit is found).
//
// GpuCausalOperator keeps the recurrent state of many sequences on the device in a pool of
// slots, so sequences come and go without reallocation. Inputs and outputs are device
// pointers; q/k/v/o use the CPU layout ([tokens][heads][width], row-major), q/k/v in fp32, bf16
// or fp16, o in fp32.
// The state is fp32. It covers the unnormalized causal form (what the language models use);
// the normalized causal form runs on the CPU backend.
//
// GpuNonCausalOperator is the non-causal form (MHLA.md section 5) with all the options of the
// CPU's noncausal_forward.
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
  f16,   // the same in fp16 (IEEE half): 3 more significant bits than bf16, values up to 65504
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
  // Continues a slot's sequence from its position with `tokens` more (a later piece of a prompt,
  // a new turn): block by block, each block's piece as a few matrix products, as many tokens of
  // q, k, v and o as `tokens`, laid out as for prefill.
  void extend(int slot, const void* q, const void* k, const void* v, long long tokens, float* o);

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

  // Batch invariance: each sequence's decode step then takes the same path whatever else is in
  // the batch (its rows of P and A split as for a sequence alone), so its outputs are bit for bit
  // those of a step on its own. Off by default: larger batches then split less, or not at all.
  // Set it before a decode step is captured in a CUDA graph.
  void set_batch_invariant(bool on);

  // From now on the operator's work goes to the caller's stream (a cudaStream_t that outlives
  // the operator), so it is ordered with the caller's kernels without synchronization.
  void set_stream(void* stream);

  // Waits for the device work issued so far.
  void synchronize() const;

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
};

// Non-causal MHLA on the device, the same math as noncausal_forward on the CPU (1-D blocks or
// grid windows, every feature map, rotary, normalized or not, grouped query heads): features,
// the block summaries S_b = K_b^T V_b, the mixed summaries P = W S (one product over all
// blocks per key/value head) and O_b = Q_b P_b on cuBLAS. q/k/v in the operator's precision,
// o in fp32; in bf16 or fp16 the features and summaries are in that type too, products
// accumulate in fp32, and the normalizer's block key sums and their mixture stay fp32. The
// operator owns its cuBLAS handle and scratch (grown as needed, kept for the next call).
class GpuNonCausalOperator {
public:
  // Throws mhla::Error for invalid options or without a device.
  GpuNonCausalOperator(NonCausalOptions options, Precision precision);
  GpuNonCausalOperator(GpuNonCausalOperator&&) noexcept;
  GpuNonCausalOperator& operator=(GpuNonCausalOperator&&) noexcept;
  ~GpuNonCausalOperator();

  const NonCausalOptions& options() const;
  Precision precision() const;

  // Device pointers: q [T][H][dk], k [T][Hkv][dk], v [T][Hkv][dv], o [T][H][dv] (fp32).
  // `mixing` (host memory) is the M x M matrix of noncausal_forward, used as given. Refuses,
  // before any work is queued, what the CPU form refuses: a token count that does not split
  // into whole blocks, a mixing matrix of the wrong size or with non-finite entries, a null
  // pointer. Returns once the work is queued on the operator's stream.
  void forward(std::span<const float> mixing, const void* q, const void* k, const void* v, long long tokens,
               float* o);
  // The same on fp32 host memory (inputs converted to the operator's precision on the device);
  // returns when o holds the result.
  void forward_host(std::span<const float> mixing, const float* q, const float* k, const float* v,
                    long long tokens, float* o);

  // From now on the work goes to the caller's stream (a cudaStream_t that outlives the operator).
  void set_stream(void* stream);
  // Waits for the device work issued so far.
  void synchronize() const;

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mhla::cuda
