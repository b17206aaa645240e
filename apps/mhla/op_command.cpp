// `mhla op`: runs one MHLA operator on q/k/v tensors from a safetensors file.
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "mhla/causal.hpp"
#include "mhla/device.hpp"
#include "mhla/error.hpp"
#include "mhla/safetensors.hpp"

#ifdef MHLA_HAVE_CUDA
#include "mhla/cuda.hpp"
#endif

namespace mhla::cli {

namespace {

struct OpArgs {
  std::string input, output, mode, reference;
  long long chunk = 64;
  int block_size = 64;
  std::string grid;
  int window = 0;
  std::string feature_map = "relu";
  bool rotary = false;
  double rotary_base = 10000.0;
  std::optional<float> scale;
  bool normalize = false;
  float eps = 1e-6f;
  std::string policy = "strict";
  std::string device = "cpu";
  // Which flags were given, for the checks that depend on the mode.
  bool chunk_given = false, block_size_given = false, grid_given = false, policy_given = false,
       device_given = false;
};

bool is_causal(const std::string& mode) { return mode != "noncausal"; }

// q, k, v as fp32 with their shapes: q [T,H,dk], k [T,Hkv,dk], v [T,Hkv,dv].
struct Inputs {
  HeadLayout layout;
  long long tokens = 0;
  std::vector<float> q, k, v, mixing;
  int mixing_blocks = 0;
};

std::string shape_text(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

const TensorView& tensor_of_rank(const SafetensorsFile& f, const std::string& name, size_t rank, const char* form) {
  const TensorView& t = f.tensor(name);
  if (t.shape.size() != rank)
    throw Error(fmt::format("'{}' in '{}' must have shape {}, got {}", name, f.path(), form, shape_text(t.shape)));
  return t;
}

int dimension(int64_t d, const char* what) {
  if (d <= 0 || d > std::numeric_limits<int>::max())
    throw Error(fmt::format("{} must be a positive int, got {}", what, d));
  return static_cast<int>(d);
}

// The mixing matrix is [L, L]; the research checkpoints' trailing unit axes ([L, L, 1, 1, 1, 1]) are accepted.
int mixing_side(const SafetensorsFile& f) {
  const TensorView& m = f.tensor("mixing");
  const auto& s = m.shape;
  bool ok = s.size() >= 2 && s[0] == s[1] && s[0] > 0;
  for (size_t i = 2; ok && i < s.size(); ++i) ok = s[i] == 1;
  if (!ok) throw Error(fmt::format("'mixing' in '{}' must be a square [L, L] matrix, got {}", f.path(), shape_text(s)));
  return dimension(s[0], "the mixing size L");
}

Inputs load_inputs(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  const auto& q = tensor_of_rank(f, "q", 3, "[T, H, dk]").shape;
  const auto& k = tensor_of_rank(f, "k", 3, "[T, Hkv, dk]").shape;
  const auto& v = tensor_of_rank(f, "v", 3, "[T, Hkv, dv]").shape;
  if (q[0] == 0) throw Error(fmt::format("the input '{}' has no tokens (T = 0 in q {})", path, shape_text(q)));
  if (k[0] != q[0] || v[0] != q[0])
    throw Error(fmt::format("q, k and v must have the same token count T: q {}, k {}, v {}", shape_text(q),
                            shape_text(k), shape_text(v)));
  if (k[2] != q[2])
    throw Error(fmt::format("q and k must have the same width dk: q {}, k {}", shape_text(q), shape_text(k)));
  if (v[1] != k[1])
    throw Error(fmt::format("k and v must have the same number of heads Hkv: k {}, v {}", shape_text(k),
                            shape_text(v)));
  Inputs in;
  in.tokens = q[0];
  in.layout = {dimension(q[1], "H (q's heads)"), dimension(k[1], "Hkv (k's heads)"), dimension(q[2], "dk"),
               dimension(v[2], "dv")};
  in.layout.validate();
  in.mixing_blocks = mixing_side(f);
  in.q = f.read_f32("q");
  in.k = f.read_f32("k");
  in.v = f.read_f32("v");
  in.mixing = f.read_f32("mixing");
  return in;
}

std::optional<WindowGrid> parse_grid(const OpArgs& a) {
  if (!a.grid_given) return std::nullopt;
  const char* const end = a.grid.data() + a.grid.size();
  int h = 0, w = 0;
  const auto first = std::from_chars(a.grid.data(), end, h);
  const bool comma = first.ec == std::errc() && first.ptr != end && *first.ptr == ',';
  const auto second = comma ? std::from_chars(first.ptr + 1, end, w) : first;
  if (!comma || second.ec != std::errc() || second.ptr != end || h <= 0 || w <= 0)
    throw Error(fmt::format("--grid must be H,W with positive integers (e.g. 32,32), got '{}'", a.grid));
  return WindowGrid{h, w, a.window};
}

void check_flags(const OpArgs& a) {
  if (a.chunk_given && a.mode != "causal-chunked") throw Error("--chunk applies only to --mode causal-chunked");
  if (a.chunk <= 0) throw Error(fmt::format("--chunk must be a positive number of tokens, got {}", a.chunk));
  if (a.block_size <= 0)
    throw Error(fmt::format("--block-size must be a positive number of tokens, got {}", a.block_size));
  if (a.grid_given && is_causal(a.mode)) throw Error("--grid and --window apply only to --mode noncausal");
  if (a.grid_given && a.block_size_given)
    throw Error("--grid sets the blocks to its windows: give either --grid/--window or --block-size");
  if (a.grid_given && a.window <= 0) throw Error(fmt::format("--window must be a positive side, got {}", a.window));
  if (a.policy_given && !is_causal(a.mode)) throw Error("--policy applies only to the causal modes");
  if (a.device_given && is_causal(a.mode))
    throw Error("--device applies only to --mode noncausal; the causal modes run on the CPU");
  if (!(a.eps >= 0 && std::isfinite(a.eps))) throw Error(fmt::format("--eps must be finite and >= 0, got {}", a.eps));
}

void check_output_dir(const std::string& output) {
  const auto dir = std::filesystem::path(output).parent_path();
  std::error_code ec;
  if (!dir.empty() && !std::filesystem::is_directory(dir, ec))
    throw Error(fmt::format("the output directory '{}' does not exist; create it first", dir.string()));
}

// Opens the reference early, so a bad reference file fails before any work is done.
std::optional<SafetensorsFile> open_reference(const OpArgs& a, const Inputs& in) {
  if (a.reference.empty()) return std::nullopt;
  SafetensorsFile ref = SafetensorsFile::open(a.reference);
  const std::vector<int64_t> want{in.tokens, in.layout.heads, in.layout.dv};
  if (ref.tensor("o").shape != want)
    throw Error(fmt::format("reference 'o' in '{}' has shape {}, the output has {}", a.reference,
                            shape_text(ref.tensor("o").shape), shape_text(want)));
  return ref;
}

double relative_error(const std::vector<float>& out, const std::vector<double>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    diff += (out[i] - ref[i]) * (out[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  if (norm == 0) return diff == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff / norm);
}

// Runs a causal form; returns the final state's size in bytes.
size_t run_causal(const OpArgs& a, const Inputs& in, float* o) {
  CausalOptions opt;
  opt.layout = in.layout;
  opt.block_size = a.block_size;
  opt.feature_map = parse_feature_map(a.feature_map);
  opt.rotary = a.rotary;
  opt.rotary_base = a.rotary_base;
  opt.scale = a.scale;
  opt.normalize = a.normalize;
  opt.eps = a.eps;
  opt.policy = parse_policy(a.policy);
  const CausalOperator op(opt, MixingWeights::from_learned(in.mixing, in.mixing_blocks));
  CausalState state = op.new_state();
  const float *q = in.q.data(), *k = in.k.data(), *v = in.v.data();
  if (a.mode == "causal-parallel")
    op.parallel(state, q, k, v, in.tokens, o);
  else if (a.mode == "causal-chunked")
    op.prefill(state, q, k, v, in.tokens, o, a.chunk);
  else
    op.decode(state, q, k, v, in.tokens, o);
  return state.byte_size();
}

// Runs the non-causal form on the device the flags name; returns that device.
Device run_noncausal(const OpArgs& a, const Inputs& in, float* o) {
  NonCausalOptions opt;
  opt.layout = in.layout;
  opt.block_size = a.block_size;
  opt.grid = parse_grid(a);
  opt.feature_map = parse_feature_map(a.feature_map);
  opt.rotary = a.rotary;
  opt.rotary_base = a.rotary_base;
  opt.scale = a.scale;
  opt.normalize = true;
  opt.eps = a.eps;
  opt.validate();
  const int blocks = opt.block_count(in.tokens);
  if (in.mixing_blocks != blocks)
    throw Error(fmt::format("non-causal mixing must be {}x{} ({} blocks of {} tokens), got {}x{}", blocks, blocks,
                            blocks, opt.tokens_per_block(), in.mixing_blocks, in.mixing_blocks));
  const Device device = parse_device(a.device);
  if (device == Device::cpu) {
    noncausal_forward(opt, in.mixing, in.q.data(), in.k.data(), in.v.data(), in.tokens, o);
    return device;
  }
#ifdef MHLA_HAVE_CUDA
  if (!cuda_available()) throw Error("--device cuda was asked for, but no CUDA GPU is available: use --device cpu");
  // fp32 on the GPU too: this command is for reference runs.
  cuda::GpuNonCausalOperator op(opt, cuda::Precision::f32);
  op.forward_host(in.mixing, in.q.data(), in.k.data(), in.v.data(), in.tokens, o);
  return device;
#else
  throw Error("this build of mhla has no CUDA backend (built without nvcc): use --device cpu");
#endif
}

void run_op(const OpArgs& a) {
  check_flags(a);
  check_output_dir(a.output);
  const Inputs in = load_inputs(a.input);
  const std::optional<SafetensorsFile> ref = open_reference(a, in);
  const auto& L = in.layout;
  std::vector<float> o(static_cast<size_t>(in.tokens) * L.heads * L.dv);

  const auto start = std::chrono::steady_clock::now();
  std::optional<size_t> state_bytes;
  Device device = Device::cpu;
  if (is_causal(a.mode))
    state_bytes = run_causal(a, in, o.data());
  else
    device = run_noncausal(a, in, o.data());
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  if (ref) fmt::print("relative error vs reference: {:.6e}\n", relative_error(o, ref->read_f64("o")));
  write_safetensors(a.output, {{"o", {{in.tokens, L.heads, L.dv}, std::move(o)}}});
  fmt::print(stderr, "mhla op: mode={} device={} T={} H={} Hkv={} dk={} dv={} time={:.3f} ms{}\n", a.mode,
             to_string(device), in.tokens, L.heads, L.kv_heads, L.dk, L.dv, ms,
             state_bytes ? fmt::format(" state={} bytes", *state_bytes) : "");
}

}  // namespace

void add_op_command(CLI::App& app) {
  auto args = std::make_shared<OpArgs>();
  CLI::App* op = app.add_subcommand(
      "op", "Run one MHLA operator on tensors q [T,H,dk], k [T,Hkv,dk], v [T,Hkv,dv] and mixing from a safetensors "
            "file (F32, F16, BF16 or F64); writes o [T,H,dv] as F32");
  op->add_option("--input", args->input, "Input safetensors file with q, k, v and mixing")->required();
  op->add_option("--output", args->output, "Output safetensors file (written atomically) with o")->required();
  op->add_option("--mode", args->mode,
                 "causal-parallel | causal-chunked | causal-recurrent: causal MHLA, mixing is the learned [L,L] "
                 "matrix before the clamp (trailing unit axes allowed); noncausal: mixing is the [M,M] weights "
                 "used as given")
      ->required()
      ->check(CLI::IsMember({"causal-parallel", "causal-chunked", "causal-recurrent", "noncausal"}));
  auto* chunk = op->add_option("--chunk", args->chunk, "Chunk length in tokens (causal-chunked only)")
                    ->capture_default_str();
  auto* block = op->add_option("--block-size", args->block_size, "Block size C in tokens (1-D blocks)")
                    ->capture_default_str();
  auto* grid = op->add_option("--grid", args->grid,
                              "noncausal only: tokens form an H,W grid in row-major order, blocks are its windows");
  grid->type_name("H,W");
  auto* window = op->add_option("--window", args->window, "Window side s of --grid (blocks of s x s tokens)");
  grid->needs(window);
  window->needs(grid);
  op->add_option("--feature-map", args->feature_map, "Feature map phi")
      ->check(CLI::IsMember({"relu", "elu1", "identity", "relu_eps"}))
      ->capture_default_str();
  auto* rotary = op->add_flag("--rotary", args->rotary, "Rotary position embedding on the feature-mapped q and k");
  op->add_option("--rotary-base", args->rotary_base, "Rotary base")->capture_default_str()->needs(rotary);
  op->add_option("--scale", args->scale,
                 "Query scale; default dk^-1/2 for the causal modes and 1 for noncausal (the research vision code "
                 "uses no scale)");
  op->add_flag("--normalize", args->normalize,
               "Causal modes: divide by q.(mixed z) + eps (default unnormalized); noncausal is always normalized");
  op->add_option("--eps", args->eps, "Normalizer epsilon, also relu_eps's epsilon")->capture_default_str();
  auto* policy = op->add_option("--policy", args->policy, "Causal modes: what happens past the trained window L*C")
                     ->check(CLI::IsMember({"strict", "slide", "slide_mean"}))
                     ->capture_default_str();
  auto* device = op->add_option("--device", args->device,
                                "noncausal only: cpu, cuda (the GPU, in fp32) or auto (cuda when a GPU is present)")
                     ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
                     ->capture_default_str();
  op->add_option("--reference", args->reference,
                 "Safetensors file with a reference o: prints ||o - ref||_2 / ||ref||_2 to stdout");
  op->callback([args, chunk, block, grid, policy, device] {
    args->chunk_given = chunk->count() > 0;
    args->block_size_given = block->count() > 0;
    args->grid_given = grid->count() > 0;
    args->policy_given = policy->count() > 0;
    args->device_given = device->count() > 0;
    run_op(*args);
  });
}

}  // namespace mhla::cli
