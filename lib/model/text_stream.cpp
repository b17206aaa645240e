#include "mhla/text_stream.hpp"

#include <fmt/format.h>

#include "mhla/error.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla {

namespace {

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// Bytes a character starting with `lead` takes, or 0 when `lead` cannot start one of
// two or more bytes.
std::size_t sequence_length(unsigned char lead) {
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// The second byte ranges that keep a sequence free of overlong forms, surrogates and
// code points past U+10FFFF.
bool valid_second(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return is_continuation(b);
  }
}

}  // namespace

std::size_t utf8_complete_prefix(std::string_view bytes) {
  const std::size_t n = bytes.size();
  std::size_t lead = n;  // position of the last byte that is not a continuation byte
  while (lead > 0 && n - lead < 3 && is_continuation(static_cast<unsigned char>(bytes[lead - 1]))) --lead;
  if (lead == 0) return n;
  --lead;
  const auto first = static_cast<unsigned char>(bytes[lead]);
  const std::size_t need = sequence_length(first);
  const std::size_t have = n - lead;
  if (have >= need) return n;
  if (have >= 2 && !valid_second(first, static_cast<unsigned char>(bytes[lead + 1]))) return n;
  return lead;
}

TextStream::TextStream(const Tokenizer& tokenizer, std::span<const int> context)
    : tokenizer_(&tokenizer), ids_(context.begin(), context.end()) {
  read_ = ready();
  shown_ = tokenizer_->decode(std::span(ids_).first(read_));
}

std::string TextStream::push(int id) {
  if (flushed_) throw Error("text stream: push after flush");
  if (id < 0 || id >= tokenizer_->vocab_size())
    throw Error(fmt::format("text stream: token {} is outside the vocabulary of {}", id, tokenizer_->vocab_size()));
  ids_.push_back(id);
  return advance(ready());
}

std::string TextStream::flush() {
  std::string rest = advance(ids_.size());
  flushed_ = true;
  return rest;
}

// How many ids can be decoded now: all but trailing byte-fallback tokens that begin a
// character still waiting for bytes.
std::size_t TextStream::ready() const {
  std::string tail;
  for (std::size_t i = ids_.size(); i > 0 && tail.size() < 4; --i) {
    const auto b = tokenizer_->byte_value(ids_[i - 1]);
    if (!b) break;
    tail.insert(tail.begin(), char(*b));
  }
  return ids_.size() - (tail.size() - utf8_complete_prefix(tail));
}

std::string TextStream::advance(std::size_t upto) {
  if (upto <= read_) return {};
  const std::span<const int> ids(ids_);
  std::string text = tokenizer_->decode(ids.subspan(start_, upto - start_));
  if (!text.starts_with(shown_))
    throw Error("text stream: the tokenizer's decoding is not incremental (earlier text changed)");
  std::string fresh = text.substr(shown_.size());

  // Restart the window at the ids just read when they make text on their own.
  std::string window = tokenizer_->decode(ids.subspan(read_, upto - read_));
  if (window.empty()) {
    shown_ = std::move(text);
  } else {
    start_ = read_;
    shown_ = std::move(window);
  }
  read_ = upto;
  return fresh;
}

}  // namespace mhla
