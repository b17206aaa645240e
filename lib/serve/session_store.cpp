#include "serve/session_store.hpp"

#include <filesystem>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "serve/files.hpp"
#include "serve/ids.hpp"

namespace mhla::serve {

namespace fs = std::filesystem;

namespace {

nlohmann::json transcript_json(const std::vector<ChatMessage>& transcript) {
  auto out = nlohmann::json::array();
  for (const auto& m : transcript) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

std::string turn_file(std::size_t k) { return fmt::format("turn-{}.mhst", k); }

}  // namespace

SessionStore::SessionStore(std::string dir, const Model& model, const Tokenizer* tokenizer, long long prefill_chunk)
    : dir_(std::move(dir)), model_(model), tokenizer_(tokenizer), chunk_(prefill_chunk) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(fmt::format("cannot create the session directory {}: {}", dir_, ec.message()));
}

std::string SessionStore::path(const std::string& id) const { return (fs::path(dir_) / id).string(); }

void SessionStore::save(const StoredSession& info, const SessionBody& body) {
  const fs::path scratch = fs::path(dir_) / (info.id + ".partial-" + random_id("w"));
  fs::create_directories(scratch);
  try {
    write_state_file((scratch / "state.mhst").string(), to_snapshot(body.seq, model_, chunk_));
    auto turns = nlohmann::json::array();
    for (std::size_t k = 0; k < body.turns.size(); ++k) {
      const Turn& t = body.turns[k];
      Sequence start;
      start.state = t.state;
      start.history.assign(body.seq.history.begin(), body.seq.history.begin() + static_cast<long>(t.history_size));
      start.next_logits = t.next_logits;
      write_state_file((scratch / turn_file(k)).string(), to_snapshot(start, model_, chunk_));
      turns.push_back({{"input", t.input},
                       {"transcript_size", t.transcript_size},
                       {"input_entries", t.input_entries},
                       {"has_reply", t.has_reply}});
    }
    const nlohmann::json meta = {{"id", info.id},
                                 {"owner", info.owner},
                                 {"created", info.created},
                                 {"last_used", info.last_used},
                                 {"transcript", transcript_json(body.transcript)},
                                 {"turns", turns}};
    write_file_atomic((scratch / "meta.json").string(), meta.dump());
    std::error_code ec;
    fs::remove_all(path(info.id), ec);
    fs::rename(scratch, path(info.id));
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(scratch, ec);
    throw Error(fmt::format("cannot write session {} to {}: {}", info.id, dir_, e.what()));
  }
}

SessionBody SessionStore::load(const std::string& id) {
  const fs::path dir = path(id);
  try {
    const auto meta = nlohmann::json::parse(read_file((dir / "meta.json").string()));
    SessionBody body;
    body.seq = from_snapshot(read_state_file((dir / "state.mhst").string(), model_), model_, tokenizer_);
    for (const auto& m : meta.at("transcript"))
      body.transcript.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    const auto& turns = meta.at("turns");
    for (std::size_t k = 0; k < turns.size(); ++k) {
      Sequence start = from_snapshot(read_state_file((dir / turn_file(k)).string(), model_), model_, tokenizer_);
      Turn t;
      t.history_size = start.history.size();
      t.state = std::move(start.state);
      t.next_logits = std::move(start.next_logits);
      t.input = turns[k].at("input").get<std::vector<int>>();
      t.transcript_size = turns[k].at("transcript_size").get<std::size_t>();
      t.input_entries = turns[k].at("input_entries").get<std::size_t>();
      t.has_reply = turns[k].at("has_reply").get<bool>();
      if (t.history_size > body.seq.history.size() || t.transcript_size > body.transcript.size())
        throw Error(fmt::format("turn {} starts past the session's end", k));
      body.turns.push_back(std::move(t));
    }
    return body;
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("session {} on disk ({}) has a damaged meta.json: {}", id, dir.string(), e.what()));
  } catch (const Error& e) {
    throw Error(fmt::format("session {} on disk ({}) cannot be read: {}", id, dir.string(), e.what()));
  }
}

void SessionStore::remove(const std::string& id) {
  std::error_code ec;
  fs::remove_all(path(id), ec);
}

std::vector<StoredSession> SessionStore::scan(Logger& log) {
  std::vector<StoredSession> out;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".partial-") != std::string::npos) {
      std::error_code ec;
      fs::remove_all(entry.path(), ec);
      continue;
    }
    if (!is_id(name, "sess")) continue;
    try {
      const auto meta = nlohmann::json::parse(read_file((entry.path() / "meta.json").string()));
      out.push_back({name, meta.at("owner").get<std::string>(), meta.at("created").get<double>(),
                     meta.at("last_used").get<double>()});
    } catch (const std::exception& e) {
      log.warn("session_unreadable", {{"session", name}, {"reason", e.what()}});
    }
  }
  return out;
}

}  // namespace mhla::serve
