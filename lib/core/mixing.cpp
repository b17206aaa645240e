#include "mhla/mixing.hpp"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include "mhla/error.hpp"

namespace mhla {

namespace {
constexpr float kClampMin = 1e-5f;
constexpr float kClampMax = 1.0f;

void check_blocks(int blocks) {
  if (blocks <= 0) throw Error(fmt::format("mixing matrix needs at least one block, got {}", blocks));
}
}  // namespace

MixingWeights MixingWeights::from_learned(std::span<const float> m, int blocks) {
  check_blocks(blocks);
  const size_t n = static_cast<size_t>(blocks) * blocks;
  if (m.size() != n)
    throw Error(fmt::format("mixing matrix must be {}x{} ({} values), got {} values", blocks, blocks, n, m.size()));
  std::vector<float> w(n, 0.0f);
  for (int i = 0; i < blocks; ++i)
    for (int b = 0; b < blocks; ++b) {
      const float x = m[static_cast<size_t>(i) * blocks + b];
      if (!std::isfinite(x))
        throw Error(fmt::format("mixing matrix entry [{}][{}] is {}: the weights must be finite numbers", i, b, x));
      if (b <= i) w[static_cast<size_t>(i) * blocks + b] = std::clamp(x, kClampMin, kClampMax);
    }
  return MixingWeights(blocks, std::move(w));
}

MixingWeights MixingWeights::locality_init(int blocks) {
  check_blocks(blocks);
  std::vector<float> w(static_cast<size_t>(blocks) * blocks, 0.0f);
  for (int i = 0; i < blocks; ++i) {
    double sum = 0;
    for (int j = 0; j <= i; ++j) sum += 1.0 - static_cast<double>(i - j) / (i + 1);
    for (int j = 0; j <= i; ++j)
      w[static_cast<size_t>(i) * blocks + j] = static_cast<float>((1.0 - static_cast<double>(i - j) / (i + 1)) / sum);
  }
  return MixingWeights(blocks, std::move(w));
}

MixingWeights MixingWeights::harmonic_init(int blocks) {
  check_blocks(blocks);
  std::vector<float> w(static_cast<size_t>(blocks) * blocks, 0.0f);
  for (int i = 0; i < blocks; ++i)
    for (int j = 0; j <= i; ++j) w[static_cast<size_t>(i) * blocks + j] = 1.0f / static_cast<float>(i + 1);
  return MixingWeights(blocks, std::move(w));
}

MixingWeights MixingWeights::uniform(int blocks) {
  check_blocks(blocks);
  std::vector<float> w(static_cast<size_t>(blocks) * blocks, 0.0f);
  for (int i = 0; i < blocks; ++i)
    for (int j = 0; j <= i; ++j) w[static_cast<size_t>(i) * blocks + j] = 1.0f;
  return MixingWeights(blocks, std::move(w));
}

int recent_capacity(int blocks) { return std::max(blocks - 2, 0); }

namespace {
void check_policy(const MixingWeights& w, ContextPolicy policy, long long i) {
  const int L = w.blocks();
  if (i < L) return;
  if (policy == ContextPolicy::strict)
    throw RefusedError(fmt::format(
        "block {} is past the trained window of {} blocks; under the strict policy nothing past the "
        "window is computed (choose the slide or slide_mean policy to continue)",
        i, L));
  if (L < 2)
    throw Error(fmt::format("the {} policy needs a mixing matrix of at least 2 blocks, got {}", to_string(policy), L));
}
}  // namespace

BlockRowWeights block_row_weights(const MixingWeights& w, ContextPolicy policy, long long i, long long tail_blocks) {
  check_policy(w, policy, i);
  const int L = w.blocks();
  const int row = static_cast<int>(std::min<long long>(i, L - 1));
  BlockRowWeights out;
  out.diagonal = w.at(row, row);
  const int recent = static_cast<int>(std::min<long long>(i - tail_blocks, recent_capacity(L)));
  out.by_distance.resize(static_cast<size_t>(std::max(recent, 0)));
  for (int r = 1; r <= recent; ++r) out.by_distance[r - 1] = w.at(row, row - r);
  if (tail_blocks > 0) {
    // Inside the window only block 0 is ever in the tail (at i = L-1), with weight W[L-1][0].
    out.tail = w.at(row, 0);
    if (policy == ContextPolicy::slide_mean) out.tail /= static_cast<float>(tail_blocks);
  }
  return out;
}

double effective_weight(const MixingWeights& w, ContextPolicy policy, long long i, long long b) {
  check_policy(w, policy, i);
  const int L = w.blocks();
  if (i < L) return w.at(static_cast<int>(i), static_cast<int>(b));
  const long long r = i - b;
  if (r <= L - 2) return w.at(L - 1, static_cast<int>(L - 1 - r));
  double tail = w.at(L - 1, 0);
  if (policy == ContextPolicy::slide_mean) tail /= static_cast<double>(i - L + 2);
  return tail;
}

std::vector<float> grid_distance_mixing(const WindowGrid& grid) {
  if (grid.window <= 0 || grid.height % grid.window != 0 || grid.width % grid.window != 0)
    throw Error(fmt::format("grid {}x{} must split into whole {}x{} windows", grid.height, grid.width, grid.window,
                            grid.window));
  const int rows = grid.height / grid.window, cols = grid.width / grid.window, m = rows * cols;
  std::vector<double> d(static_cast<size_t>(m) * m);
  double dmax = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) {
      const double dy = i / cols - j / cols, dx = i % cols - j % cols;
      d[static_cast<size_t>(i) * m + j] = std::sqrt(dy * dy + dx * dx);
      dmax = std::max(dmax, d[static_cast<size_t>(i) * m + j]);
    }
  std::vector<float> w(static_cast<size_t>(m) * m, 1.0f);
  if (dmax == 0) return w;  // one block
  for (int j = 0; j < m; ++j) {
    double col = 0;
    for (int i = 0; i < m; ++i) col += 1.0 - d[static_cast<size_t>(i) * m + j] / dmax;
    for (int i = 0; i < m; ++i)
      w[static_cast<size_t>(i) * m + j] = static_cast<float>((1.0 - d[static_cast<size_t>(i) * m + j] / dmax) / col);
  }
  return w;
}

}  // namespace mhla
