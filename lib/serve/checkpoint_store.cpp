#include "serve/checkpoint_store.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mhla/error.hpp"
#include "serve/api_error.hpp"
#include "serve/files.hpp"
#include "serve/ids.hpp"

namespace mhla::serve {

namespace fs = std::filesystem;

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

nlohmann::json meta_json(const CheckpointInfo& c) {
  return {{"id", c.id},           {"owner", c.owner},     {"source", c.source},   {"bytes", c.bytes},
          {"position", c.position}, {"created", c.created}, {"expires", c.expires}, {"messages", c.messages}};
}

CheckpointInfo parse_meta(const nlohmann::json& j) {
  CheckpointInfo c;
  c.id = j.at("id").get<std::string>();
  c.owner = j.at("owner").get<std::string>();
  c.source = j.at("source").get<std::string>();
  c.bytes = j.at("bytes").get<long long>();
  c.position = j.at("position").get<long long>();
  c.created = j.at("created").get<double>();
  c.expires = j.at("expires").get<double>();
  c.messages = j.value("messages", 0LL);  // absent before transcripts moved into the state file
  return c;
}

}  // namespace

nlohmann::json to_json(const CheckpointInfo& c) {
  return {{"id", c.id},         {"object", "checkpoint"},       {"source", c.source},
          {"bytes", c.bytes},   {"position", c.position},       {"created_at", static_cast<long long>(c.created)},
          {"expires_at", static_cast<long long>(c.expires)}, {"messages", c.messages}};
}

CheckpointStore::CheckpointStore(std::string dir, const Model& model, const ServerConfig& config, Logger& log)
    : dir_(std::move(dir)), model_(model), config_(config), log_(log) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(fmt::format("cannot create the checkpoint directory {}: {}", dir_, ec.message()));
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".tmp_") != std::string::npos) {  // left by an interrupted write
      fs::remove(entry.path(), ec);
      continue;
    }
    if (entry.path().extension() != ".json" || !is_id(entry.path().stem().string(), "ckpt")) continue;
    try {
      CheckpointInfo c = parse_meta(nlohmann::json::parse(read_file(entry.path().string())));
      if (fs::exists(file_path(c.id))) index_.push_back(std::move(c));
    } catch (const std::exception& e) {
      log_.warn("checkpoint_unreadable", {{"file", entry.path().string()}, {"reason", e.what()}});
    }
  }
  sweep();
}

std::string CheckpointStore::file_path(const std::string& id) const { return (fs::path(dir_) / (id + ".mhst")).string(); }
std::string CheckpointStore::meta_path(const std::string& id) const { return (fs::path(dir_) / (id + ".json")).string(); }

void CheckpointStore::enforce_quota(const std::string& owner, long long extra_bytes) const {
  long long count = 0, bytes = 0;
  for (const auto& c : index_)
    if (c.owner == owner) {
      ++count;
      bytes += c.bytes;
    }
  if (count + 1 > config_.checkpoint_quota_count)
    throw ApiError(429,
                   fmt::format("checkpoint quota reached: this key holds {} checkpoints (limit {}); delete some "
                               "(DELETE /v1/checkpoints/{{id}})",
                               count, config_.checkpoint_quota_count),
                   {}, "checkpoint_quota_exceeded");
  if (bytes + extra_bytes > static_cast<long long>(config_.checkpoint_quota_bytes))
    throw ApiError(429,
                   fmt::format("checkpoint quota reached: this key's checkpoints would hold {} bytes (limit {}); "
                               "delete some (DELETE /v1/checkpoints/{{id}})",
                               bytes + extra_bytes, config_.checkpoint_quota_bytes),
                   {}, "checkpoint_quota_exceeded");
}

void CheckpointStore::commit(CheckpointInfo& info, const std::string& tmp_path) {
  std::error_code ec;
  info.bytes = static_cast<long long>(fs::file_size(tmp_path, ec));
  try {
    enforce_quota(info.owner, info.bytes);
  } catch (...) {
    fs::remove(tmp_path, ec);
    throw;
  }
  info.created = unix_now();
  info.expires = info.created + config_.checkpoint_ttl_s;
  fs::rename(tmp_path, file_path(info.id), ec);
  if (ec) {
    fs::remove(tmp_path, ec);
    throw ApiError(500, fmt::format("cannot store the checkpoint in {}: {}", dir_, ec.message()));
  }
  write_file_atomic(meta_path(info.id), meta_json(info).dump());
  index_.push_back(info);
}

