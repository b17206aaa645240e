// Payloads of the MODL, OPTS, SEQN and SAMP sections.
#include <fmt/format.h>

#include "mhla/error.hpp"
#include "state/format.hpp"

namespace mhla::state_format {

using state_io::ByteReader;
using state_io::ByteWriter;

void damaged(std::string_view where, std::string_view what) {
  throw Error(
      fmt::format("{}: {}; the file is damaged or was not written by mhla: use an intact copy or save "
                  "the session again",
                  where, what));
}

namespace {

// Stable codes, independent of the enums' order in the headers.
std::uint8_t feature_code(FeatureMap f) {
  switch (f) {
    case FeatureMap::relu: return 0;
    case FeatureMap::elu1: return 1;
    case FeatureMap::identity: return 2;
    case FeatureMap::relu_eps: return 3;
  }
  throw Error("internal: unknown feature map");
}

FeatureMap feature_from(std::uint8_t code, const ByteReader& in) {
  static constexpr FeatureMap maps[] = {FeatureMap::relu, FeatureMap::elu1, FeatureMap::identity, FeatureMap::relu_eps};
  if (code >= std::size(maps)) in.fail(fmt::format("feature map code {} is unknown (0 to 3)", code));
  return maps[code];
}

std::uint8_t policy_code(ContextPolicy p) {
  switch (p) {
    case ContextPolicy::strict: return 0;
    case ContextPolicy::slide: return 1;
    case ContextPolicy::slide_mean: return 2;
  }
  throw Error("internal: unknown context policy");
}

ContextPolicy policy_from(std::uint8_t code, const ByteReader& in) {
  static constexpr ContextPolicy policies[] = {ContextPolicy::strict, ContextPolicy::slide, ContextPolicy::slide_mean};
  if (code >= std::size(policies)) in.fail(fmt::format("context policy code {} is unknown (0 to 2)", code));
  return policies[code];
}

bool flag_from(std::uint8_t v, std::string_view name, const ByteReader& in) {
  if (v > 1) in.fail(fmt::format("{} is {}, not 0 or 1", name, v));
  return v == 1;
}

int positive(std::int32_t v, std::string_view name, const ByteReader& in) {
  if (v <= 0) in.fail(fmt::format("{} is {}, not positive", name, v));
  return v;
}

}  // namespace

std::string encode_model(const ModelFingerprint& f, std::string_view directory) {
  ByteWriter w;
  w.text(directory);
  w.u64(f.weights_hash);
  for (const int v : {f.hidden_size, f.num_layers, f.num_heads, f.num_kv_heads, f.head_k_dim, f.head_v_dim,
                      f.intermediate_size, f.vocab_size, f.mixing_blocks})
    w.i32(v);
  w.u8(feature_code(f.feature_map));
  w.u8(f.tie_word_embeddings ? 1 : 0);
  w.u8(f.use_output_gate ? 1 : 0);
  w.f32(f.norm_eps);
  w.f64(f.rope_theta);
  w.u32(static_cast<std::uint32_t>(f.tensors.size()));
  for (const auto& t : f.tensors) {
    w.text(t.name);
    w.u32(static_cast<std::uint32_t>(t.shape.size()));
    for (const long long d : t.shape) w.i64(d);
  }
  return std::move(w.bytes());
}

ModelSection decode_model(ByteReader& in) {
  ModelSection s;
  auto& f = s.fingerprint;
  s.directory = in.text();
  f.weights_hash = in.u64();
  f.hidden_size = positive(in.i32(), "hidden_size", in);
  f.num_layers = positive(in.i32(), "num_layers", in);
  f.num_heads = positive(in.i32(), "num_heads", in);
  f.num_kv_heads = positive(in.i32(), "num_kv_heads", in);
  f.head_k_dim = positive(in.i32(), "head_k_dim", in);
  f.head_v_dim = positive(in.i32(), "head_v_dim", in);
  f.intermediate_size = in.i32();
  if (f.intermediate_size < 0) in.fail(fmt::format("intermediate_size is {}", f.intermediate_size));
  f.vocab_size = positive(in.i32(), "vocab_size", in);
  f.mixing_blocks = positive(in.i32(), "mixing_blocks", in);
  if (f.num_heads % f.num_kv_heads != 0)
    in.fail(fmt::format("{} heads do not split into {} kv heads", f.num_heads, f.num_kv_heads));
  f.feature_map = feature_from(in.u8(), in);
  f.tie_word_embeddings = flag_from(in.u8(), "tie_word_embeddings", in);
  f.use_output_gate = flag_from(in.u8(), "use_output_gate", in);
  f.norm_eps = in.f32();
  f.rope_theta = in.f64();
  const std::uint32_t count = in.u32();
  in.need(count, 8, "the tensor list");  // a name length and a rank at least
  f.tensors.resize(count);
  for (auto& t : f.tensors) {
    t.name = in.text();
    const std::uint32_t rank = in.u32();
    in.need(rank, 8, "a tensor shape");
    t.shape.resize(rank);
    for (auto& d : t.shape) d = in.i64();
  }
  in.expect_end();
  return s;
}

std::string encode_options(const OptionsSection& o) {
  ByteWriter w;
  w.i32(o.block_size);
  w.u8(policy_code(o.policy));
  w.u8(0);  // state precision: the state is computed in fp32
  w.u8(o.summaries == SummaryStorage::bf16 ? 1 : 0);
  w.u8(o.normalized ? 1 : 0);
  w.i64(o.prefill_chunk);
  return std::move(w.bytes());
}

OptionsSection decode_options(ByteReader& in) {
  OptionsSection o;
  o.block_size = positive(in.i32(), "block size", in);
  o.policy = policy_from(in.u8(), in);
  if (const std::uint8_t precision = in.u8(); precision != 0)
    in.fail(fmt::format("state precision code {} is unknown (0 = fp32)", precision));
  const std::uint8_t storage = in.u8();
  if (storage > 1) in.fail(fmt::format("summary storage code {} is unknown (0 = fp32, 1 = bf16)", storage));
  o.summaries = storage == 1 ? SummaryStorage::bf16 : SummaryStorage::f32;
  o.normalized = flag_from(in.u8(), "normalized", in);
  o.prefill_chunk = in.i64();
  if (o.prefill_chunk <= 0) in.fail(fmt::format("prefill chunk is {}, not positive", o.prefill_chunk));
  in.expect_end();
  return o;
}

std::string encode_sequence(long long position, const std::vector<int>& history, const std::vector<float>& logits) {
  ByteWriter w;
  w.i64(position);
  w.u64(history.size());
  w.i32s(history);
  w.u64(logits.size());
  w.f32s(logits);
  return std::move(w.bytes());
}

SequenceSection decode_sequence(ByteReader& in, int vocab_size) {
  SequenceSection s;
  s.position = in.i64();
  if (s.position < 0) in.fail(fmt::format("position is {}", s.position));
  const std::uint64_t n = in.u64();
  if (n != static_cast<std::uint64_t>(s.position))
    in.fail(fmt::format("the history holds {} tokens but the position is {}", n, s.position));
  in.need(n, 4, "the token history");
  s.history.resize(n);
  in.i32s(s.history);
  for (size_t i = 0; i < s.history.size(); ++i)
    if (s.history[i] < 0 || s.history[i] >= vocab_size)
      in.fail(fmt::format("history token {} is {}, outside the vocabulary of {}", i, s.history[i], vocab_size));
  const std::uint64_t m = in.u64();
  const std::uint64_t want = s.position == 0 ? 0 : static_cast<std::uint64_t>(vocab_size);
  if (m != want) in.fail(fmt::format("{} next logits where {} belong", m, want));
  in.need(m, 4, "the next logits");
  s.next_logits.resize(m);
  in.f32s(s.next_logits);
  in.expect_end();
  return s;
}

std::string encode_sampler(const SamplingParams& p, std::string_view rng) {
  ByteWriter w;
  w.f32(p.temperature);
  w.i32(p.top_k);
  w.f32(p.top_p);
  w.f32(p.min_p);
  w.f32(p.repeat_penalty);
  w.i32(p.repeat_window);
  w.u64(p.seed);
  w.text(rng);
  return std::move(w.bytes());
}

SamplerSection decode_sampler(ByteReader& in) {
  SamplerSection s;
  auto& p = s.params;
  p.temperature = in.f32();
  p.top_k = in.i32();
  p.top_p = in.f32();
  p.min_p = in.f32();
  p.repeat_penalty = in.f32();
  p.repeat_window = in.i32();
  p.seed = in.u64();
  s.rng = in.text();
  in.expect_end();
  try {
    Sampler(p).load_rng(s.rng);
  } catch (const Error& e) {
    in.fail(e.what());
  }
  return s;
}

}  // namespace mhla::state_format
