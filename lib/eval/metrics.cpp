// LongBench's metrics (THUDM/LongBench, MIT license), written from the description of its
// scoring rules.
#include "mhla/eval_metrics.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <map>
#include <vector>

#include "mhla/error.hpp"

namespace mhla::eval {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_punct(char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
}
// A "word" character of Python's \b for this purpose: ASCII letters and digits, and every byte
// of a non-ASCII character (letters in the text LongBench scores).
bool is_word(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_space(text[i])) ++i;
    const size_t start = i;
    while (i < text.size() && !is_space(text[i])) ++i;
    if (i > start) words.emplace_back(text.substr(start, i - start));
  }
  return words;
}

std::vector<std::string> integers(std::string_view text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    if (!is_digit(text[i])) {
      ++i;
      continue;
    }
    const size_t start = i;
    while (i < text.size() && is_digit(text[i])) ++i;
    out.emplace_back(text.substr(start, i - start));
  }
  return out;
}

double fraction_equal(const std::vector<std::string>& numbers, std::string_view target) {
  if (numbers.empty()) return 0.0;
  const auto right = std::count(numbers.begin(), numbers.end(), target);
  return static_cast<double>(right) / static_cast<double>(numbers.size());
}

// Length of the longest common subsequence of two sequences.
template <typename T>
size_t lcs_length(const std::vector<T>& a, const std::vector<T>& b) {
  std::vector<size_t> row(b.size() + 1, 0);
  for (const T& x : a) {
    size_t diagonal = 0;
    for (size_t j = 0; j < b.size(); ++j) {
      const size_t above = row[j + 1];
      row[j + 1] = x == b[j] ? diagonal + 1 : std::max(row[j + 1], row[j]);
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Code points of UTF-8 text; a byte that starts no valid sequence stands for itself.
std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t extra = b >= 0xF0 && b < 0xF8 ? 3 : b >= 0xE0 && b < 0xF0 ? 2 : b >= 0xC0 && b < 0xE0 ? 1 : 0;
    char32_t cp = extra == 0 ? b : b & (0x3Fu >> extra);
    bool ok = i + extra < s.size();
    for (size_t k = 1; ok && k <= extra; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      ok = (c & 0xC0u) == 0x80u;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    out.push_back(ok ? cp : b);
    i += ok ? extra + 1 : 1;
  }
  return out;
}

std::string_view first_line(std::string_view text) {
  const size_t start = text.find_first_not_of('\n');
  if (start == std::string_view::npos) return {};
  text.remove_prefix(start);
  return text.substr(0, text.find('\n'));
}

double paragraph_retrieval(std::string_view prediction, std::string_view reference, std::string_view marker) {
  const size_t at = reference.find(marker);
  const size_t digits = at == std::string_view::npos ? at : at + marker.size();
  if (digits == std::string_view::npos || digits >= reference.size() || !is_digit(reference[digits]))
    throw Error(fmt::format("retrieval reference '{}' does not name a paragraph as '{}N'", reference, marker));
  size_t end = digits;
  while (end < reference.size() && is_digit(reference[end])) ++end;
  return fraction_equal(integers(prediction), reference.substr(digits, end - digits));
}

}  // namespace

std::string_view to_string(Metric metric) {
  switch (metric) {
    case Metric::qa_f1:
      return "qa_f1";
    case Metric::rouge:
      return "rouge";
    case Metric::classification:
      return "classification";
    case Metric::retrieval:
      return "retrieval";
    case Metric::retrieval_zh:
      return "retrieval_zh";
    case Metric::count:
      return "count";
    case Metric::code_sim:
      return "code_sim";
  }
  return "?";
}

std::string normalize_answer(std::string_view text) {
  std::string kept;
  kept.reserve(text.size());
  for (const char c : text) {
    if (is_punct(c)) continue;
    kept.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  }
  // Articles become a space (a word boundary on both sides), as re.sub(r"\b(a|an|the)\b", " ").
  std::string words;
  size_t i = 0;
  while (i < kept.size()) {
    if (!is_word(kept[i])) {
      words.push_back(kept[i++]);
      continue;
    }
    const size_t start = i;
    while (i < kept.size() && is_word(kept[i])) ++i;
    const std::string_view word(kept.data() + start, i - start);
    if (word == "a" || word == "an" || word == "the")
      words.push_back(' ');
    else
      words.append(word);
  }
  std::string out;
  for (const auto& w : split_words(words)) {
    if (!out.empty()) out.push_back(' ');
    out += w;
  }
  return out;
}

double qa_f1_score(std::string_view prediction, std::string_view reference) {
  const auto pred = split_words(normalize_answer(prediction));
  const auto ref = split_words(normalize_answer(reference));
  std::map<std::string, int> counts;
  for (const auto& w : ref) ++counts[w];
  long same = 0;
  for (const auto& w : pred) {
    auto it = counts.find(w);
    if (it != counts.end() && it->second > 0) {
      --it->second;
      ++same;
    }
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(pred.size());
  const double recall = static_cast<double>(same) / static_cast<double>(ref.size());
  return 2 * precision * recall / (precision + recall);
}

double rouge_l_score(std::string_view prediction, std::string_view reference) {
  const auto pred = split_words(prediction);
  const auto ref = split_words(reference);
  if (pred.empty() || ref.empty()) return 0.0;
  const auto lcs = static_cast<double>(lcs_length(pred, ref));
  if (lcs == 0) return 0.0;
  const double precision = lcs / static_cast<double>(pred.size());
  const double recall = lcs / static_cast<double>(ref.size());
  return 2 * precision * recall / (precision + recall);
}

double classification_score(std::string_view prediction, std::string_view reference,
                            std::span<const std::string> all_classes) {
  std::vector<std::string_view> matches;
  for (const auto& c : all_classes) {
    if (prediction.find(c) == std::string_view::npos) continue;
    if (c != reference && reference.find(c) != std::string_view::npos) continue;  // strict substring
    matches.push_back(c);
  }
  if (std::find(matches.begin(), matches.end(), reference) == matches.end()) return 0.0;
  return 1.0 / static_cast<double>(matches.size());
}

double retrieval_score(std::string_view prediction, std::string_view reference) {
  return paragraph_retrieval(prediction, reference, "Paragraph ");
}

double retrieval_zh_score(std::string_view prediction, std::string_view reference) {
  return paragraph_retrieval(prediction, reference, "段落");
}

double count_score(std::string_view prediction, std::string_view reference) {
  return fraction_equal(integers(prediction), reference);
}

double code_sim_score(std::string_view prediction, std::string_view reference) {
  std::string_view line;
  std::string_view rest = prediction.substr(std::min(prediction.size(), prediction.find_first_not_of('\n')));
  while (true) {
    const size_t end = rest.find('\n');
    const std::string_view candidate = rest.substr(0, end);
    if (candidate.find('`') == std::string_view::npos && candidate.find('#') == std::string_view::npos &&
        candidate.find("//") == std::string_view::npos) {
      line = candidate;
      break;
    }
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end + 1);
  }
  const auto a = code_points(line), b = code_points(reference);
  if (a.empty() || b.empty()) return 0.0;
  return 2.0 * static_cast<double>(lcs_length(a, b)) / static_cast<double>(a.size() + b.size());
}

std::optional<Metric> metric_for(std::string_view dataset) {
  if (dataset.ends_with("_e")) dataset.remove_suffix(2);  // LongBench-E file names
  static const std::map<std::string, Metric, std::less<>> metrics = {
      {"narrativeqa", Metric::qa_f1},
      {"qasper", Metric::qa_f1},
      {"multifieldqa_en", Metric::qa_f1},
      {"hotpotqa", Metric::qa_f1},
      {"2wikimqa", Metric::qa_f1},
      {"musique", Metric::qa_f1},
      {"triviaqa", Metric::qa_f1},
      {"nq", Metric::qa_f1},
      {"gov_report", Metric::rouge},
      {"qmsum", Metric::rouge},
      {"multi_news", Metric::rouge},
      {"samsum", Metric::rouge},
      {"trec", Metric::classification},
      {"lsht", Metric::classification},
      {"passage_retrieval_en", Metric::retrieval},
      {"passage_retrieval", Metric::retrieval},
      {"passage_retrieval_zh", Metric::retrieval_zh},
      {"passage_count", Metric::count},
      {"lcc", Metric::code_sim},
      {"repobench-p", Metric::code_sim},
  };
  const auto it = metrics.find(dataset);
  if (it == metrics.end()) return std::nullopt;
  return it->second;
}

double score_sample(std::string_view dataset, std::string_view prediction, std::span<const std::string> answers,
                    std::span<const std::string> all_classes) {
  const auto metric = metric_for(dataset);
  if (!metric)
    throw Error(
        fmt::format("no metric for data set '{}': the harness scores LongBench's English sets, lsht and "
                    "passage_retrieval_zh (the other Chinese sets need word segmentation)",
                    dataset));
  std::string_view base = dataset.ends_with("_e") ? dataset.substr(0, dataset.size() - 2) : dataset;
  if (base == "trec" || base == "triviaqa" || base == "samsum" || base == "lsht") prediction = first_line(prediction);
  double best = 0.0;
  for (const auto& answer : answers) {
    double s = 0.0;
    switch (*metric) {
      case Metric::qa_f1:
        s = qa_f1_score(prediction, answer);
        break;
      case Metric::rouge:
        s = rouge_l_score(prediction, answer);
        break;
      case Metric::classification:
        s = classification_score(prediction, answer, all_classes);
        break;
      case Metric::retrieval:
        s = retrieval_score(prediction, answer);
        break;
      case Metric::retrieval_zh:
        s = retrieval_zh_score(prediction, answer);
        break;
      case Metric::count:
        s = count_score(prediction, answer);
        break;
      case Metric::code_sim:
        s = code_sim_score(prediction, answer);
        break;
    }
    best = std::max(best, s);
  }
  return best;
}

}  // namespace mhla::eval
