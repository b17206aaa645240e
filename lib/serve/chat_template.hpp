#pragma once
// How chat messages become prompt text. The default mirrors the engine's chat format
// (include/mhla/chat_format.hpp):
//
//   <BOS>System: {system}\nUser: {message}\nAssistant: {reply}\nUser: {message}\nAssistant:
//
// A model directory may bring its own in chat_template.json (docs/http-api.md lists the keys).
#include <span>
#include <string>
#include <vector>

#include "mhla/checkpoint.hpp"

namespace mhla::serve {

// A message (role system, user or assistant) is what a session's transcript records, and the
// transcript travels in checkpoints (the state file's TRNS section): one type for both.
using ChatMessage = TranscriptEntry;

class ChatTemplate {
public:
  static ChatTemplate default_template();
  // DIR/chat_template.json when it exists, else the default; throws mhla::Error on a
  // malformed file, naming the key.
  static ChatTemplate for_model(const std::string& dir);

  // The text these messages add to a conversation. `has_user_turn`: the conversation already
  // holds a user message (the first one renders differently); `generation_follows`: end with
  // the assistant's prompt when the last message does not already.
  std::string render(std::span<const ChatMessage> messages, bool has_user_turn, bool generation_follows) const;

  const std::vector<std::string>& stop() const { return stop_; }
  bool add_bos() const { return add_bos_; }
  const std::string& source() const { return source_; }

private:
  std::string system_, user_first_, user_, assistant_, assistant_prompt_;
  std::vector<std::string> stop_;
  bool add_bos_ = true;
  std::string source_;
};

}  // namespace mhla::serve
