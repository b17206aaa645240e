#pragma once
// A small blocking HTTP/1.1 client for mhla-server (one connection per request), with
// Server-Sent Events streaming. The tests and the load generator (bench/) use it.
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mhla::serve {

struct HttpResult {
  int status = 0;
  std::string content_type;
  std::string body;  // for an event stream: everything received
  std::map<std::string, std::string> headers;  // names in lower case
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct SseEvent {
  std::string event;  // empty for plain "data:" records
  std::string data;
};

class HttpClient {
public:
  // api_key: sent as "Authorization: Bearer KEY" when not empty.
  HttpClient(std::string host, unsigned short port, std::string api_key = {}, double timeout_s = 60);

  // Throws mhla::Error when the server cannot be reached or the connection breaks.
  HttpResult request(const std::string& method, const std::string& target, const std::string& body = {},
                     const std::string& content_type = "application/json", const HttpHeaders& headers = {}) const;
  // Calls on_event for each event as it arrives; returning false closes the connection at
  // once (a client that goes away).
  HttpResult stream(const std::string& method, const std::string& target, const std::string& body,
                    const std::function<bool(const SseEvent&)>& on_event) const;

private:
  HttpResult exchange(const std::string& method, const std::string& target, const std::string& body,
                      const std::string& content_type, const HttpHeaders& headers,
                      const std::function<bool(const SseEvent&)>& on_event) const;

  std::string host_;
  unsigned short port_;
  std::string key_;
  double timeout_s_;
};

}  // namespace mhla::serve
