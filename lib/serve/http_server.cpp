#include "serve/http_server.hpp"

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include "mhla/error.hpp"

namespace mhla::serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

constexpr std::size_t kHeaderLimit = 64 * 1024;
constexpr const char* kServerName = "mhla-server";

auto with(beast::error_code& ec) { return net::redirect_error(net::use_awaitable, ec); }

std::string_view view(beast::string_view s) { return {s.data(), s.size()}; }

// The client sent something that is not HTTP/1.1 (as opposed to closing or timing out).
bool malformed(const beast::error_code& ec) {
  return ec.category() == make_error_code(http::error::end_of_stream).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message;
}

// Wakes a connection coroutine waiting for its job's events or its socket watch.
// notify() and wait() run on the connection's strand.
struct Waker {
  explicit Waker(const net::any_io_executor& ex) : timer(ex) {}
  void notify() {
    pending = true;
    timer.cancel();
  }
  net::awaitable<void> wait() {
    if (!pending) {
      beast::error_code ec;
      timer.expires_at(net::steady_timer::time_point::max());
      co_await timer.async_wait(with(ec));
    }
    pending = false;
  }
  net::steady_timer timer;
  bool pending = false;
};

// A read kept pending on the socket while a response is prepared or streamed: an HTTP/1.1
// client sends nothing then, so end-of-file or an error means it has gone away.
struct Watch {
  bool active = true;  // still answering the request
  bool done = false;   // no read pending
  bool gone = false;   // the client closed or reset the connection
  std::array<char, 4096> buf{};
  std::string extra;   // bytes of a pipelined next request
};

void watch_socket(beast::tcp_stream& stream, std::shared_ptr<Watch> w, std::shared_ptr<Job> job,
                  std::shared_ptr<Waker> waker, std::size_t limit) {
  stream.socket().async_read_some(
      net::buffer(w->buf), [&stream, w, job, waker, limit](beast::error_code ec, std::size_t n) {
        if (!ec) {
          w->extra.append(w->buf.data(), n);
          if (w->extra.size() > limit) {
            w->gone = true;  // more than a request's worth while we answer: drop the client
          } else if (w->active) {
            watch_socket(stream, w, job, waker, limit);
            return;
          }
        } else if (ec != net::error::operation_aborted) {
          w->gone = true;
        }
        w->done = true;
        if (w->gone && w->active) job->cancel();
        waker->notify();
      });
}

}  // namespace

struct HttpServer::Connection {
  HttpServer& server;
  beast::tcp_stream stream;
  beast::flat_buffer buffer;

