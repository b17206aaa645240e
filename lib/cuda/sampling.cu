// Sampler::sample on the device, one thread block per row. Each thread owns a contiguous range of
// ids, so sums taken in id order (the inverse-CDF draw, the lowest ids among ties) are a block
// scan over the threads' partial sums. Top-k and top-p are radix selections on the logits'
// order-preserving bit patterns: the probability exp((l - max) / T) is increasing in the logit,
// so "largest probability first, lower id on ties" is "largest logit first, lower id on ties".
// Probabilities and their sums are float64, as on the CPU (each probability computed once, into
// the row's scratch, as float64 division and exp are slow); only the order of summation
// differs, which moves a partial sum by a few units in the last place.
#include "cuda/sampling.cuh"

#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

#include "cuda/check.hpp"

namespace mhla::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;

// Unsigned keys in the order of the floats they come from; -0 and +0 are one key, as they
// compare equal (a tie, which the lower id wins).
__device__ inline unsigned order_key(float x) {
  const unsigned u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ inline float key_float(unsigned k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

struct Best {
  float value;
  int id;
};
struct BetterOf {
  __device__ Best operator()(const Best& a, const Best& b) const {
    if (a.value != b.value) return a.value > b.value ? a : b;
    return a.id < b.id ? a : b;
  }
};

struct MinOf {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};

using ReduceInt = cub::BlockReduce<int, kThreads>;
using ReduceDouble = cub::BlockReduce<double, kThreads>;
using ReduceBest = cub::BlockReduce<Best, kThreads>;
using ScanInt = cub::BlockScan<int, kThreads>;
using ScanDouble = cub::BlockScan<double, kThreads>;

struct Shared {
  union {
    ReduceInt::TempStorage reduce_int;
    ReduceDouble::TempStorage reduce_double;
    ReduceBest::TempStorage reduce_best;
    ScanInt::TempStorage scan_int;
    ScanDouble::TempStorage scan_double;
  } cub;
  double hist[256];
  unsigned prefix;
  double rest;
  int cut, found, last, bad, finite;
  Best best;
  double total;
};

// One row's work; `lo`, `hi` are this thread's ids.
struct Row {
  float* l;
  int lo, hi;
  Shared& sh;
  const double* p = nullptr;  // the probabilities, once computed

  // Calls f(i, l[i], p[i]) (0 before the probabilities exist) for this thread's ids in
  // ascending order, loading several ids at a time: one at a time, each load waits for the last.
  template <class F>
  __device__ void each(F f) const {
    constexpr int kAhead = 8;
    for (int i0 = lo; i0 < hi; i0 += kAhead) {
      float x[kAhead];
      double w[kAhead];
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
        x[u] = i0 + u < hi ? l[i0 + u] : 0.0f;
        w[u] = p && i0 + u < hi ? p[i0 + u] : 0.0;
      }
#pragma unroll
      for (int u = 0; u < kAhead; ++u)
        if (i0 + u < hi) f(i0 + u, x[u], w[u]);
    }
  }

  // Among the ids `in` accepts, the key at which their weights (weight(p[i])), taken in
  // descending key order, first reach `target`; sh.rest is then what of the target is left for
  // that key's ids.
  template <class In, class Weight>
  __device__ unsigned select(In in, Weight weight, double target) {
    unsigned prefix = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0.0;
      __syncthreads();
      each([&](int i, float x, double w) {
        if (!in(i, x)) return;
        const unsigned k = order_key(x);
        if ((static_cast<unsigned long long>(k ^ prefix) >> (shift + 8)) != 0) return;
        // Lanes adding to the same bin add once between them: float64 atomics on shared memory
        // are compare-and-swap loops, and most ids fall in the first pass's few bins.
        const unsigned bin = (k >> shift) & 255u;
        const auto same = cg::labeled_partition(cg::coalesced_threads(), bin);
        const double sum = cg::reduce(same, weight(w), cg::plus<double>());
        if (same.thread_rank() == 0) atomicAdd(&sh.hist[bin], sum);
      });
      __syncthreads();
      if (threadIdx.x == 0) {
        // Rounding can leave the sum of the bins just short of the target: take the last bin then.
        double acc = 0.0, before_last = 0.0;
        int chosen = -1, last = -1;
        for (int b = 255; b >= 0; --b) {
          if (sh.hist[b] == 0.0) continue;
          last = b, before_last = acc;
          if (acc + sh.hist[b] >= target) {
            chosen = b;
            break;
          }
          acc += sh.hist[b];
        }
        if (chosen < 0) chosen = last, acc = before_last;
        target -= acc;
        sh.prefix = prefix | (static_cast<unsigned>(chosen) << shift);
        sh.rest = target;
      }
      __syncthreads();
      prefix = sh.prefix;
      target = sh.rest;
    }
    return prefix;
  }

  // The id of the need-th (from 1, clamped to what there is) lowest id that `in` accepts.
  template <class In>
  __device__ int nth_id(In in, int need) {
    int count = 0;
    each([&](int i, float x, double) { count += in(i, x) ? 1 : 0; });
    int before = 0, total = 0;
    ScanInt(sh.cub.scan_int).ExclusiveSum(count, before, total);
    need = min(max(need, 1), total);
    if (before < need && need <= before + count) {
      int seen = before;
      for (int i = lo; i < hi; ++i)
        if (in(i, l[i]) && ++seen == need) {
          sh.cut = i;
          break;
        }
    }
    __syncthreads();
    return sh.cut;
  }

  // The probabilities of the ids `in` accepts.
  template <class In>
  __device__ double sum(In in) {
    double s = 0.0;
    each([&](int i, float x, double w) { s += in(i, x) ? w : 0.0; });
    s = ReduceDouble(sh.cub.reduce_double).Sum(s);
    if (threadIdx.x == 0) sh.total = s;
    __syncthreads();
    return sh.total;
  }
};

