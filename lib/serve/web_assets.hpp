#pragma once
// The chat page's files (lib/serve/web), compiled into the server so it needs nothing beside
// its binary: web/web_assets.cmake generates their bytes into a C++ source at build time.
#include <span>
#include <string_view>

namespace mhla::serve {

struct WebAsset {
  std::string_view name;  // the file's name in lib/serve/web, e.g. "chat.js"
  std::string_view bytes;
};

std::span<const WebAsset> web_assets();

}  // namespace mhla::serve
