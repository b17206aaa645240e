// GET / and the chat page's other files, from the bytes compiled into the server
// (serve/web_assets.hpp). Every other path outside /v1 stays a 404 with an API error body.
#include <algorithm>
#include <fmt/format.h>
#include <xxhash.h>

#include "serve/router.hpp"
#include "serve/web_assets.hpp"

namespace mhla::serve {

namespace {

constexpr std::string_view kIndex = "index.html";

std::string content_type(std::string_view name) {
  static const std::pair<std::string_view, std::string_view> types[] = {
      {".html", "text/html; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".svg", "image/svg+xml"},
  };
  for (const auto& [ext, type] : types)
    if (name.ends_with(ext)) return std::string(type);
  return "application/octet-stream";
}

// The page's files have fixed names, so a browser must revalidate them ("no-cache"); the
// ETag, a hash of the bytes, makes that a 304 until the server binary changes.
std::string etag(std::string_view bytes) { return fmt::format("\"{:016x}\"", XXH3_64bits(bytes.data(), bytes.size())); }

bool matches(std::string_view if_none_match, std::string_view tag) {
  return if_none_match == "*" || if_none_match.find(tag) != std::string_view::npos;
}

}  // namespace

Reply handle_web(const HttpRequest& req, const std::vector<std::string>& path, std::string& route) {
  const std::string_view name = path.empty() ? kIndex : std::string_view(path.front());
  const auto assets = web_assets();
  const auto it = std::find_if(assets.begin(), assets.end(), [&](const WebAsset& a) { return a.name == name; });
  if (path.size() > 1 || it == assets.end())
    throw not_found(fmt::format("no endpoint {} {}; see docs/http-api.md", req.method, req.target));
  route = path.empty() ? "/" : "/{file}";
  if (req.method != "GET")
    throw ApiError(405, fmt::format("{} is not allowed here; use GET", req.method), {}, "method_not_allowed");

  Reply r;
  const std::string tag = etag(it->bytes);
  r.headers = {{"Cache-Control", "no-cache"}, {"ETag", tag}, {"X-Content-Type-Options", "nosniff"}};
  if (name == kIndex) {
    // Everything the page uses comes from this server; nothing else may run or load.
    r.headers.emplace_back("Content-Security-Policy",
                           "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    r.headers.emplace_back("Referrer-Policy", "no-referrer");
  }
  if (matches(req.if_none_match, tag)) {
    r.status = 304;
    r.content_type.clear();  // no body
    return r;
  }
  r.content_type = content_type(name);
  r.body = std::string(it->bytes);
  return r;
}

}  // namespace mhla::serve
