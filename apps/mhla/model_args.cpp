#include "model_args.hpp"

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <random>

#include "mhla/error.hpp"

namespace mhla::cli {

std::string default_model_dir() {
  namespace fs = std::filesystem;
  const fs::path bundled = fs::path("models") / "mhla-demo";
  std::vector<fs::path> candidates;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path dir = exe.parent_path();
    for (int up = 0; up < 5 && !dir.empty(); ++up, dir = dir.parent_path()) {
      candidates.push_back(dir / bundled);
      if (dir == dir.root_path()) break;
    }
    candidates.push_back(exe.parent_path().parent_path() / "share" / "mhla" / bundled);
  }
  candidates.push_back(fs::current_path(ec) / bundled);
  for (const auto& c : candidates)
    if (fs::exists(c / "config.json", ec)) return c.lexically_normal().string();
  throw Error(
      "no --model given and the bundled model models/mhla-demo is neither beside the mhla executable nor "
      "under the current directory: give --model DIR");
}

void add_model_option(CLI::App* cmd, std::string& dir) {
  cmd->add_option("--model", dir,
                  "Model directory (config.json, model.safetensors, tokenizer.model); default: the bundled "
                  "models/mhla-demo");
}

LoadedModel load_model(const std::string& requested) {
  const std::string dir = requested.empty() ? default_model_dir() : requested;
  if (requested.empty()) std::fprintf(stderr, "mhla: model %s (the bundled demonstration model)\n", dir.c_str());
  LoadedModel m{Model::load(dir), std::nullopt};
  for (const auto& w : m.model.warnings()) std::fprintf(stderr, "mhla: warning: %s\n", w.c_str());
  const auto tok = std::filesystem::path(dir) / "tokenizer.model";
  if (std::filesystem::exists(tok)) m.tokenizer = Tokenizer::load(tok.string());
  return m;
}

std::vector<int> parse_ids(const std::string& text, const char* flag) {
  std::vector<int> ids;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, end - at);
    int value = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size())
      throw Error(fmt::format("{}: '{}' is not a token id (expected comma-separated integers like 1,2,3)", flag, item));
    ids.push_back(value);
    at = end + 1;
  }
  return ids;
}

SamplingParams SamplingFlags::params() const {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.repeat_penalty = repeat_penalty;
  p.seed = seed ? *seed : std::random_device{}();
  p.validate();
  return p;
}

void add_sampling_flags(CLI::App* cmd, SamplingFlags& f) {
  cmd->add_option("--temperature", f.temperature, "Sampling temperature; 0 is greedy")->capture_default_str();
  cmd->add_option("--top-k", f.top_k, "Keep the K most likely tokens; 0 keeps all")->capture_default_str();
  cmd->add_option("--top-p", f.top_p, "Keep the smallest set of tokens with this much probability")
      ->capture_default_str();
  cmd->add_option("--min-p", f.min_p, "Drop tokens less likely than this times the most likely")->capture_default_str();
  cmd->add_option("--repeat-penalty", f.repeat_penalty, "Penalty for tokens among the last 64; 1 is off")
      ->capture_default_str();
  cmd->add_option("--seed", f.seed, "Random seed (default: a fresh one, printed on stderr)");
}

void add_device_flags(CLI::App* cmd, DeviceFlags& f) {
  cmd->add_option("--device", f.device, "Where the model runs: cpu, cuda, or auto (cuda when a GPU is present)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cmd->add_option("--precision", f.precision,
                  "Weights and activations on the GPU: bf16, f16 (more precise, values up to 65504) or f32 (the CPU "
                  "runs f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
}

std::unique_ptr<DeviceModel> open_device(const Model& model, const DeviceFlags& f, ContextPolicy policy,
                                         int sequences) {
  const Device device = parse_device(f.device);
  if (device == Device::cpu) return nullptr;
  DeviceModelOptions o;
  o.max_sequences = sequences;
  o.policy = policy;
  o.precision = parse_device_precision(f.precision);
  auto dm = make_device_model(model, device, o);
  std::fprintf(stderr, "mhla: running on %s\n", dm->description().c_str());
  return dm;
}

std::string timing_summary(long long prefill_tokens, double prefill_s, long long decode_tokens, double decode_s) {
  auto rate = [](long long n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
  return fmt::format("prefill {} tokens in {:.1f} ms ({:.0f} tok/s), decode {} tokens in {:.1f} ms ({:.1f} tok/s)",
                     prefill_tokens, prefill_s * 1e3, rate(prefill_tokens, prefill_s), decode_tokens, decode_s * 1e3,
                     rate(decode_tokens, decode_s));
}

}  // namespace mhla::cli
