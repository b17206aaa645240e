#pragma once
// Small file helpers for the server's state directory.
#include <string>
#include <string_view>

namespace mhla::serve {

// Writes through a temporary file beside `path`, fsynced, then renamed over it, so a reader
// (or a restart after kill -9) sees the old file or the new one, never a torn one.
// Throws mhla::Error naming the path.
void write_file_atomic(const std::string& path, std::string_view bytes);
// Throws mhla::Error naming the path.
std::string read_file(const std::string& path);

}  // namespace mhla::serve
