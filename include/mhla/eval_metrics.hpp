#pragma once
// LongBench's scoring functions (THUDM/LongBench, restated in docs/cli.md), each returning a
// score in [0, 1] for one prediction against one reference answer. Text is UTF-8; lower-casing
// and punctuation are ASCII, which is what the English data sets need.
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace mhla::eval {

enum class Metric { qa_f1, rouge, classification, retrieval, retrieval_zh, count, code_sim };
std::string_view to_string(Metric metric);

// Lower-case, drop ASCII punctuation, drop the words a/an/the, collapse whitespace.
std::string normalize_answer(std::string_view text);

// Token-multiset F1 of the normalized strings (0 when they share no token).
double qa_f1_score(std::string_view prediction, std::string_view reference);

// ROUGE-L F1 over whitespace-separated words: 2PR/(P+R) with P and R the longest common
// subsequence over the prediction's and the reference's word counts; 0 when either is empty.
double rouge_l_score(std::string_view prediction, std::string_view reference);

// The classes that occur in the prediction as substrings, less any that is a strict substring
// of the reference; 1/count if the reference is among them, else 0.
double classification_score(std::string_view prediction, std::string_view reference,
                            std::span<const std::string> all_classes);

// The reference is "Paragraph N" (English) or "段落N" (Chinese): of all integers in the
// prediction, the fraction equal to N (0 if none). Throws mhla::Error on another reference.
double retrieval_score(std::string_view prediction, std::string_view reference);
double retrieval_zh_score(std::string_view prediction, std::string_view reference);

// Of all integers in the prediction, the fraction equal to the reference (0 if none).
double count_score(std::string_view prediction, std::string_view reference);

// The prediction's first line (leading newlines dropped) holding none of ` # // is compared
// with the reference by the Levenshtein ratio (|a|+|b| - indel distance) / (|a|+|b|) over
// code points; 0 when either side is empty.
double code_sim_score(std::string_view prediction, std::string_view reference);

// The metric LongBench uses for a data set (LongBench and LongBench-E names, and the names of
// the prompt configuration), or nullopt when the harness cannot score it (the Chinese sets that
// need word segmentation, unknown names).
std::optional<Metric> metric_for(std::string_view dataset);

// The score of one sample: for trec, triviaqa, samsum and lsht only the prediction's first line
// (after leading newlines) counts; the best score over the reference answers. Throws
// mhla::Error when the data set has no metric.
double score_sample(std::string_view dataset, std::string_view prediction, std::span<const std::string> answers,
                    std::span<const std::string> all_classes);

}  // namespace mhla::eval
