#pragma once
// How engine events become response bodies: OpenAI text and chat completions (whole, or as
// Server-Sent Events chunks ending with "data: [DONE]"), and session operations.
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mhla/tokenizer.hpp"
#include "serve/job.hpp"

namespace mhla::serve {

// JSON text, with any invalid UTF-8 replaced rather than thrown on.
std::string dump(const nlohmann::json& j);
// One SSE record: "data: <json>\n\n" (or with an "event:" line first).
std::string sse_record(const nlohmann::json& j, const std::string& event = {});
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

class EventFormat {
public:
  virtual ~EventFormat() = default;
  // Streaming: the SSE text for this event (may be empty). After the terminal event it
  // includes the closing "data: [DONE]".
  virtual std::string sse(const Event& e) = 0;
  // Not streaming: folds the event in; result() once the terminal event has come.
  virtual void add(const Event& e) = 0;
  virtual nlohmann::json result() const = 0;
};

struct CompletionFormatOptions {
  bool chat = false;           // chat.completion(.chunk) objects, else text_completion
  std::string model;
  int n = 1;
  bool include_usage = false;  // stream_options.include_usage
  int logprobs = -1;           // -1 none; else alternatives per token
  std::string session_id;      // echoed when the request ran on a session
};

std::unique_ptr<EventFormat> completion_format(const CompletionFormatOptions& options, const Tokenizer* tokenizer);
// Session operations answer with the Done event's info object; streamed, Progress events
// come first ("event: progress").
std::unique_ptr<EventFormat> info_format();

nlohmann::json usage_json(const Usage& u);

}  // namespace mhla::serve
