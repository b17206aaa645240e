#pragma once
// Sessions on disk: evicted when memory runs short or they sat idle, written at shutdown, and
// found again after a restart. One directory per session under <state-dir>/sessions:
//   meta.json      owner, times, transcript, turn records
//   state.mhst     the session's sequence (a state file, include/mhla/checkpoint.hpp)
//   turn-<k>.mhst  the state at the start of kept turn k
// A session is written to a scratch directory that is renamed into place, so after kill -9
// either the whole session is there or none of it.
#include <string>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/tokenizer.hpp"
#include "serve/log.hpp"
#include "serve/session_body.hpp"

namespace mhla::serve {

struct StoredSession {
  std::string id;
  std::string owner;
  double created = 0;    // unix seconds
  double last_used = 0;  // unix seconds
};

class SessionStore {
public:
  SessionStore(std::string dir, const Model& model, const Tokenizer* tokenizer, long long prefill_chunk);

  // Throws mhla::Error when the files cannot be written (the session stays in memory then).
  void save(const StoredSession& info, const SessionBody& body);
  // Reads and verifies every file; throws mhla::Error saying what is wrong.
  SessionBody load(const std::string& id);
  void remove(const std::string& id);
  // Every complete session on disk (scratch directories of interrupted writes are removed;
  // unreadable sessions are logged and left in place).
  std::vector<StoredSession> scan(Logger& log);

private:
  std::string path(const std::string& id) const;

  std::string dir_;
  const Model& model_;
  const Tokenizer* tokenizer_;
  long long chunk_;
};

}  // namespace mhla::serve
