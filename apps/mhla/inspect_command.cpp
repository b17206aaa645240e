// mhla inspect: what a model directory holds.
#include <cstdio>
#include <fmt/format.h>

#include "commands.hpp"
#include "model_args.hpp"

namespace mhla::cli {

void add_inspect_command(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a model: architecture, size, state, trained window");
  cmd->add_option("--model", *dir, "Model directory")->required();
  cmd->callback([dir] {
    const LoadedModel m = load_model(*dir);
    const auto& c = m.model.config();
    const auto hl = c.layout();
    fmt::print("model:            {}\n", *dir);
    fmt::print("architecture:     MHLA decoder, {} layers, hidden {}, {} heads ({} key/value), dk {}, dv {}, "
               "MLP {}, vocab {}\n",
               c.num_layers, c.hidden_size, hl.heads, hl.kv_heads, hl.dk, hl.dv, c.intermediate_size, c.vocab_size);
    fmt::print("attention:        feature map {}, rotary base {}, output gate {}, {} embeddings\n",
               to_string(c.feature_map), c.rope_theta, c.use_output_gate ? "yes" : "no",
               c.tie_word_embeddings ? "tied" : "separate");
    fmt::print("parameters:       {} ({:.2f} M)\n", m.model.parameter_count(), m.model.parameter_count() / 1e6);
    fmt::print("mixing:           L = {} blocks of C = {} tokens\n", m.model.mixing_blocks(), c.block_size);
    fmt::print("trained window:   {} tokens\n", m.model.trained_window());
    fmt::print("state/sequence:   {} bytes at most ({:.2f} MB), {} bytes when fresh\n", m.model.max_state_bytes(),
               m.model.max_state_bytes() / 1e6, m.model.new_state().byte_size());
    fmt::print("tokenizer:        {}\n",
               m.tokenizer ? fmt::format("tokenizer.model, {} pieces", m.tokenizer->vocab_size()) : "none (token ids only)");
  });
}

}  // namespace mhla::cli
