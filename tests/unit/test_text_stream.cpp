#include <catch2/catch.hpp>

#include <string>

#include "mhla/text_stream.hpp"

using mhla::utf8_complete_prefix;

TEST_CASE("utf8_complete_prefix cuts only an unfinished trailing character", "[text-stream]") {
  CHECK(utf8_complete_prefix("") == 0);
  CHECK(utf8_complete_prefix("abc") == 3);
  CHECK(utf8_complete_prefix("h\xC3") == 1);
  CHECK(utf8_complete_prefix("h\xC3\xA9") == 3);
  CHECK(utf8_complete_prefix("\xE6\x97") == 0);
  CHECK(utf8_complete_prefix("\xE6\x97\xA5") == 3);
  CHECK(utf8_complete_prefix("a\xF0") == 1);
  CHECK(utf8_complete_prefix("a\xF0\x9F\x99") == 1);
  CHECK(utf8_complete_prefix("a\xF0\x9F\x99\x82") == 5);
}

TEST_CASE("utf8_complete_prefix lets bytes that can never complete through", "[text-stream]") {
  CHECK(utf8_complete_prefix("\x80") == 1);              // a lone continuation byte
  CHECK(utf8_complete_prefix("a\x80\x80\x80\x80") == 5);  // more continuations than any lead takes
  CHECK(utf8_complete_prefix("\xFF") == 1);              // never a lead byte
  CHECK(utf8_complete_prefix("\xC0") == 1);              // only overlong forms start with C0
  CHECK(utf8_complete_prefix("\xE0\x80") == 2);          // overlong
  CHECK(utf8_complete_prefix("\xED\xA0") == 2);          // surrogate
  CHECK(utf8_complete_prefix("\xF4\x90") == 2);          // past U+10FFFF
  CHECK(utf8_complete_prefix("\xC3\xA9\xA9") == 3);      // a stray continuation after a character
}

TEST_CASE("utf8_complete_prefix finds the last character boundary of every prefix", "[text-stream]") {
  const std::string text = "a\xC3\xA9\xE6\x97\xA5\xF0\x9F\x99\x82z\xE2\x9C\x93";  // a é 日 🙂 z ✓
  const std::size_t boundaries[] = {0, 1, 3, 6, 10, 11, 14};
  for (std::size_t len = 0; len <= text.size(); ++len) {
    std::size_t expected = 0;
    for (const std::size_t b : boundaries)
      if (b <= len) expected = b;
    INFO("prefix length " << len);
    CHECK(utf8_complete_prefix(std::string_view(text).substr(0, len)) == expected);
  }
}