  net::awaitable<bool> write_body(int status, const std::string& content_type, std::string body, bool keep,
                                  std::vector<std::pair<std::string, std::string>> headers = {}) {
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::server, kServerName);
    if (!content_type.empty()) res.set(http::field::content_type, content_type);
    for (const auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(keep);
    res.body() = std::move(body);
    res.prepare_payload();
    beast::error_code ec;
    stream.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(server.config_.read_timeout_s)));
    co_await http::async_write(stream, res, with(ec));
    co_return !ec;
  }

  net::awaitable<bool> write_error(const ApiError& e, bool keep) {
    co_return co_await write_body(e.status(), "application/json", dump(e.to_json()), keep);
  }

  net::awaitable<bool> write_file(const std::string& path, bool keep, int& status) {
    http::file_body::value_type file;
    beast::error_code ec;
    file.open(path.c_str(), beast::file_mode::scan, ec);
    if (ec) {
      status = 404;
      co_return co_await write_error(not_found("the checkpoint's file is gone (deleted or expired)"), keep);
    }
    http::response<http::file_body> res{http::status::ok, 11};
    res.set(http::field::server, kServerName);
    res.set(http::field::content_type, "application/octet-stream");
    res.keep_alive(keep);
    res.body() = std::move(file);
    res.prepare_payload();
    stream.expires_never();
    co_await http::async_write(stream, res, with(ec));
    co_return !ec;
  }

  // Delivers a job's events: one JSON body, or a stream of Server-Sent Events.
  net::awaitable<bool> drive(Reply& reply, bool keep, int& status) {
    const auto ex = co_await net::this_coro::executor;
    auto waker = std::make_shared<Waker>(ex);
    reply.job->set_notifier([ex, weak = std::weak_ptr<Waker>(waker)] {
      net::post(ex, [weak] {
        if (auto w = weak.lock()) w->notify();
      });
    });
    auto watch = std::make_shared<Watch>();
    watch_socket(stream, watch, reply.job, waker, server.config_.max_body_bytes);
    stream.expires_never();

    bool ok = true, done = false, header_sent = false;
    beast::error_code ec;
    while (ok && !done) {
      auto events = reply.job->take();
      if (events.empty()) {
        if (watch->gone) {
          ok = false;
          break;
        }
        co_await waker->wait();
        continue;
      }
      if (!reply.stream) {
        for (const auto& e : events) {
          if (const auto* f = std::get_if<Failed>(&e)) {
            status = f->error.status();
            ok = co_await write_error(f->error, keep);
            done = true;
            break;
          }
          reply.format->add(e);
          if (is_terminal(e)) {
            ok = co_await write_body(200, "application/json", dump(reply.format->result()), keep);
            done = true;
            break;
          }
        }
        continue;
      }
      std::string text;
      for (const auto& e : events) {
        const auto* f = std::get_if<Failed>(&e);
        if (f && !header_sent && text.empty()) {
          // Nothing sent yet: a plain error response, with its status.
          status = f->error.status();
          ok = co_await write_error(f->error, keep);
          done = true;
          break;
        }
        text += reply.format->sse(e);
        if (is_terminal(e)) {
          done = true;
          break;
        }
      }
      if (status != 200) break;
      if (!header_sent && !text.empty()) {
        http::response<http::empty_body> res{http::status::ok, 11};
        res.set(http::field::server, kServerName);
        res.set(http::field::content_type, "text/event-stream");
        res.set(http::field::cache_control, "no-cache");
        res.set("X-Accel-Buffering", "no");
        res.keep_alive(keep);
        res.chunked(true);
        http::response_serializer<http::empty_body> sr{res};
        co_await http::async_write_header(stream, sr, with(ec));
        header_sent = true;
        ok = !ec;
      }
      if (ok && !text.empty()) {
        co_await net::async_write(stream, http::make_chunk(net::buffer(text)), with(ec));
        ok = !ec;
      }
      if (ok && done && header_sent) {
        co_await net::async_write(stream, http::make_chunk_last(), with(ec));
        ok = !ec;
      }
    }

    watch->active = false;
    if (!watch->done) {
      stream.socket().cancel(ec);
      while (!watch->done) co_await waker->wait();
    }
    if (!ok || watch->gone) {
      reply.job->cancel();
      co_return false;
    }
    if (!watch->extra.empty()) {  // a pipelined request: keep its bytes for the next read
      const auto n = net::buffer_copy(buffer.prepare(watch->extra.size()), net::buffer(watch->extra));
      buffer.commit(n);
    }
    co_return keep;
  }

  net::awaitable<void> run() {
    const auto timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(server.config_.read_timeout_s));
    while (true) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(kHeaderLimit);
      beast::error_code ec;
      stream.expires_after(timeout);
      // The body limit depends on the endpoint; until the header is in, the largest applies.
      parser.body_limit(std::max(server.config_.max_body_bytes, server.config_.max_upload_bytes));
      co_await http::async_read_header(stream, buffer, parser, with(ec));
      if (ec) {
        if (malformed(ec))
          co_await write_error(bad_request(fmt::format("malformed HTTP request: {}", ec.message())), false);
        break;
      }
      const auto arrived = Clock::now();
      auto& h = parser.get();
      const std::size_t limit = server.router_.body_limit(view(h.method_string()), view(h.target()));
      const bool too_large = h.has_content_length() && parser.content_length().value_or(0) > limit;
      parser.body_limit(limit);
      if (!too_large && beast::iequals(h[http::field::expect], "100-continue")) {
        http::response<http::empty_body> cont{http::status::continue_, 11};
        co_await http::async_write(stream, cont, with(ec));
        if (ec) break;
      }
      if (too_large)
        ec = http::error::body_limit;
      else
        co_await http::async_read(stream, buffer, parser, with(ec));
      if (ec == http::error::body_limit) {
        co_await write_error(ApiError(413,
                                      fmt::format("the body is larger than this endpoint takes ({} bytes; see "
                                                  "--max-body-bytes and --max-upload-bytes)",
                                                  limit),
                                      {}, "body_too_large"),
                             false);
        break;
      }
      if (ec) {
        if (malformed(ec))
          co_await write_error(bad_request(fmt::format("malformed HTTP request: {}", ec.message())), false);
        break;
      }
      auto req = parser.release();
      HttpRequest r;
      r.method = std::string(req.method_string());
      r.target = std::string(req.target());
      r.authorization = std::string(req[http::field::authorization]);
      r.if_none_match = std::string(req[http::field::if_none_match]);
      r.body = std::move(req.body());
      r.arrived = arrived;
      bool keep = req.keep_alive() && !server.closing_.load();

      ++server.in_flight_;
      Reply reply = server.router_.handle(r);
      int status = reply.status;
      if (reply.job)
        keep = co_await drive(reply, keep, status);
      else if (!reply.file.empty())
        keep = co_await write_file(reply.file, keep, status) && keep;
      else
        keep = co_await write_body(reply.status, reply.content_type, std::move(reply.body), keep,
                                   std::move(reply.headers)) &&
               keep;
      --server.in_flight_;

      server.metrics_.count_request(reply.route, status);
      server.log_.info("request", {{"method", r.method},
                                   {"route", reply.route},
                                   {"status", status},
                                   {"ms", std::chrono::duration<double, std::milli>(Clock::now() - arrived).count()}});
      if (!keep) break;
    }
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }
};

