// LongBench samples, prompts and middle truncation.
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mhla/error.hpp"
#include "mhla/eval_longbench.hpp"

namespace mhla::eval {

namespace {

std::string text_field(const nlohmann::json& j, const char* key, bool required) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw Error(fmt::format("field '{}' is missing", key));
    return {};
  }
  if (!it->is_string()) throw Error(fmt::format("field '{}' is not a string", key));
  return it->get<std::string>();
}

std::vector<std::string> list_field(const nlohmann::json& j, const char* key, bool required) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw Error(fmt::format("field '{}' is missing", key));
    return {};
  }
  if (!it->is_array()) throw Error(fmt::format("field '{}' is not a list", key));
  std::vector<std::string> out;
  for (const auto& item : *it) {
    if (!item.is_string()) throw Error(fmt::format("field '{}' holds something other than strings", key));
    out.push_back(item.get<std::string>());
  }
  return out;
}

LongBenchSample parse_sample(const std::string& line) {
  const auto j = nlohmann::json::parse(line);
  if (!j.is_object()) throw Error("the line is not a JSON object");
  LongBenchSample s;
  s.id = text_field(j, "_id", false);
  s.dataset = text_field(j, "dataset", true);
  s.language = text_field(j, "language", false);
  s.input = text_field(j, "input", true);
  s.context = text_field(j, "context", true);
  s.answers = list_field(j, "answers", true);
  if (s.answers.empty()) throw Error("field 'answers' is empty");
  s.all_classes = list_field(j, "all_classes", false);
  if (const auto it = j.find("length"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) throw Error("field 'length' is not a whole number");
    s.length = it->get<long long>();
  }
  return s;
}

}  // namespace

std::vector<LongBenchSample> read_longbench(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}", path));
  std::vector<LongBenchSample> samples;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      samples.push_back(parse_sample(line));
    } catch (const nlohmann::json::exception& e) {
      throw Error(
          fmt::format("{}:{}: not a JSON object ({}); expected one LongBench sample per line", path, number, e.what()));
    } catch (const Error& e) {
      throw Error(fmt::format("{}:{}: {}; expected LongBench's fields input, context, answers, dataset", path, number,
                              e.what()));
    }
  }
  if (samples.empty()) throw Error(fmt::format("{} holds no samples", path));
  return samples;
}

std::string build_prompt(std::string_view prompt_template, const LongBenchSample& sample) {
  std::string out;
  out.reserve(prompt_template.size() + sample.context.size() + sample.input.size());
  size_t at = 0;
  while (at < prompt_template.size()) {
    const size_t open = prompt_template.find('{', at);
    if (open == std::string_view::npos) break;
    out.append(prompt_template.substr(at, open - at));
    const std::string_view rest = prompt_template.substr(open);
    if (rest.starts_with("{context}")) {
      out += sample.context;
      at = open + 9;
    } else if (rest.starts_with("{input}")) {
      out += sample.input;
      at = open + 7;
    } else {
      out.push_back('{');
      at = open + 1;
    }
  }
  if (at < prompt_template.size()) out.append(prompt_template.substr(at));
  return out;
}

std::vector<int> middle_truncate(std::span<const int> tokens, long long max_length) {
  if (max_length < 2)
    throw Error(fmt::format("the maximum prompt length must be at least 2 tokens, got {}", max_length));
  if (static_cast<long long>(tokens.size()) <= max_length) return {tokens.begin(), tokens.end()};
  const auto half = static_cast<size_t>(max_length / 2);
  std::vector<int> out(tokens.begin(), tokens.begin() + static_cast<long>(half));
  out.insert(out.end(), tokens.end() - static_cast<long>(half), tokens.end());
  return out;
}

}  // namespace mhla::eval
