// LongBench's configuration data, as published in the config/ folder of THUDM/LongBench
// (MIT license): dataset2prompt.json (prompt templates) and dataset2maxlen.json (the most tokens
// generated per data set), copied unchanged. `mhla longbench --prompts/--max-gen` replace them.
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mhla/error.hpp"
#include "mhla/eval_longbench.hpp"

namespace mhla::eval {

namespace {

constexpr const char* kDataset2Prompt = R"json({
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "nq": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "passkey_retrieval": "下面有一大段话，中间藏了一段密码，密码的前后有特殊的标识。以密码58926为例，对应的标识如下：\n\n***密码开始***<58926>***密码结束***\n\n下面是这段话，请帮我找出其中的密码。\n\n{context}\n\n现在，请直接给出密码，例如，45331，89765，13299和58926等等。",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n"
})json";

constexpr const char* kDataset2MaxLen = R"json({
    "passage_count": 32,
    "passage_retrieval": 32,
    "trec": 64,
    "nq": 32,
    "triviaqa": 32,
    "hotpotqa": 32,
    "musique": 32,
    "2wikimqa": 32,
    "narrativeqa": 128,
    "qasper": 128,
    "gov_report": 512,
    "qmsum": 512,
    "passkey_retrieval": 32,
    "lsht": 64,
    "dureader": 128,
    "vcsum": 512,
    "multifieldqa_en": 64,
    "multifieldqa_zh": 64,
    "lcc": 64,
    "repobench-p": 64
})json";

nlohmann::json parse(const std::string& text, const std::string& what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{} is not valid JSON: {}", what, e.what()));
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void set_prompts(LongBenchConfig& config, const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) throw Error(fmt::format("{} must map data set names to prompt templates", what));
  config.prompts.clear();
  for (const auto& [name, value] : j.items()) {
    if (!value.is_string()) throw Error(fmt::format("{}: the template of '{}' is not a string", what, name));
    config.prompts[name] = value.get<std::string>();
  }
}

void set_max_gen(LongBenchConfig& config, const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) throw Error(fmt::format("{} must map data set names to token counts", what));
  config.max_gen.clear();
  for (const auto& [name, value] : j.items()) {
    if (!value.is_number_integer() || value.get<long long>() <= 0 || value.get<long long>() > 1 << 20)
      throw Error(fmt::format("{}: the generation length of '{}' must be a positive whole number", what, name));
    config.max_gen[name] = value.get<int>();
  }
}

// A data set's entry: its own name, else the name without LongBench-E's "_e" or the "_en" of
// LongBench's file names (the configuration names passage_retrieval, not passage_retrieval_en).
template <typename Map>
auto find_dataset(const Map& map, std::string_view dataset) {
  auto it = map.find(dataset);
  if (it == map.end() && dataset.ends_with("_e")) it = map.find(dataset.substr(0, dataset.size() - 2));
  if (it == map.end() && dataset.ends_with("_en")) it = map.find(dataset.substr(0, dataset.size() - 3));
  return it;
}

std::string known(const auto& map) {
  std::string names;
  for (const auto& [name, _] : map) names += (names.empty() ? "" : ", ") + name;
  return names;
}

}  // namespace

LongBenchConfig LongBenchConfig::defaults() {
  LongBenchConfig config;
  set_prompts(config, parse(kDataset2Prompt, "the built-in dataset2prompt.json"), "dataset2prompt.json");
  set_max_gen(config, parse(kDataset2MaxLen, "the built-in dataset2maxlen.json"), "dataset2maxlen.json");
  return config;
}

LongBenchConfig LongBenchConfig::load(const std::string& prompts_path, const std::string& max_gen_path) {
  LongBenchConfig config = defaults();
  if (!prompts_path.empty()) set_prompts(config, parse(read_file(prompts_path), prompts_path), prompts_path);
  if (!max_gen_path.empty()) set_max_gen(config, parse(read_file(max_gen_path), max_gen_path), max_gen_path);
  return config;
}

const std::string& LongBenchConfig::prompt(std::string_view dataset) const {
  const auto it = find_dataset(prompts, dataset);
  if (it == prompts.end())
    throw Error(fmt::format("no prompt template for data set '{}' (templates exist for: {}); add one with --prompts",
                            dataset, known(prompts)));
  return it->second;
}

int LongBenchConfig::generation_length(std::string_view dataset) const {
  const auto it = find_dataset(max_gen, dataset);
  if (it == max_gen.end())
    throw Error(fmt::format("no generation length for data set '{}' (lengths exist for: {}); add one with --max-gen",
                            dataset, known(max_gen)));
  return it->second;
}

}  // namespace mhla::eval
