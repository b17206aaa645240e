#include "serve/ids.hpp"

#include <array>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>
#include <sys/random.h>
#include <xxhash.h>

namespace mhla::serve {

namespace {
constexpr std::size_t kRandomBytes = 16;

void random_bytes(unsigned char* out, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = getrandom(out + got, size - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(fmt::format("cannot draw random bytes: {}", std::strerror(errno)));
    }
    got += static_cast<std::size_t>(n);
  }
}

}  // namespace

std::uint64_t random_seed() {
  std::uint64_t seed = 0;
  random_bytes(reinterpret_cast<unsigned char*>(&seed), sizeof seed);
  return seed;
}

std::string random_id(std::string_view prefix) {
  std::array<unsigned char, kRandomBytes> bytes{};
  random_bytes(bytes.data(), bytes.size());
  std::string id(prefix);
  id += '_';
  for (unsigned char b : bytes) id += fmt::format("{:02x}", b);
  return id;
}

bool is_id(std::string_view text, std::string_view prefix) {
  if (text.size() != prefix.size() + 1 + 2 * kRandomBytes || !text.starts_with(prefix) || text[prefix.size()] != '_')
    return false;
  for (char c : text.substr(prefix.size() + 1))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string owner_of(std::string_view api_key) {
  if (api_key.empty()) return {};
  const XXH128_hash_t h = XXH3_128bits(api_key.data(), api_key.size());
  return fmt::format("key_{:016x}{:016x}", h.high64, h.low64);
}

}  // namespace mhla::serve