HttpServer::HttpServer(net::io_context& ioc, Router& router, const ServerConfig& config, Metrics& metrics, Logger& log)
    : ioc_(ioc), router_(router), config_(config), metrics_(metrics), log_(log), acceptor_(ioc) {}

unsigned short HttpServer::listen(const std::string& host, unsigned short port) {
  beast::error_code ec;
  const auto address = net::ip::make_address(host, ec);
  if (ec) throw Error(fmt::format("'{}' is not an IP address to listen on: {}", host, ec.message()));
  const tcp::endpoint endpoint(address, port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error(fmt::format("cannot listen on {}:{}: {}", host, port, ec.message()));
  return acceptor_.local_endpoint().port();
}

void HttpServer::start() {
  net::co_spawn(
      ioc_,
      [this]() -> net::awaitable<void> {
        while (true) {
          beast::error_code ec;
          tcp::socket socket = co_await acceptor_.async_accept(net::make_strand(ioc_), with(ec));
          if (ec) {
            if (!acceptor_.is_open() || closing_.load()) co_return;
            continue;
          }
          socket.set_option(tcp::no_delay(true), ec);  // tokens go out as they come
          auto conn = std::make_shared<Connection>(Connection{*this, beast::tcp_stream(std::move(socket)), {}});
          const auto ex = conn->stream.get_executor();
          net::co_spawn(
              ex, [conn]() -> net::awaitable<void> { co_await conn->run(); }, net::detached);
        }
      },
      net::detached);
}

void HttpServer::stop_accepting() {
  closing_.store(true);
  net::post(ioc_, [this] {
    beast::error_code ec;
    acceptor_.close(ec);
  });
}

}  // namespace mhla::serve
