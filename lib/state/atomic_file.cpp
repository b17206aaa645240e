#include "state/atomic_file.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fmt/format.h>
#include <unistd.h>

#include "mhla/error.hpp"

namespace mhla::state_io {

namespace {

std::string errno_text() { return std::strerror(errno); }

// Makes the rename itself durable; failing here loses nothing already written.
void sync_directory_of(const std::string& path) {
  const auto dir = std::filesystem::path(path).parent_path();
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  // Same directory as the destination, so the rename is atomic.
  for (int attempt = 0; attempt < 100 && !file_; ++attempt) {
    tmp_ = fmt::format("{}.tmp.{}.{}", path_, ::getpid(), attempt);
    const int fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      throw Error(fmt::format("cannot write '{}': cannot create a temporary file beside it: {}", path_, errno_text()));
    }
    file_ = ::fdopen(fd, "wb");
    if (!file_) {
      const std::string why = errno_text();
      ::close(fd);
      std::remove(tmp_.c_str());
      throw Error(fmt::format("cannot write '{}': {}", path_, why));
    }
  }
  if (!file_) throw Error(fmt::format("cannot write '{}': no free temporary file name beside it", path_));
}

AtomicFile::~AtomicFile() {
  if (!file_) return;
  std::fclose(file_);
  std::remove(tmp_.c_str());
}

void AtomicFile::fail(std::string_view why) {
  const std::string message = fmt::format("cannot write '{}': {}", path_, why);
  std::fclose(file_);
  file_ = nullptr;
  std::remove(tmp_.c_str());
  throw Error(message);
}

void AtomicFile::write(std::string_view bytes) {
  if (!file_) throw Error(fmt::format("internal: '{}' is already closed", path_));
  if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) fail(errno_text());
}

void AtomicFile::commit() {
  if (!file_) throw Error(fmt::format("internal: '{}' is already closed", path_));
  // fflush and fsync catch the write errors the OS reports late (disk full).
  if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) fail(errno_text());
  const int closed = std::fclose(file_);
  file_ = nullptr;
  if (closed != 0 || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string why = errno_text();
    std::remove(tmp_.c_str());
    throw Error(fmt::format("cannot write '{}': {}", path_, why));
  }
  sync_directory_of(path_);
}

}  // namespace mhla::state_io
