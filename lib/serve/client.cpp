#include "serve/client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <fmt/format.h>
#include <limits>

#include "mhla/error.hpp"

namespace mhla::serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

// Splits complete "\n\n"-terminated records off the front of pending.
void take_events(std::string& pending, const std::function<bool(const SseEvent&)>& on_event, bool& keep_going) {
  size_t end;
  while (keep_going && (end = pending.find("\n\n")) != std::string::npos) {
    SseEvent e;
    size_t at = 0;
    while (at < end) {
      const size_t nl = std::min(pending.find('\n', at), end);
      const std::string_view line(pending.data() + at, nl - at);
      if (line.starts_with("data: ")) e.data += line.substr(6);
      if (line.starts_with("event: ")) e.event = line.substr(7);
      at = nl + 1;
    }
    pending.erase(0, end + 2);
    if (!e.data.empty() || !e.event.empty()) keep_going = on_event(e);
  }
}

}  // namespace

HttpClient::HttpClient(std::string host, unsigned short port, std::string api_key, double timeout_s)
    : host_(std::move(host)), port_(port), key_(std::move(api_key)), timeout_s_(timeout_s) {}

HttpResult HttpClient::request(const std::string& method, const std::string& target, const std::string& body,
                               const std::string& content_type, const HttpHeaders& headers) const {
  return exchange(method, target, body, content_type, headers, [](const SseEvent&) { return true; });
}

HttpResult HttpClient::stream(const std::string& method, const std::string& target, const std::string& body,
                              const std::function<bool(const SseEvent&)>& on_event) const {
  return exchange(method, target, body, "application/json", {}, on_event);
}

HttpResult HttpClient::exchange(const std::string& method, const std::string& target, const std::string& body,
                                const std::string& content_type, const HttpHeaders& headers,
                                const std::function<bool(const SseEvent&)>& on_event) const {
  // Blocking calls over asynchronous operations, so every step has a deadline: a server that
  // stops answering fails the call instead of hanging it.
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  beast::error_code ec;
  const auto timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(timeout_s_));
  const auto run = [&](auto start) {
    ec = {};
    stream.expires_after(timeout);
    start([&](beast::error_code e, auto&&...) { ec = e; });
    ioc.run();
    ioc.restart();
  };
  const tcp::endpoint endpoint(net::ip::make_address(host_), port_);
  run([&](auto done) { stream.async_connect(endpoint, done); });
  if (ec) throw Error(fmt::format("cannot connect to {}:{}: {}", host_, port_, ec.message()));

  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, host_);
  if (!key_.empty()) req.set(http::field::authorization, "Bearer " + key_);
  if (!body.empty()) req.set(http::field::content_type, content_type);
  for (const auto& [name, value] : headers) req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  run([&](auto done) { http::async_write(stream, req, done); });
  if (ec) throw Error(fmt::format("cannot send {} {}: {}", method, target, ec.message()));

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());  // (boost::none misbehaves in Boost 1.74)
  run([&](auto done) { http::async_read_header(stream, buffer, parser, done); });
  if (ec) throw Error(fmt::format("no response to {} {}: {}", method, target, ec.message()));
  HttpResult r;
  r.status = static_cast<int>(parser.get().result_int());
  r.content_type = std::string(parser.get()[http::field::content_type]);
  for (const auto& field : parser.get()) {
    std::string name(field.name_string());
    for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    r.headers[name] = std::string(field.value());
  }
  const bool events = r.content_type.starts_with("text/event-stream");
  std::string pending;
  size_t seen = 0;
  bool keep_going = true;
  while (!parser.is_done()) {
    run([&](auto done) { http::async_read_some(stream, buffer, parser, done); });
    if (ec) throw Error(fmt::format("the response to {} {} broke off: {}", method, target, ec.message()));
    if (!events) continue;
    const std::string& got = parser.get().body();
    pending.append(got, seen);
    seen = got.size();
    take_events(pending, on_event, keep_going);
    if (!keep_going) {
      stream.socket().close(ec);
      r.body = got;
      return r;
    }
  }
  r.body = parser.get().body();
  return r;
}

}  // namespace mhla::serve
