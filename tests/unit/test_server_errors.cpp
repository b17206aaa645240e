// Bad requests get a 4xx with an OpenAI-style error body and the server keeps serving; API
// keys keep each caller's sessions and checkpoints to itself.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>

#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

struct BadRequest {
  const char* method;
  std::string target;
  std::string body;
  int status;
  const char* param;  // expected error.param, or nullptr for any
};

// Sends raw bytes and returns what comes back before the server closes.
std::string raw_exchange(unsigned short port, const std::string& bytes) {
  namespace net = boost::asio;
  net::io_context ioc;
  net::ip::tcp::socket socket(ioc);
  socket.connect({net::ip::make_address("127.0.0.1"), port});
  net::write(socket, net::buffer(bytes));
  std::string out;
  boost::system::error_code ec;
  net::read(socket, net::dynamic_buffer(out), ec);
  return out;
}

}  // namespace

TEST_CASE("server: malformed requests get OpenAI-style 4xx errors and nothing breaks", "[server]") {
  TestServer srv([](serve::ServerConfig& c) {
    c.max_prompt_tokens = 200;
    c.max_body_bytes = 8192;
    c.read_timeout_s = 0.5;  // so the truncated request below is dropped quickly
  });
  const auto c = srv.client();
  const std::string unknown_session = "sess_" + std::string(32, '0');
  const std::string long_text(300, 'a');
  const std::vector<BadRequest> table = {
      {"POST", "/v1/completions", "{not json", 400, nullptr},
      {"POST", "/v1/completions", "[1, 2]", 400, nullptr},
      {"POST", "/v1/completions", "{}", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": 5})", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": [1, "a"]})", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": [100000]})", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": [-1]})", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": ["a", "b"]})", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": []})", 400, "prompt"},
      {"POST", "/v1/completions", R"({"prompt": "x", "max_tokens": "5"})", 400, "max_tokens"},
      {"POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
      {"POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 99999999})", 400, "max_tokens"},
      {"POST", "/v1/completions", R"({"prompt": "x", "temperature": -1})", 400, "temperature"},
      {"POST", "/v1/completions", R"({"prompt": "x", "top_p": 0})", 400, "top_p"},
      {"POST", "/v1/completions", R"({"prompt": "x", "n": 0})", 400, "n"},
      {"POST", "/v1/completions", R"({"prompt": "x", "n": 1000})", 400, "n"},
      {"POST", "/v1/completions", R"({"prompt": "x", "stop": [1]})", 400, "stop"},
      {"POST", "/v1/completions", R"({"prompt": "x", "stop": ""})", 400, "stop"},
      {"POST", "/v1/completions", R"({"prompt": "x", "seed": 1.5})", 400, "seed"},
      {"POST", "/v1/completions", R"({"prompt": "x", "stream": "yes"})", 400, "stream"},
      {"POST", "/v1/completions", R"({"prompt": "x", "stream_options": {"include_usage": true}})", 400, "stream_options"},
      {"POST", "/v1/completions", R"({"prompt": "x", "policy": "sideways"})", 400, "policy"},
      {"POST", "/v1/completions", R"({"prompt": "x", "logprobs": 9})", 400, "logprobs"},
      {"POST", "/v1/completions", R"({"prompt": "x", "presence_penalty": 1})", 400, "presence_penalty"},
      {"POST", "/v1/completions", R"({"prompt": "x", "echo": true})", 400, "echo"},
      {"POST", "/v1/completions", json({{"prompt", long_text}}).dump(), 400, "prompt"},
      {"POST", "/v1/completions", json({{"prompt", "a b c d e f g h i j k l m n o p q r s t u v"}, {"policy", "strict"}}).dump(), 400, "prompt"},
      {"POST", "/v1/completions", std::string(9000, ' '), 413, nullptr},
      {"GET", "/v1/completions", "", 405, nullptr},
      {"POST", "/v1/chat/completions", R"({"messages": "hi"})", 400, "messages"},
      {"POST", "/v1/chat/completions", R"({"messages": []})", 400, "messages"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "tool", "content": "x"}]})", 400, "messages"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user"}]})", 400, "messages"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", 400, "logprobs"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400, "top_logprobs"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "session_id": "nope"})", 404, nullptr},
      {"POST", "/v1/chat/completions", json({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"session_id", unknown_session}}).dump(), 404, nullptr},
      {"GET", "/v1/nothing", "", 404, nullptr},
      {"GET", "/nothing", "", 404, nullptr},
      {"GET", "/v1/sessions/" + unknown_session, "", 404, nullptr},
      {"GET", "/v1/sessions/../../etc/passwd", "", 404, nullptr},
      {"POST", "/v1/sessions/" + unknown_session + "/generate", "{}", 404, nullptr},
      {"POST", "/v1/sessions/" + unknown_session + "/frobnicate", "{}", 404, nullptr},
      {"PUT", "/v1/sessions/" + unknown_session, "", 405, nullptr},
      {"POST", "/v1/sessions", R"({"prefix": 7})", 400, "prefix"},
      {"POST", "/v1/sessions", R"({"prefix": "a", "prefix_tokens": [1]})", 400, nullptr},
      {"POST", "/v1/sessions/restore", "{}", 400, "checkpoint_id"},
      {"POST", "/v1/sessions/restore", R"({"checkpoint_id": "ckpt_bad"})", 404, nullptr},
      {"POST", "/v1/checkpoints", "", 400, nullptr},
      {"POST", "/v1/checkpoints", "not a state file at all", 400, nullptr},
      {"GET", "/v1/checkpoints/ckpt_" + std::string(32, '0'), "", 404, nullptr},
      {"DELETE", "/v1/checkpoints/ckpt_" + std::string(32, '0'), "", 404, nullptr},
  };
  for (const auto& t : table) {
    INFO(t.method << " " << t.target << " " << t.body.substr(0, 120));
    const auto r = c.request(t.method, t.target, t.body);
    CHECK(r.status == t.status);
    const json body = json_of(r);
    REQUIRE(body.contains("error"));
    CHECK(body["error"]["message"].is_string());
    CHECK(body["error"]["type"] == (t.status == 404 ? "not_found_error" : "invalid_request_error"));
    if (t.param) CHECK(body["error"]["param"] == t.param);
  }

  // Within a session: appending nothing, undoing nothing, regenerating without a reply.
  const std::string id = json_of(c.request("POST", "/v1/sessions", "{}"))["id"];
  CHECK(c.request("POST", "/v1/sessions/" + id + "/append", "{}").status == 400);
  CHECK(c.request("POST", "/v1/sessions/" + id + "/generate", R"({"stream": false})").status == 400);
  CHECK(c.request("POST", "/v1/sessions/" + id + "/undo").status == 409);
  CHECK(c.request("POST", "/v1/sessions/" + id + "/generate", R"({"n": 2})").status == 400);

  // Not HTTP at all, and a truncated request: an error or a closed connection, never a crash.
  CHECK(raw_exchange(srv.port(), "GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"));
  CHECK(raw_exchange(srv.port(), "POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"pro").empty());
  CHECK(json_of(c.request("GET", "/health"))["status"] == "ok");
  CHECK(c.request("POST", "/v1/completions", R"({"prompt": "still fine", "max_tokens": 2})").status == 200);
}

TEST_CASE("server: API keys keep sessions and checkpoints to the key that made them", "[server]") {
  TestServer srv([](serve::ServerConfig& c) { c.api_keys = {"alice-key", "bob-key"}; });
  const auto alice = srv.client("alice-key"), bob = srv.client("bob-key"), nobody = srv.client(),
             wrong = srv.client("mallory-key");
  CHECK(nobody.request("GET", "/v1/models").status == 401);
  CHECK(json_of(wrong.request("GET", "/v1/models"))["error"]["code"] == "invalid_api_key");
  CHECK(wrong.request("POST", "/v1/completions", R"({"prompt": "x"})").status == 401);
  CHECK(nobody.request("GET", "/health").status == 200);

  const std::string id = json_of(alice.request("POST", "/v1/sessions", R"({"prefix": "secret"})"))["id"];
  const std::string s = "/v1/sessions/" + id;
  CHECK(alice.request("GET", s).status == 200);
  CHECK(bob.request("GET", s).status == 404);
  CHECK(bob.request("POST", s + "/generate", R"({"stream": false})").status == 404);
  CHECK(bob.request("POST", s + "/fork").status == 404);
  CHECK(bob.request("DELETE", s).status == 404);
  CHECK(json_of(bob.request("GET", "/v1/sessions"))["data"].empty());

  const std::string ckpt = json_of(alice.request("POST", s + "/checkpoint"))["id"];
  CHECK(json_of(alice.request("GET", "/v1/checkpoints"))["data"].size() == 1);
  CHECK(json_of(bob.request("GET", "/v1/checkpoints"))["data"].empty());
  CHECK(bob.request("GET", "/v1/checkpoints/" + ckpt).status == 404);
  CHECK(bob.request("DELETE", "/v1/checkpoints/" + ckpt).status == 404);
  CHECK(bob.request("POST", "/v1/sessions/restore", json({{"checkpoint_id", ckpt}}).dump()).status == 404);
  CHECK(alice.request("POST", "/v1/sessions/restore", json({{"checkpoint_id", ckpt}}).dump()).status == 200);
  CHECK(alice.request("GET", "/v1/checkpoints/" + ckpt).status == 200);
}
