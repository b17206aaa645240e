#include "serve/formats.hpp"

#include <chrono>
#include <fmt/format.h>

#include "serve/ids.hpp"

namespace mhla::serve {

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

std::string sse_record(const nlohmann::json& j, const std::string& event) {
  std::string out;
  if (!event.empty()) out += "event: " + event + "\n";
  return out + "data: " + dump(j) + "\n\n";
}

nlohmann::json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

nlohmann::json progress_json(const Progress& p) {
  return {{"object", "prefill.progress"}, {"prefilled", p.done}, {"total", p.total}};
}

class CompletionFormat final : public EventFormat {
public:
  CompletionFormat(CompletionFormatOptions o, const Tokenizer* tokenizer)
      : o_(std::move(o)),
        tokenizer_(tokenizer),
        id_(random_id(o_.chat ? "chatcmpl" : "cmpl")),
        created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                     .count()),
        choices_(static_cast<size_t>(o_.n)) {}

  std::string sse(const Event& e) override {
    std::string out;
    if (const auto* p = std::get_if<Progress>(&e)) return sse_record(progress_json(*p), "progress");
    if (const auto* t = std::get_if<Token>(&e)) {
      State& c = choices_[static_cast<size_t>(t->choice)];
      const std::string text = visible(c, t->text);
      out += sse_record(chunk(t->choice, text, {t->id}, t->logprob ? logprobs_json(*t, c) : nlohmann::json(), nullptr));
      c.text += text;
      return out;
    }
    if (const auto* f = std::get_if<Finished>(&e)) {
      State& c = choices_[static_cast<size_t>(f->choice)];
      const std::string text = visible(c, f->text);
      c.finish = f->reason;
      return sse_record(chunk(f->choice, text, {}, nullptr, f->reason));
    }
    if (const auto* d = std::get_if<Done>(&e)) {
      for (size_t i = 0; i < choices_.size(); ++i)
        if (choices_[i].finish.empty()) {
          choices_[i].finish = "cancelled";
          out += sse_record(chunk(static_cast<int>(i), "", {}, nullptr, "cancelled"));
        }
      if (o_.include_usage) {
        nlohmann::json u = envelope();
        u["choices"] = nlohmann::json::array();
        u["usage"] = usage_json(d->usage);
        out += sse_record(u);
      }
      return out + kSseDone;
    }
    if (const auto* f = std::get_if<Failed>(&e)) return sse_record(f->error.to_json()) + kSseDone;
    return out;
  }

  void add(const Event& e) override {
    if (const auto* t = std::get_if<Token>(&e)) {
      State& c = choices_[static_cast<size_t>(t->choice)];
      c.text += visible(c, t->text);
      c.ids.push_back(t->id);
      if (t->logprob) append_logprobs(c.logprobs, logprobs_json(*t, c));
    } else if (const auto* f = std::get_if<Finished>(&e)) {
      State& c = choices_[static_cast<size_t>(f->choice)];
      c.text += visible(c, f->text);
      c.finish = f->reason;
    } else if (const auto* d = std::get_if<Done>(&e)) {
      usage_ = d->usage;
    }
  }

  nlohmann::json result() const override {
    nlohmann::json r = envelope();
    r["object"] = o_.chat ? "chat.completion" : "text_completion";
    auto list = nlohmann::json::array();
    for (size_t i = 0; i < choices_.size(); ++i) {
      const State& c = choices_[i];
      nlohmann::json choice = {{"index", i},
                               {"finish_reason", c.finish.empty() ? "cancelled" : c.finish},
                               {"logprobs", c.logprobs.is_null() ? nlohmann::json() : c.logprobs},
                               {"token_ids", c.ids}};
      if (o_.chat)
        choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      else
        choice["text"] = c.text;
      list.push_back(std::move(choice));
    }
    r["choices"] = std::move(list);
    r["usage"] = usage_json(usage_);
    return r;
  }

private:
  struct State {
    std::string text;
    std::vector<int> ids;
    std::string finish;
    bool role_sent = false;
    bool content_started = false;
    long long offset = 0;  // text_offset of the next token (completions logprobs)
    nlohmann::json logprobs;
  };

