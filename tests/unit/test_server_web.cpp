// The chat page's files as mhla-server serves them: the right types, revalidation through
// ETags, a content security policy that keeps the page to this server, and 404s unchanged
// for every other path (the API's own included).
#include <catch2/catch.hpp>

#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

void check_not_found(const serve::HttpClient& c, const std::string& method, const std::string& target) {
  const auto r = c.request(method, target);
  INFO(method << " " << target << " -> " << r.body);
  CHECK(r.status == 404);
  CHECK(r.content_type == "application/json");
  const json e = json_of(r)["error"];
  CHECK(e["type"] == "not_found_error");
  CHECK_THAT(e["message"].get<std::string>(), Catch::Contains("no endpoint"));
}

}  // namespace

TEST_CASE("server: the chat page and its files are served with their types and cache headers", "[server][web]") {
  TestServer srv;
  const auto c = srv.client();

  const auto page = c.request("GET", "/");
  REQUIRE(page.status == 200);
  CHECK(page.content_type == "text/html; charset=utf-8");
  CHECK_THAT(page.body, Catch::Contains("<title>mhla chat</title>") && Catch::Contains("src=\"chat.js\""));
  CHECK(page.headers.at("cache-control") == "no-cache");
  CHECK(page.headers.at("x-content-type-options") == "nosniff");
  CHECK_THAT(page.headers.at("content-security-policy"),
             Catch::Contains("default-src 'none'") && Catch::Contains("connect-src 'self'"));
  CHECK(c.request("GET", "/index.html").body == page.body);
  CHECK(c.request("GET", "/?from=bookmark").body == page.body);

  const std::pair<const char*, const char*> files[] = {
      {"/chat.js", "text/javascript; charset=utf-8"},  {"/api.js", "text/javascript; charset=utf-8"},
      {"/view.js", "text/javascript; charset=utf-8"},  {"/settings.js", "text/javascript; charset=utf-8"},
      {"/chat.css", "text/css; charset=utf-8"},        {"/favicon.svg", "image/svg+xml"},
  };
  for (const auto& [path, type] : files) {
    INFO(path);
    const auto r = c.request("GET", path);
    CHECK(r.status == 200);
    CHECK(r.content_type == type);
    CHECK_FALSE(r.body.empty());
    CHECK(r.headers.at("cache-control") == "no-cache");
    CHECK(r.headers.count("content-security-policy") == 0);
  }
  // Every module the page imports is one of them.
  const std::string script = c.request("GET", "/chat.js").body;
  for (const char* module : {"./api.js", "./view.js", "./settings.js"}) CHECK_THAT(script, Catch::Contains(module));

  // Revalidation: the same bytes give the same ETag, and a browser holding them gets a 304.
  const std::string tag = page.headers.at("etag");
  CHECK(tag.size() == 18);
  CHECK(c.request("GET", "/").headers.at("etag") == tag);
  CHECK(c.request("GET", "/chat.js").headers.at("etag") != tag);
  const auto cached = c.request("GET", "/", {}, {}, {{"If-None-Match", tag}});
  CHECK(cached.status == 304);
  CHECK(cached.body.empty());
  CHECK(cached.headers.at("etag") == tag);
  CHECK(c.request("GET", "/", {}, {}, {{"If-None-Match", "\"0000000000000000\""}}).status == 200);

  // Everything else outside /v1 is still a 404 with an API error, and so is an unknown API path.
  for (const char* path : {"/nope.js", "/favicon.ico", "/chat.js/more", "/index.htm", "/.."}) check_not_found(c, "GET", path);
  for (const char* path : {"/v1", "/v1/nope", "/v1/index.html", "/v1/chat.js"}) check_not_found(c, "GET", path);
  check_not_found(c, "POST", "/nope");

  const auto post = c.request("POST", "/", "{}");
  CHECK(post.status == 405);
  CHECK(json_of(post)["error"]["code"] == "method_not_allowed");
  CHECK(metric_value(c, "mhla_requests_total{route=\"/\",status=\"200\"}") >= 3);
}

TEST_CASE("server: the chat page needs no API key, the API it calls does", "[server][web]") {
  TestServer srv([](serve::ServerConfig& cfg) { cfg.api_keys = {"page-key"}; });
  const auto anonymous = srv.client();
  CHECK(anonymous.request("GET", "/").status == 200);
  CHECK(anonymous.request("GET", "/chat.js").status == 200);
  CHECK(anonymous.request("GET", "/v1/models").status == 401);
  CHECK(srv.client("page-key").request("GET", "/v1/models").status == 200);
}
