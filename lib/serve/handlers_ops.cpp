// GET /health, GET /metrics, GET /v1/models.
#include <fmt/format.h>

#include "serve/router.hpp"

namespace mhla::serve {

Reply handle_health(ServerContext& ctx) {
  const bool draining = ctx.engine.draining();
  const auto uptime = std::chrono::duration<double>(std::chrono::system_clock::now() - ctx.started).count();
  return json_reply(draining ? 503 : 200, {{"status", draining ? "draining" : "ok"},
                                           {"model", ctx.model_name},
                                           {"device", to_string(ctx.backend.device())},
                                           {"precision", to_string(ctx.backend.precision())},
                                           {"uptime_seconds", uptime}});
}

Reply handle_metrics(ServerContext& ctx) {
  Reply r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = ctx.metrics.render();
  return r;
}

Reply handle_models(ServerContext& ctx, const std::string* id) {
  const auto& c = ctx.model.config();
  const nlohmann::json model = {
      {"id", ctx.model_name},
      {"object", "model"},
      {"created", std::chrono::duration_cast<std::chrono::seconds>(ctx.started.time_since_epoch()).count()},
      {"owned_by", "mhla"},
      {"trained_window", ctx.model.trained_window()},
      {"block_size", c.block_size},
      {"mixing_blocks", ctx.model.mixing_blocks()},
      {"context_policies", {"strict", "slide", "slide_mean"}},
      {"default_policy", to_string(ctx.config.policy)},
      {"vocab_size", c.vocab_size},
      {"state_bytes_max", ctx.model.max_state_bytes()},
      {"tokenizer", ctx.tokenizer != nullptr},
      {"chat_template", ctx.chat.source()},
      {"device", to_string(ctx.backend.device())},
      {"device_name", ctx.backend.description()},
      {"precision", to_string(ctx.backend.precision())},
      {"state_slots", ctx.backend.slots()},
  };
  if (id) {
    if (*id != ctx.model_name) throw not_found(fmt::format("no model {}; this server serves {}", *id, ctx.model_name));
    return json_reply(200, model);
  }
  return json_reply(200, {{"object", "list"}, {"data", {model}}});
}

}  // namespace mhla::serve
