#pragma once
// What the model commands share: loading a model directory (with its optional tokenizer),
// the sampling flags, and token-id lists on the command line.
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mhla/device.hpp"
#include "mhla/model.hpp"
#include "mhla/sampling.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla::cli {

struct LoadedModel {
  Model model;
  std::optional<Tokenizer> tokenizer;  // when the directory has tokenizer.model
  const Tokenizer* tokenizer_ptr() const { return tokenizer ? &*tokenizer : nullptr; }
};

// Loads DIR, or the bundled model when DIR is empty (saying so on stderr); unknown config keys
// are reported on stderr as warnings.
LoadedModel load_model(const std::string& dir);

// The bundled demonstration model, models/mhla-demo: looked for in the executable's folder and
// its parents (a build tree inside the repository), in <prefix>/share/mhla/models next to an
// installed executable, then under the current directory. Throws mhla::Error when none holds it.
std::string default_model_dir();

// --model DIR, optional: empty means the bundled model.
void add_model_option(CLI::App* cmd, std::string& dir);

// "1,2,3" -> {1, 2, 3}; throws mhla::Error naming the bad item.
std::vector<int> parse_ids(const std::string& text, const char* flag);

struct SamplingFlags {
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  std::optional<unsigned long long> seed;
  SamplingParams params() const;  // a random seed when none was given
};
void add_sampling_flags(CLI::App* cmd, SamplingFlags& flags);

// --device cpu|cuda|auto and --precision bf16|f16|f32 (the precision of a GPU run).
struct DeviceFlags {
  std::string device = "auto";
  std::string precision = "bf16";
};
void add_device_flags(CLI::App* cmd, DeviceFlags& flags);
// The device model the flags ask for (saying which on stderr), or null for the CPU.
std::unique_ptr<DeviceModel> open_device(const Model& model, const DeviceFlags& flags, ContextPolicy policy,
                                         int sequences = 1);

// "prefill 12 tokens in 3.1 ms (3871 tok/s), decode ..." for the timing line on stderr.
std::string timing_summary(long long prefill_tokens, double prefill_s, long long decode_tokens, double decode_s);

}  // namespace mhla::cli
