#pragma once
// A file written under a temporary name beside its destination and renamed over it only when
// complete, flushed and fsynced: a crash never leaves a half-written file under the real name.
#include <cstdio>
#include <string>
#include <string_view>

namespace mhla::state_io {

class AtomicFile {
public:
  explicit AtomicFile(std::string path);  // throws mhla::Error when the temporary file cannot be made
  ~AtomicFile();                          // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::string_view bytes);
  // Flush, fsync, rename over the destination, fsync its directory.
  void commit();

private:
  [[noreturn]] void fail(std::string_view why);
  std::string path_;
  std::string tmp_;
  std::FILE* file_ = nullptr;
};

}  // namespace mhla::state_io
