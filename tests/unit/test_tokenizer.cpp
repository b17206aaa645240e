#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sentencepiece_trainer.h>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unistd.h>
#include <vector>

#include "mhla/error.hpp"
#include "mhla/text_stream.hpp"
#include "mhla/tokenizer.hpp"

namespace fs = std::filesystem;

namespace {

class LineSource : public sentencepiece::SentenceIterator {
public:
  explicit LineSource(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return at_ >= lines_.size(); }
  void Next() override { ++at_; }
  const std::string& value() const override { return lines_[at_]; }
  sentencepiece::util::Status status() const override { return {}; }

private:
  const std::vector<std::string>& lines_;
  std::size_t at_ = 0;
};

std::vector<std::string> corpus() {
  const std::vector<std::string> words{
      "hello", "world", "the",  "model",  "token", "stream", "héllo",    "wörld",  "日本語",
      "✓",     "naïve", "café", "straße", "тест",  "данные", "ελληνικά", "linear", "attention",
      "block", "state", "mixing", "window", "decode", "42",  "3.14",     "a,",     "(b)"};
  std::mt19937 rng(17);
  std::vector<std::string> lines;
  for (int i = 0; i < 400; ++i) {
    std::string line;
    const int n = 4 + int(rng() % 9);
    for (int w = 0; w < n; ++w) line += (w ? " " : "") + words[rng() % words.size()];
    lines.push_back(line);
  }
  return lines;
}

// A freshly trained tiny model per configuration, written once into a private temp folder.
class TrainedModel {
public:
  explicit TrainedModel(const std::string& name, std::map<std::string, std::string> extra) {
    dir_ = fs::temp_directory_path() / ("mhla-tokenizer-test-" + std::to_string(::getpid()) + "-" + name);
    fs::create_directories(dir_);
    std::unordered_map<std::string, std::string> args{
        {"model_prefix", (dir_ / "tok").string()}, {"model_type", "bpe"}, {"vocab_size", "400"},
        {"byte_fallback", "true"}, {"minloglevel", "2"}};
    for (auto& [k, v] : extra) args[k] = v;
    const auto lines = corpus();
    LineSource source(lines);
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &source);
    if (!status.ok()) throw std::runtime_error("training the test tokenizer failed: " + status.ToString());
  }
  ~TrainedModel() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path() const { return (dir_ / "tok.model").string(); }

private:
  fs::path dir_;
};

// The default normalizer (NFKC, extra whitespace removed) and the identity one that
// keeps every space, as LLaMA-style tokenizers do.
const mhla::Tokenizer& tokenizer(bool identity) {
  static const TrainedModel nfkc("nfkc", {});
  static const TrainedModel plain("identity", {{"normalization_rule_name", "identity"},
                                               {"remove_extra_whitespaces", "false"},
                                               {"allow_whitespace_only_pieces", "true"}});
  static const mhla::Tokenizer a = mhla::Tokenizer::load(nfkc.path());
  static const mhla::Tokenizer b = mhla::Tokenizer::load(plain.path());
  return identity ? b : a;
}

// Strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF.
bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                                       : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    if (len > 1) {
      const auto d = static_cast<unsigned char>(s[i + 1]);
      if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) || (c == 0xF4 && d > 0x8F))
        return false;
    }
    i += len;
  }
  return true;
}

// Streams ids after context and checks every piece; returns the concatenation.
std::string stream(const mhla::Tokenizer& tok, const std::vector<int>& context, const std::vector<int>& ids) {
  mhla::TextStream s(tok, context);
  std::string out;
  for (const int id : ids) {
    const std::string piece = s.push(id);
    INFO("piece after id " << id);
    CHECK(valid_utf8(piece));
    out += piece;
  }
  const std::string rest = s.flush();
  CHECK(valid_utf8(rest));
  return out + rest;
}

const std::vector<std::string> kTexts{
    "hello world",
    "héllo wörld 日本語 ✓",
    "naïve café, straße (b) 42 3.14",
    "unseen: € 🙂 ☃ 漢字 and ΩΨ",
    "🙂🙂 x🙂",
    "тест данные ελληνικά attention window",
};

}  // namespace

TEST_CASE("a tokenizer round-trips text, including byte fallback", "[tokenizer]") {
  const bool identity = GENERATE(false, true);
  const auto& tok = tokenizer(identity);
  CHECK(tok.vocab_size() == 400);
  CHECK(tok.bos_id() >= 0);
  CHECK(tok.eos_id() >= 0);

  int byte_tokens = 0;
  for (int id = 0; id < tok.vocab_size(); ++id) byte_tokens += tok.byte_value(id).has_value();
  CHECK(byte_tokens == 256);
  CHECK_FALSE(tok.byte_value(tok.bos_id()));

  for (const auto& text : kTexts) {
    INFO(text);
    const auto ids = tok.encode(text, false);
    CHECK(tok.decode(ids) == text);
  }
  // Characters never seen in training come out as byte tokens.
  const auto smile = tok.encode("🙂", false);
  int bytes = 0;
  for (const int id : smile) bytes += tok.byte_value(id).has_value();
  CHECK(bytes == 4);
}

