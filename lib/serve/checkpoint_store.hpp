#pragma once
// Checkpoints clients asked for, in <state-dir>/checkpoints: <id>.mhst (a state file,
// include/mhla/checkpoint.hpp, with the session's transcript) and <id>.json (owner, times,
// size). Clients name
// checkpoints by id only, never by path. Each API key has quotas on their number and bytes;
// checkpoints expire after --checkpoint-ttl. Safe to use from any thread.
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/checkpoint.hpp"
#include "serve/chat_template.hpp"
#include "serve/config.hpp"
#include "serve/log.hpp"

namespace mhla::serve {

struct CheckpointInfo {
  std::string id;
  std::string owner;
  std::string source;       // "session sess_..." or "upload"
  long long bytes = 0;
  long long position = 0;
  double created = 0;       // unix seconds
  double expires = 0;
  long long messages = 0;   // transcript entries in the state file
};

class CheckpointStore {
public:
  CheckpointStore(std::string dir, const Model& model, const ServerConfig& config, Logger& log);

  // The snapshot carries the session's transcript. Quota and disk failures throw ApiError
  // (429 for quotas).
  CheckpointInfo create(const std::string& owner, const SessionSnapshot& snapshot, const std::string& source);
  // The bytes of a state file from elsewhere, verified exactly as a file on disk is (every
  // checksum, the model, the options); ApiError 400 when it is not usable here.
  CheckpointInfo upload(const std::string& owner, std::string_view bytes);

  std::optional<CheckpointInfo> find(const std::string& owner, const std::string& id);
  std::vector<CheckpointInfo> list(const std::string& owner);
  bool remove(const std::string& owner, const std::string& id);
  std::string file_path(const std::string& id) const;
  // Reads and verifies the state file; ApiError 404 when unknown to this owner.
  SessionSnapshot read(const std::string& owner, const std::string& id);
  // Deletes expired checkpoints; returns how many.
  int sweep();

private:
  void enforce_quota(const std::string& owner, long long extra_bytes) const;
  void commit(CheckpointInfo& info, const std::string& tmp_path);
  std::string meta_path(const std::string& id) const;

  std::string dir_;
  const Model& model_;
  const ServerConfig& config_;
  Logger& log_;
  mutable std::mutex mutex_;
  std::vector<CheckpointInfo> index_;
};

nlohmann::json to_json(const CheckpointInfo& info);

}  // namespace mhla::serve
