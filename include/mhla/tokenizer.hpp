#pragma once
// A SentencePiece tokenizer (the tokenizer.model shipped with MHLA language models).
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mhla {

class Tokenizer {
public:
  // Throws mhla::Error naming the file when it cannot be read or is not a SentencePiece model.
  static Tokenizer load(const std::string& path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_bos prepends bos_id(); throws mhla::Error when the model has no BOS token.
  std::vector<int> encode(std::string_view text, bool add_bos) const;

  // Control tokens (BOS, EOS) decode to nothing; runs of byte-fallback tokens that do not
  // form valid UTF-8 decode to U+FFFD per bad byte. Throws mhla::Error on an id outside
  // the vocabulary.
  std::string decode(std::span<const int> ids) const;

  // The byte a byte-fallback token <0xNN> stands for; nullopt for every other token.
  std::optional<std::uint8_t> byte_value(int id) const;

  int vocab_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;  // -1 when the model has none

private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mhla
