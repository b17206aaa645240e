// Payload of a LAYR section: one layer's recurrent state. Recent summaries are written by
// distance (newest first), so the file does not depend on where the ring happens to start.
#include <fmt/format.h>

#include "mhla/error.hpp"
#include "state/format.hpp"

namespace mhla::state_format {

using state_io::ByteReader;
using state_io::ByteWriter;

namespace {

std::uint64_t floats_per_slot(const CausalState& s) {
  const auto& l = s.layout();
  return static_cast<std::uint64_t>(l.kv_heads) * (s.matrix_elems() + (s.normalized() ? l.dk : 0));
}

// Calls io(pointer, count) for each tensor of a slot, in file order (const or mutable state).
template <class State, class Io>
void for_each_tensor(State& s, int slot, Io io) {
  const auto& l = s.layout();
  for (int h = 0; h < l.kv_heads; ++h) {
    io(s.matrix(slot, h), s.matrix_elems());
    if (s.normalized()) io(s.normalizer(slot, h), static_cast<size_t>(l.dk));
  }
}

}  // namespace

std::uint64_t layer_tensor_bytes(const CausalState& s, SummaryStorage summaries) {
  const std::uint64_t recent_bytes = summaries == SummaryStorage::bf16 ? 2 : 4;
  return floats_per_slot(s) * (3 * 4 + static_cast<std::uint64_t>(s.recent_count()) * recent_bytes);
}

std::string encode_layer(int index, const CausalState& s, SummaryStorage summaries) {
  ByteWriter w;
  w.u32(static_cast<std::uint32_t>(index));
  w.i64(s.tail_blocks());
  w.u32(static_cast<std::uint32_t>(s.recent_count()));
  w.bytes().reserve(w.bytes().size() + layer_tensor_bytes(s, summaries));
  for (const int slot : {CausalState::kPrefix, CausalState::kRunning, CausalState::kTail})
    for_each_tensor(s, slot, [&](const float* p, size_t n) { w.f32s({p, n}); });
  for (int r = 1; r <= s.recent_count(); ++r)
    for_each_tensor(s, s.recent_slot(r), [&](const float* p, size_t n) {
      if (summaries == SummaryStorage::bf16)
        w.bf16s({p, n});
      else
        w.f32s({p, n});
    });
  return std::move(w.bytes());
}

void decode_layer(ByteReader& in, int index, long long position, SummaryStorage summaries, CausalState& state) {
  if (const std::uint32_t stored = in.u32(); stored != static_cast<std::uint32_t>(index))
    in.fail(fmt::format("it says layer {} where layer {} belongs", stored, index));
  const std::int64_t tail = in.i64();
  const std::uint32_t recent = in.u32();
  // Bounds that keep reset_to's arithmetic in range: completed blocks lie before the position.
  if (tail < 0 || tail > position / state.block_size())
    in.fail(fmt::format("{} blocks in the tail sum cannot precede position {}", tail, position));
  if (recent > static_cast<std::uint32_t>(state.recent_capacity()))
    in.fail(fmt::format("{} recent summaries, more than the {} a state keeps", recent, state.recent_capacity()));
  // Checked before reset_to allocates the slots.
  in.need(floats_per_slot(state), 3 * 4 + std::uint64_t{recent} * (summaries == SummaryStorage::bf16 ? 2 : 4),
          "the layer's tensors");
  try {
    state.reset_to(position, tail, static_cast<int>(recent));
  } catch (const Error& e) {
    in.fail(e.what());
  }
  auto read = [&](int slot, bool stored_as_bf16) {
    for_each_tensor(state, slot, [&](float* p, size_t n) {
      if (stored_as_bf16)
        in.bf16s({p, n});
      else
        in.f32s({p, n});
    });
  };
  for (const int slot : {CausalState::kPrefix, CausalState::kRunning, CausalState::kTail}) read(slot, false);
  for (int r = 1; r <= static_cast<int>(recent); ++r) read(state.recent_slot(r), summaries == SummaryStorage::bf16);
  in.expect_end();
}

}  // namespace mhla::state_format
