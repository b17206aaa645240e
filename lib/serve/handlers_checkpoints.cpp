// /v1/checkpoints: list, upload, download, delete. Checkpoints are made from a session
// (POST /v1/sessions/{id}/checkpoint) and turned back into one (POST /v1/sessions/restore).
#include <fmt/format.h>

#include "serve/ids.hpp"
#include "serve/router.hpp"

namespace mhla::serve {

namespace {
ApiError method_not_allowed(const std::string& method, const char* allowed) {
  return ApiError(405, fmt::format("{} is not allowed here; use {}", method, allowed), {}, "method_not_allowed");
}
}  // namespace

Reply handle_checkpoint(ServerContext& ctx, const HttpRequest& req, const std::string& owner,
                        const std::vector<std::string>& path) {
  const std::string& m = req.method;
  if (path.size() == 2) {
    if (m == "GET") {
      auto data = nlohmann::json::array();
      for (const auto& c : ctx.checkpoints.list(owner)) data.push_back(to_json(c));
      return json_reply(200, {{"object", "list"}, {"data", data}});
    }
    if (m != "POST") throw method_not_allowed(m, "GET or POST");
    if (req.body.empty()) throw bad_request("the body is empty: send the bytes of a state file (.mhst)");
    const CheckpointInfo info = ctx.checkpoints.upload(owner, req.body);
    ctx.log.info("checkpoint_uploaded", {{"checkpoint", info.id}, {"bytes", info.bytes}});
    return json_reply(201, to_json(info));
  }
  if (path.size() != 3) throw not_found(fmt::format("no endpoint {} {}", m, req.target));
  const std::string& id = path[2];
  if (!is_id(id, "ckpt") || !ctx.checkpoints.find(owner, id)) throw not_found(fmt::format("no checkpoint {}", id));
  if (m == "GET") {
    Reply r;
    r.content_type = "application/octet-stream";
    r.file = ctx.checkpoints.file_path(id);
    return r;
  }
  if (m == "DELETE") {
    if (!ctx.checkpoints.remove(owner, id)) throw not_found(fmt::format("no checkpoint {}", id));
    return json_reply(200, {{"id", id}, {"object", "checkpoint.deleted"}, {"deleted", true}});
  }
  throw method_not_allowed(m, "GET or DELETE");
}

}  // namespace mhla::serve
