#pragma once
// Turning generated token ids into text as they arrive, one UTF-8-safe piece at a time.
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mhla {

class Tokenizer;

// Length of the longest prefix of `bytes` that does not end inside an unfinished UTF-8
// character: only a trailing lead byte followed by fewer continuation bytes than it
// announces (and that could still become a valid character) is cut. Bytes that can
// never form a valid character count as finished, since more input cannot change them.
std::size_t utf8_complete_prefix(std::string_view bytes);

// The concatenation of everything push() and flush() return equals the text of decoding
// the context and all pushed ids at once, minus the context's own text; no returned piece
// splits a character. SentencePiece renders an unfinished byte-fallback sequence as
// U+FFFD, so such trailing <0xNN> tokens are held back until their character completes.
// The leading space of the first word is dropped only where a full decode drops it.
class TextStream {
public:
  // context: ids already shown (the prompt); their text is not returned, but they decide
  // how the first generated token renders (for instance whether its leading space shows).
  // The tokenizer must outlive the stream.
  explicit TextStream(const Tokenizer& tokenizer, std::span<const int> context = {});

  // The text completed by id (often empty while a character is incomplete). Throws
  // mhla::Error on an id outside the vocabulary.
  std::string push(int id);

  // Ends the stream: the held-back rest, with U+FFFD for bytes that never completed a
  // character. push() after flush() throws mhla::Error.
  std::string flush();

private:
  std::size_t ready() const;
  std::string advance(std::size_t upto);  // returns the text of ids_[read_, upto)

  const Tokenizer* tokenizer_;
  std::vector<int> ids_;
  // Decoding is windowed so each push costs O(window), not O(all ids): the window starts
  // at start_ and its ids up to read_ decode to shown_, whose text has been returned (or
  // belongs to the context). A window starts only where shown_ is non-empty, because
  // SentencePiece treats a leading space differently while the text so far is empty.
  std::size_t start_ = 0;
  std::size_t read_ = 0;
  std::string shown_;
  bool flushed_ = false;
};

}  // namespace mhla