__global__ void __launch_bounds__(kThreads)
    sample_kernel(float* logits, long long ld, int vocab, const SampleRow* args, const int* penalized, double* scratch,
                  SampleOutcome* out) {
  __shared__ Shared sh;
  const SampleRow a = args[blockIdx.x];
  float* l = logits + a.row * ld;
  const int seg = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, static_cast<int>(threadIdx.x) * seg), hi = min(vocab, lo + seg);
  Row row{l, lo, hi, sh};

  if (a.repeat_penalty != 1.0f)
    for (int j = threadIdx.x; j < a.penalized_count; j += kThreads) {
      float& x = l[penalized[a.penalized_begin + j]];
      x = x > 0.0f ? x / a.repeat_penalty : x * a.repeat_penalty;
    }
  __syncthreads();

  int bad = INT_MAX, finite = 0;
  Best best{-INFINITY, INT_MAX};
  row.each([&](int i, float x, double) {
    if (isnan(x) || x == INFINITY) {
      bad = min(bad, i);
    } else if (x != -INFINITY) {
      ++finite;
      if (x > best.value) best = {x, i};
    }
  });
  bad = ReduceInt(sh.cub.reduce_int).Reduce(bad, MinOf{});
  if (threadIdx.x == 0) sh.bad = bad;
  __syncthreads();
  finite = ReduceInt(sh.cub.reduce_int).Sum(finite);
  if (threadIdx.x == 0) sh.finite = finite;
  __syncthreads();
  best = ReduceBest(sh.cub.reduce_best).Reduce(best, BetterOf{});
  if (threadIdx.x == 0) sh.best = best;
  __syncthreads();
  bad = sh.bad, finite = sh.finite, best = sh.best;
  if (bad != INT_MAX || finite == 0 || a.temperature == 0.0f) {
    if (threadIdx.x == 0) {
      if (bad != INT_MAX)
        out[blockIdx.x] = {bad, SampleStatus::bad_logit, l[bad]};
      else if (finite == 0)
        out[blockIdx.x] = {-1, SampleStatus::all_neg_inf, 0.0f};
      else
        out[blockIdx.x] = {best.id, SampleStatus::ok, 0.0f};
    }
    return;
  }

  const double max = best.value, temperature = a.temperature;
  const auto probability = [=](float x) { return exp((static_cast<double>(x) - max) / temperature); };
  double* p = scratch + static_cast<long long>(blockIdx.x) * vocab;
  row.each([&](int i, float x, double) { p[i] = x == -INFINITY ? 0.0 : probability(x); });
  __syncthreads();
  row.p = p;
  const auto mass = [](double w) { return w; };
  const auto count = [](double) { return 1.0; };

  const bool top_k = a.top_k > 0 && a.top_k < finite;
  unsigned k_key = 0;
  int k_cut = 0;
  if (top_k) {
    const auto is_finite = [](int, float x) { return x != -INFINITY; };
    k_key = row.select(is_finite, count, a.top_k);
    k_cut = row.nth_id([=](int, float x) { return x != -INFINITY && order_key(x) == k_key; },
                       static_cast<int>(sh.rest + 0.5));
  }
  const auto kept_k = [=](int i, float x) {
    if (x == -INFINITY) return false;
    const unsigned k = order_key(x);
    return !top_k || k > k_key || (k == k_key && i <= k_cut);
  };

  const bool top_p = a.top_p < 1.0f;
  unsigned p_key = 0;
  int p_cut = 0;
  if (top_p) {
    p_key = row.select(kept_k, mass, static_cast<double>(a.top_p) * row.sum(kept_k));
    // The ids at the threshold all weigh `each`: as many as the rest of the target needs.
    const double each = probability(key_float(p_key)), rest = sh.rest;
    const double need = rest <= 0.0 ? 1.0 : each > 0.0 ? fmin(ceil(rest / each), 1e9) : 1e9;
    p_cut = row.nth_id([=](int i, float x) { return kept_k(i, x) && order_key(x) == p_key; }, static_cast<int>(need));
  }
  const double min_p = a.min_p;  // of the top probability, which is exp(0) = 1
  const auto kept = [=](int i, float x, double w) {
    if (!kept_k(i, x)) return false;
    const unsigned k = order_key(x);
    if (top_p && !(k > p_key || (k == p_key && i <= p_cut))) return false;
    return min_p <= 0.0 || w >= min_p;
  };

  // The inverse-CDF draw over the kept ids in ascending order: the first id whose partial sum
  // passes u; past the last partial sum through rounding, the last kept id.
  double mine = 0.0;
  row.each([&](int i, float x, double w) { mine += kept(i, x, w) ? w : 0.0; });
  double before = 0.0, total = 0.0;
  ScanDouble(sh.cub.scan_double).ExclusiveSum(mine, before, total);
  if (threadIdx.x == 0) sh.found = INT_MAX, sh.last = -1;
  __syncthreads();
  const double u = a.uniform * total;
  double cum = before;
  int found = INT_MAX, last = -1;
  for (int i = lo; i < hi; ++i) {
    if (!kept(i, l[i], p[i])) continue;
    last = i;
    cum += p[i];
    if (u < cum) {
      found = i;
      break;
    }
  }
  if (found != INT_MAX) atomicMin(&sh.found, found);
  if (last >= 0) atomicMax(&sh.last, last);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = {sh.found != INT_MAX ? sh.found : sh.last, SampleStatus::ok, 0.0f};
}

}  // namespace

void sample_rows(float* logits, long long ld, int vocab, int rows, const SampleRow* args, const int* penalized,
                 double* scratch, SampleOutcome* out, cudaStream_t stream) {
  if (rows <= 0) return;
  sample_kernel<<<rows, kThreads, 0, stream>>>(logits, ld, vocab, args, penalized, scratch, out);
  MHLA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace mhla::cuda
