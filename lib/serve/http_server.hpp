#pragma once
// HTTP/1.1 over Boost.Beast: a listener and one coroutine per connection (keep-alive,
// chunked Server-Sent Events, file downloads). While a response is pending the connection
// also watches its socket, so a client that goes away cancels its work at once.
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <memory>
#include <string>

#include "serve/router.hpp"

namespace mhla::serve {

class HttpServer {
public:
  HttpServer(boost::asio::io_context& ioc, Router& router, const ServerConfig& config, Metrics& metrics, Logger& log);

  // Binds and listens; returns the bound port (the one picked when asked for port 0).
  unsigned short listen(const std::string& host, unsigned short port);
  // Starts accepting (on the io_context's threads).
  void start();
  // Closes the listening socket; connections already open finish what they are doing. Thread-safe.
  void stop_accepting();
  // Requests whose response has not been written completely yet.
  int responses_in_flight() const { return in_flight_.load(); }

  struct Connection;

private:
  boost::asio::io_context& ioc_;
  Router& router_;
  const ServerConfig& config_;
  Metrics& metrics_;
  Logger& log_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::atomic<int> in_flight_{0};
  std::atomic<bool> closing_{false};
};

}  // namespace mhla::serve