CheckpointInfo CheckpointStore::create(const std::string& owner, const SessionSnapshot& snapshot,
                                       const std::string& source) {
  std::lock_guard lock(mutex_);
  enforce_quota(owner, 0);
  CheckpointInfo info;
  info.id = random_id("ckpt");
  info.owner = owner;
  info.source = source;
  info.position = snapshot.state.position();
  info.messages = static_cast<long long>(snapshot.transcript.size());
  const std::string tmp = file_path(info.id) + "." + random_id("tmp");
  try {
    write_state_file(tmp, snapshot);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw ApiError(500, fmt::format("cannot write the checkpoint: {}", e.what()));
  }
  commit(info, tmp);
  return info;
}

CheckpointInfo CheckpointStore::upload(const std::string& owner, std::string_view bytes) {
  std::lock_guard lock(mutex_);
  enforce_quota(owner, static_cast<long long>(bytes.size()));
  CheckpointInfo info;
  info.id = random_id("ckpt");
  info.owner = owner;
  info.source = "upload";
  const std::string tmp = file_path(info.id) + "." + random_id("tmp");
  try {
    write_file_atomic(tmp, bytes);
    const SessionSnapshot snapshot = read_state_file(tmp, model_);
    info.position = snapshot.state.position();
    info.messages = static_cast<long long>(snapshot.transcript.size());
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    // The reason names the scratch file; clients see no server paths.
    std::string reason = e.what();
    for (size_t at; (at = reason.find(tmp)) != std::string::npos;) reason.replace(at, tmp.size(), "the upload");
    throw ApiError(400, fmt::format("the uploaded checkpoint cannot be used with this server's model: {}", reason), {},
                   "invalid_checkpoint");
  }
  commit(info, tmp);
  return info;
}

std::optional<CheckpointInfo> CheckpointStore::find(const std::string& owner, const std::string& id) {
  std::lock_guard lock(mutex_);
  for (const auto& c : index_)
    if (c.id == id && c.owner == owner) return c;
  return std::nullopt;
}

std::vector<CheckpointInfo> CheckpointStore::list(const std::string& owner) {
  std::lock_guard lock(mutex_);
  std::vector<CheckpointInfo> out;
  for (const auto& c : index_)
    if (c.owner == owner) out.push_back(c);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.created < b.created; });
  return out;
}

bool CheckpointStore::remove(const std::string& owner, const std::string& id) {
  std::lock_guard lock(mutex_);
  const auto it = std::find_if(index_.begin(), index_.end(), [&](const auto& c) { return c.id == id && c.owner == owner; });
  if (it == index_.end()) return false;
  std::error_code ec;
  fs::remove(meta_path(id), ec);
  fs::remove(file_path(id), ec);
  index_.erase(it);
  return true;
}

SessionSnapshot CheckpointStore::read(const std::string& owner, const std::string& id) {
  if (!find(owner, id)) throw not_found(fmt::format("no checkpoint {}", id));
  try {
    return read_state_file(file_path(id), model_);
  } catch (const Error& e) {
    throw ApiError(409, fmt::format("checkpoint {} cannot be restored: {}", id, e.what()), {}, "invalid_checkpoint");
  }
}

int CheckpointStore::sweep() {
  std::lock_guard lock(mutex_);
  const double now = unix_now();
  int removed = 0;
  std::error_code ec;
  for (auto it = index_.begin(); it != index_.end();) {
    if (it->expires > now) {
      ++it;
      continue;
    }
    fs::remove(meta_path(it->id), ec);
    fs::remove(file_path(it->id), ec);
    log_.info("checkpoint_expired", {{"checkpoint", it->id}});
    it = index_.erase(it);
    ++removed;
  }
  return removed;
}

}  // namespace mhla::serve