  // A chat reply drops the single space that follows "Assistant:" in the prompt.
  std::string visible(State& c, const std::string& text) const {
    if (!o_.chat || c.content_started || text.empty()) return text;
    c.content_started = true;
    return text.starts_with(' ') ? text.substr(1) : text;
  }

  nlohmann::json envelope() const {
    nlohmann::json j = {{"id", id_},
                        {"object", o_.chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created_},
                        {"model", o_.model}};
    if (!o_.session_id.empty()) j["session_id"] = o_.session_id;
    return j;
  }

  nlohmann::json chunk(int index, const std::string& text, const std::vector<int>& ids, const nlohmann::json& logprobs,
                       const nlohmann::json& finish) {
    nlohmann::json j = envelope();
    nlohmann::json choice = {{"index", index}, {"logprobs", logprobs}, {"finish_reason", finish}};
    if (o_.chat) {
      nlohmann::json delta = nlohmann::json::object();
      State& c = choices_[static_cast<size_t>(index)];
      if (!c.role_sent) {
        delta["role"] = "assistant";
        c.role_sent = true;
      }
      if (!text.empty() || finish.is_null()) delta["content"] = text;
      choice["delta"] = delta;
    } else {
      choice["text"] = text;
    }
    if (!ids.empty()) choice["token_ids"] = ids;
    j["choices"] = nlohmann::json::array({choice});
    return j;
  }

  std::string token_text(int id) const {
    if (!tokenizer_) return fmt::format("<{}>", id);
    const int one[] = {id};
    return tokenizer_->decode(one);
  }

  static nlohmann::json bytes_of(const std::string& s) {
    auto b = nlohmann::json::array();
    for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
    return b;
  }

  // This token's log-probabilities in the request's dialect (chat or completions).
  nlohmann::json logprobs_json(const Token& t, State& c) const {
    const std::string tok = token_text(t.id);
    if (o_.chat) {
      auto top = nlohmann::json::array();
      for (const auto& alt : t.logprob->top) {
        const std::string s = token_text(alt.id);
        top.push_back({{"token", s}, {"logprob", alt.logprob}, {"bytes", bytes_of(s)}});
      }
      return {{"content", nlohmann::json::array({{{"token", tok},
                                                  {"logprob", t.logprob->logprob},
                                                  {"bytes", bytes_of(tok)},
                                                  {"top_logprobs", top}}})}};
    }
    nlohmann::json top = nlohmann::json::object();
    for (const auto& alt : t.logprob->top) top[token_text(alt.id)] = alt.logprob;
    nlohmann::json j = {{"tokens", {tok}},
                        {"token_logprobs", {t.logprob->logprob}},
                        {"top_logprobs", nlohmann::json::array({top})},
                        {"text_offset", {c.offset}}};
    c.offset += static_cast<long long>(t.text.size());
    return j;
  }

  static void append_logprobs(nlohmann::json& into, const nlohmann::json& one) {
    if (into.is_null()) {
      into = one;
      return;
    }
    for (auto& [key, value] : one.items())
      for (const auto& v : value) into[key].push_back(v);
  }

  CompletionFormatOptions o_;
  const Tokenizer* tokenizer_;
  std::string id_;
  long long created_;
  std::vector<State> choices_;
  Usage usage_;
};

class InfoFormat final : public EventFormat {
public:
  std::string sse(const Event& e) override {
    if (const auto* p = std::get_if<Progress>(&e)) return sse_record(progress_json(*p), "progress");
    if (const auto* d = std::get_if<Done>(&e)) return sse_record(d->info) + kSseDone;
    if (const auto* f = std::get_if<Failed>(&e)) return sse_record(f->error.to_json()) + kSseDone;
    return {};
  }
  void add(const Event& e) override {
    if (const auto* d = std::get_if<Done>(&e)) info_ = d->info;
  }
  nlohmann::json result() const override { return info_; }

private:
  nlohmann::json info_;
};

}  // namespace

std::unique_ptr<EventFormat> completion_format(const CompletionFormatOptions& options, const Tokenizer* tokenizer) {
  return std::make_unique<CompletionFormat>(options, tokenizer);
}

std::unique_ptr<EventFormat> info_format() { return std::make_unique<InfoFormat>(); }

}  // namespace mhla::serve
