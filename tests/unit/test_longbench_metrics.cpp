// LongBench's metrics on cases whose scores are worked out by hand in the comments.
#include <catch2/catch.hpp>

#include "mhla/error.hpp"
#include "mhla/eval_metrics.hpp"

using namespace mhla::eval;

TEST_CASE("normalize_answer lower-cases, drops punctuation and articles, collapses spaces", "[longbench]") {
  CHECK(normalize_answer("The Cat, an  apple!") == "cat apple");
  CHECK(normalize_answer("A theory: the-end.") == "theory theend");  // "the-end" loses '-', stays one word
  CHECK(normalize_answer("  an\tAnswer\n") == "answer");
  CHECK(normalize_answer("") == "");
}

TEST_CASE("qa_f1 is the token-multiset F1 of the normalized strings", "[longbench]") {
  // "cat sat on mat" vs "cat on mat": 3 shared, P = 3/4, R = 1, F1 = 1.5 / 1.75 = 6/7.
  CHECK(qa_f1_score("the cat sat on the mat", "a cat on a mat") == Approx(6.0 / 7.0));
  // Multiset: "yes yes" vs "yes" share one token: P = 1/2, R = 1, F1 = 2/3.
  CHECK(qa_f1_score("yes yes", "yes") == Approx(2.0 / 3.0));
  CHECK(qa_f1_score("Paris.", "paris") == Approx(1.0));
  CHECK(qa_f1_score("London", "Paris") == 0.0);
  CHECK(qa_f1_score("the", "a") == 0.0);  // both normalize to nothing
}

TEST_CASE("rouge_l is the LCS F1 over words", "[longbench]") {
  // 7 and 6 words, LCS "the cat was under the bed" = 6: P = 6/7, R = 1, F = 12/13.
  CHECK(rouge_l_score("the cat was found under the bed", "the cat was under the bed") == Approx(12.0 / 13.0));
  // LCS of "a b c d" and "b d a" is 2 ("b d"): P = 2/4, R = 2/3, F = 2 * (1/2)(2/3) / (7/6) = 4/7.
  CHECK(rouge_l_score("a b c d", "b d a") == Approx(4.0 / 7.0));
  CHECK(rouge_l_score("", "anything") == 0.0);
  CHECK(rouge_l_score("anything", "  ") == 0.0);
  CHECK(rouge_l_score("x y", "z") == 0.0);
}

TEST_CASE("classification drops matched classes that are strict substrings of the reference", "[longbench]") {
  const std::vector<std::string> classes = {"city", "capital city", "country"};
  // "city" occurs but is a strict substring of the reference: only "capital city" counts.
  CHECK(classification_score("capital city", "capital city", classes) == Approx(1.0));
  // Two classes left (capital city, country): 1/2.
  CHECK(classification_score("capital city or country", "capital city", classes) == Approx(0.5));
  CHECK(classification_score("country", "capital city", classes) == 0.0);
  // Against the reference "city", neither "city" nor "capital city" is a strict substring of
  // it, and both occur: 1/2.
  CHECK(classification_score("the capital city", "city", classes) == Approx(0.5));
}

TEST_CASE("retrieval counts the integers that name the paragraph", "[longbench]") {
  CHECK(retrieval_score("Paragraph 12", "Paragraph 12") == Approx(1.0));
  CHECK(retrieval_score("Paragraph 12, not Paragraph 3", "Paragraph 12") == Approx(0.5));
  CHECK(retrieval_score("Paragraph 1 or 2 or 12", "Paragraph 12") == Approx(1.0 / 3.0));
  CHECK(retrieval_score("no idea", "Paragraph 12") == 0.0);
  CHECK_THROWS_AS(retrieval_score("1", "twelve"), mhla::Error);
  CHECK(retrieval_zh_score("段落5", "段落5") == Approx(1.0));
  CHECK(retrieval_zh_score("段落5和段落7", "段落5") == Approx(0.5));
}

TEST_CASE("count is the share of integers equal to the reference", "[longbench]") {
  CHECK(count_score("There are 7 unique paragraphs out of 10", "7") == Approx(0.5));
  CHECK(count_score("7", "7") == Approx(1.0));
  CHECK(count_score("seven", "7") == 0.0);
  CHECK(count_score("17", "7") == 0.0);  // whole numbers, not digits
}

TEST_CASE("code_sim compares the first code line by Levenshtein ratio", "[longbench]") {
  // Comment lines are skipped; "x = foo(1)" vs "x = foo(2)": LCS 9 of 10 + 10 -> 18/20.
  CHECK(code_sim_score("\n# comment\nx = foo(1)\ny = 2", "x = foo(2)") == Approx(0.9));
  CHECK(code_sim_score("```python\nreturn a + b\n```", "return a + b") == Approx(1.0));
  CHECK(code_sim_score("a // b\n", "ab") == 0.0);  // the first line without markers is the empty one
  // "ab" vs "ba": LCS 1 -> 2/4.
  CHECK(code_sim_score("ab", "ba") == Approx(0.5));
  // Code points, not bytes: "é" is one character, so "é" vs "e" shares none and "éa" vs "a" has LCS 1 of 3.
  CHECK(code_sim_score("é", "e") == 0.0);
  CHECK(code_sim_score("éa", "a") == Approx(2.0 / 3.0));
}

TEST_CASE("score_sample keeps the best answer and the first line where LongBench does", "[longbench]") {
  const std::vector<std::string> none;
  CHECK(score_sample("hotpotqa", "cat", std::vector<std::string>{"dog", "cat"}, none) == Approx(1.0));
  const std::vector<std::string> classes = {"Location", "Human being"};
  const std::vector<std::string> location = {"Location"};
  // trec scores the first line only: "Location" alone, 1; the whole text would give 1/2.
  CHECK(score_sample("trec", "\n\nLocation\nHuman being", location, classes) == Approx(1.0));
  CHECK(classification_score("Location\nHuman being", "Location", classes) == Approx(0.5));
  // triviaqa too: the answer on the second line does not count.
  CHECK(score_sample("triviaqa", "I think\nParis", std::vector<std::string>{"Paris"}, none) == 0.0);
  CHECK(score_sample("hotpotqa_e", "Paris", std::vector<std::string>{"Paris"}, none) == Approx(1.0));
  CHECK(score_sample("passage_retrieval_en", "Paragraph 4", std::vector<std::string>{"Paragraph 4"}, none) ==
        Approx(1.0));
  CHECK_THROWS_AS(score_sample("dureader", "x", std::vector<std::string>{"x"}, none), mhla::Error);
  CHECK_FALSE(metric_for("vcsum").has_value());
  CHECK(metric_for("passage_retrieval") == Metric::retrieval);
  CHECK(metric_for("lcc") == Metric::code_sim);
  CHECK(metric_for("gov_report") == Metric::rouge);
}
