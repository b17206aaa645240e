#pragma once
// Identifiers clients hold: unguessable (128 random bits from the kernel), and recognizable by
// their prefix so a path segment can be checked before it names a file.
#include <cstdint>
#include <string>
#include <string_view>

namespace mhla::serve {

// prefix + "_" + 32 lowercase hex digits.
std::string random_id(std::string_view prefix);
// Whether text has exactly that shape (so it is safe as a file name).
bool is_id(std::string_view text, std::string_view prefix);

// 64 random bits, for samplers seeded by the server.
std::uint64_t random_seed();

// Who owns sessions and checkpoints: "" without API keys, else a digest of the key (keys
// themselves are never stored).
std::string owner_of(std::string_view api_key);

}  // namespace mhla::serve