TEST_CASE("encode prepends BOS on request and decode drops it", "[tokenizer]") {
  const auto& tok = tokenizer(GENERATE(false, true));
  const auto plain = tok.encode("hello world", false);
  const auto with_bos = tok.encode("hello world", true);
  REQUIRE(with_bos.size() == plain.size() + 1);
  CHECK(with_bos.front() == tok.bos_id());
  CHECK(std::vector<int>(with_bos.begin() + 1, with_bos.end()) == plain);
  CHECK(tok.decode(with_bos) == tok.decode(plain));
  CHECK_THROWS_AS(tok.decode(std::vector<int>{tok.vocab_size()}), mhla::Error);
  CHECK_THROWS_AS(tok.decode(std::vector<int>{-1}), mhla::Error);
}

TEST_CASE("loading a missing or corrupt tokenizer names the file", "[tokenizer]") {
  const std::string missing = "/nonexistent/mhla/tokenizer.model";
  CHECK_THROWS_WITH(mhla::Tokenizer::load(missing), Catch::Contains(missing));
  CHECK_THROWS_AS(mhla::Tokenizer::load(missing), mhla::Error);

  const fs::path garbage = fs::temp_directory_path() / ("mhla-garbage-" + std::to_string(::getpid()) + ".model");
  {
    std::ofstream out(garbage, std::ios::binary);
    out << "this is not a sentencepiece model \x01\x02\xff";
  }
  CHECK_THROWS_WITH(mhla::Tokenizer::load(garbage.string()), Catch::Contains(garbage.string()));
  CHECK_THROWS_AS(mhla::Tokenizer::load(garbage.string()), mhla::Error);
  fs::remove(garbage);
}

TEST_CASE("streaming encoded text token by token reproduces the full decode", "[tokenizer][text-stream]") {
  const auto& tok = tokenizer(GENERATE(false, true));
  for (const auto& text : kTexts) {
    INFO(text);
    for (const bool bos : {false, true}) {
      const auto ids = tok.encode(text, bos);
      CHECK(stream(tok, {}, ids) == tok.decode(ids));
    }
  }
}

TEST_CASE("streaming after a prompt renders the continuation as a full decode would", "[tokenizer][text-stream]") {
  const auto& tok = tokenizer(GENERATE(false, true));
  for (const auto& text : kTexts) {
    const auto ids = tok.encode(text, true);
    for (std::size_t cut = 1; cut < ids.size(); ++cut) {
      if (tok.byte_value(ids[cut - 1])) continue;  // a prompt ending inside a character
      const std::vector<int> prompt(ids.begin(), ids.begin() + std::ptrdiff_t(cut));
      const std::vector<int> rest(ids.begin() + std::ptrdiff_t(cut), ids.end());
      INFO(text << " cut at " << cut);
      CHECK(tok.decode(prompt) + stream(tok, prompt, rest) == tok.decode(ids));
    }
  }
}

TEST_CASE("streaming arbitrary token sequences matches the full decode", "[tokenizer][text-stream]") {
  const auto& tok = tokenizer(GENERATE(false, true));
  std::vector<int> byte_ids;
  for (int id = 0; id < tok.vocab_size(); ++id)
    if (tok.byte_value(id)) byte_ids.push_back(id);

  // Half byte tokens, so characters split, complete, break and resume in every way;
  // the rest covers control, unknown and whitespace pieces.
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int> ids(1 + rng() % 40);
    for (auto& id : ids)
      id = rng() % 2 ? byte_ids[rng() % byte_ids.size()] : int(rng() % std::uint32_t(tok.vocab_size()));
    INFO("trial " << trial);
    CHECK(stream(tok, {}, ids) == tok.decode(ids));
  }
}

// SentencePiece drops a leading space while the decoded text is still empty, so a stream
// that restarted its window at a lone space would lose the space of the next word.
TEST_CASE("a lone space piece keeps the next word's space", "[tokenizer][text-stream]") {
  const auto& tok = tokenizer(GENERATE(false, true));
  const auto hello = tok.encode("hello", false);
  int space = -1;
  for (int id = 0; id < tok.vocab_size() && space < 0; ++id) {
    if (tok.byte_value(id)) continue;  // <0x20> decodes to a space too
    auto ids = hello;
    ids.push_back(id);
    if (tok.decode(ids) == "hello ") space = id;
  }
  REQUIRE(space >= 0);
  auto ids = hello;
  ids.push_back(space);
  for (const int id : tok.encode("world hello", false)) ids.push_back(id);
  REQUIRE(tok.decode(ids) == "hello  world hello");
  CHECK(stream(tok, {}, ids) == tok.decode(ids));
}

TEST_CASE("a split multi-byte character is held back until it completes", "[tokenizer][text-stream]") {
  const auto& tok = tokenizer(false);
  const auto ids = tok.encode("x🙂", false);
  mhla::TextStream s(tok, std::vector<int>{tok.bos_id()});
  std::vector<std::string> pieces;
  for (const int id : ids) pieces.push_back(s.push(id));
  REQUIRE(pieces.size() >= 4);
  for (std::size_t i = pieces.size() - 4; i + 1 < pieces.size(); ++i) CHECK(pieces[i].empty());
  CHECK(pieces.back() == "🙂");
  CHECK_THROWS_AS(s.push(tok.vocab_size()), mhla::Error);
  CHECK(s.flush().empty());
  CHECK_THROWS_AS(s.push(ids[0]), mhla::Error);

  mhla::TextStream cut(tok);
  cut.push(ids[ids.size() - 4]);
  CHECK(cut.flush() == "\xEF\xBF\xBD");  // an unfinished character is flushed as U+FFFD
}
