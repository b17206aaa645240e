#include "mhla/tokenizer.hpp"

#include <charconv>
#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include "mhla/error.hpp"

namespace mhla {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::vector<std::int16_t> byte_of;  // per id: the byte of a <0xNN> token, else -1
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  const auto status = impl->sp.Load(path);
  if (!status.ok())
    throw Error(fmt::format("cannot load tokenizer '{}': {}", path, status.ToString()));
  const int n = impl->sp.GetPieceSize();
  if (n <= 0) throw Error(fmt::format("tokenizer '{}' has an empty vocabulary", path));
  impl->byte_of.assign(std::size_t(n), -1);
  for (int id = 0; id < n; ++id) {
    if (!impl->sp.IsByte(id)) continue;
    // Byte-fallback pieces are spelled <0xNN>.
    const std::string& piece = impl->sp.IdToPiece(id);
    unsigned value = 0;
    const bool ok = piece.size() == 6 && piece.starts_with("<0x") && piece.back() == '>' &&
                    std::from_chars(piece.data() + 3, piece.data() + 5, value, 16).ptr == piece.data() + 5;
    if (!ok) throw Error(fmt::format("tokenizer '{}': byte token {} is spelled '{}'", path, id, piece));
    impl->byte_of[std::size_t(id)] = std::int16_t(value);
  }
  return Tokenizer(std::move(impl));
}

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(text, &ids);
  if (!status.ok()) throw Error(fmt::format("tokenizer: cannot encode text: {}", status.ToString()));
  if (add_bos) {
    if (bos_id() < 0) throw Error("tokenizer: the model has no BOS token to prepend");
    ids.insert(ids.begin(), bos_id());
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const int> ids) const {
  for (const int id : ids)
    if (id < 0 || id >= vocab_size())
      throw Error(fmt::format("tokenizer: token {} is outside the vocabulary of {}", id, vocab_size()));
  std::string text;
  const auto status = impl_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!status.ok()) throw Error(fmt::format("tokenizer: cannot decode: {}", status.ToString()));
  return text;
}

std::optional<std::uint8_t> Tokenizer::byte_value(int id) const {
  if (id < 0 || id >= vocab_size() || impl_->byte_of[std::size_t(id)] < 0) return std::nullopt;
  return std::uint8_t(impl_->byte_of[std::size_t(id)]);
}

int Tokenizer::vocab_size() const { return int(impl_->byte_of.size()); }
int Tokenizer::bos_id() const { return impl_->sp.bos_id(); }
int Tokenizer::eos_id() const { return impl_->sp.eos_id(); }

}  // namespace mhla
