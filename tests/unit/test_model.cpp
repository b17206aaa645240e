// The language model against golden logits from the PyTorch reference model, in every execution
// form; batch invariance; and every load error path.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <unistd.h>
#include <fstream>

#include "mhla/error.hpp"
#include "mhla/model.hpp"
#include "mhla/safetensors.hpp"
#include "support/reference.hpp"

using namespace mhla;
namespace fs = std::filesystem;
using mhla::test::relative_error;

namespace {

const std::string kData = MHLA_TEST_DATA_DIR;

std::vector<int> ids_of(const SafetensorsFile& f, const std::string& name) {
  std::vector<int> ids;
  for (float x : f.read_f32(name)) ids.push_back(static_cast<int>(x));
  return ids;
}

std::vector<float> logits_prefill(const Model& m, const std::vector<int>& ids, long long chunk, ContextPolicy p) {
  ModelState s = m.new_state(p);
  std::vector<float> out;
  const SequenceStep step{&s, ids, LogitsMode::all, &out};
  m.forward({&step, 1}, chunk);
  return out;
}

std::vector<float> logits_decode(const Model& m, const std::vector<int>& ids, ContextPolicy p) {
  ModelState s = m.new_state(p);
  std::vector<float> all, one;
  for (int id : ids) {
    const SequenceStep step{&s, {&id, 1}, LogitsMode::last, &one};
    m.forward({&step, 1});
    all.insert(all.end(), one.begin(), one.end());
  }
  return all;
}

// A copy of a model directory in a fresh temporary folder, to damage.
struct ModelCopy {
  fs::path dir;
  explicit ModelCopy(const std::string& name) {
    dir = fs::temp_directory_path() / fmt::format("mhla-model-test-{}-{}", name, ::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(kData + "/models/tiny")) fs::copy(e.path(), dir / e.path().filename());
  }
  ~ModelCopy() { fs::remove_all(dir); }
  std::string path() const { return dir.string(); }

  // Rewrites the weights as F32 after `edit` changes the tensor map.
  template <class Edit>
  void rewrite(Edit edit) {
    std::map<std::string, TensorToWrite> tensors;
    {
      const auto f = SafetensorsFile::open((dir / "model.safetensors").string());
      for (const auto& n : f.names()) tensors[n] = {f.tensor(n).shape, f.read_f32(n)};
    }
    edit(tensors);
    write_safetensors((dir / "model.safetensors").string(), tensors);
  }
  void set_config(const std::string& from, const std::string& to) {
    std::ifstream in(dir / "config.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    std::ofstream(dir / "config.json") << text;
  }
};

}  // namespace

TEST_CASE("model logits match the reference model in prefill and decode", "[model]") {
  for (const std::string name : {"tiny", "tiny-gqa"}) {
    INFO(name);
    const Model m = Model::load(kData + "/models/" + name);
    const auto golden = SafetensorsFile::open(kData + "/models/" + name + "/golden.safetensors");
    const auto ids = ids_of(golden, "ids");
    const auto ref = golden.read_f32("logits");
    REQUIRE(ids.size() > 2u * m.config().block_size);
    for (long long chunk : {1LL, 3LL, 8LL, 13LL, 256LL}) {
      INFO("prefill chunk " << chunk);
      CHECK(relative_error(logits_prefill(m, ids, chunk, ContextPolicy::strict), ref) <= 1e-4);
    }
    CHECK(relative_error(logits_decode(m, ids, ContextPolicy::strict), ref) <= 1e-4);

    const auto long_ids = ids_of(golden, "ids_long");
    REQUIRE(static_cast<long long>(long_ids.size()) > m.trained_window());
    const auto long_ref = golden.read_f32("logits_slide_mean");
    CHECK(relative_error(logits_prefill(m, long_ids, 7, ContextPolicy::slide_mean), long_ref) <= 1e-4);
    CHECK(relative_error(logits_decode(m, long_ids, ContextPolicy::slide_mean), long_ref) <= 1e-4);
    CHECK_THROWS_AS(logits_prefill(m, long_ids, 7, ContextPolicy::strict), RefusedError);
  }
}

TEST_CASE("prefill then decode equals decode only", "[model]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  const std::vector<int> ids = {1, 5, 9, 33, 2, 7, 7, 80, 41, 3, 11, 12, 13, 14, 15, 16, 17, 18, 19};
  const auto decoded = logits_decode(m, ids, ContextPolicy::strict);
  ModelState s = m.new_state();
  std::vector<float> head, one, mixed;
  const std::span<const int> all(ids);
  const SequenceStep pre{&s, all.subspan(0, 11), LogitsMode::all, &head};
  m.forward({&pre, 1}, 4);
  mixed = head;
  for (size_t i = 11; i < ids.size(); ++i) {
    const SequenceStep step{&s, all.subspan(i, 1), LogitsMode::last, &one};
    m.forward({&step, 1});
    mixed.insert(mixed.end(), one.begin(), one.end());
  }
  CHECK(relative_error(mixed, decoded) <= 1e-5);
}

TEST_CASE("a batched forward gives each sequence bitwise its logits alone", "[model][batch]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  const std::vector<std::vector<int>> prompts = {{1, 4}, {1, 9, 9, 9, 9, 9, 9, 9, 9, 10}, {1}, {1, 50, 60}};
  const std::vector<std::vector<int>> next = {{7}, {3, 4, 5}, {8}, {9}};
  std::vector<ModelState> alone, batched;
  for (const auto& p : prompts) {
    ModelState s = m.new_state(ContextPolicy::slide_mean);
    std::vector<float> ignore;
    const SequenceStep step{&s, p, LogitsMode::none, &ignore};
    m.forward({&step, 1}, 4);
    alone.push_back(s);
    batched.push_back(s);
  }
  std::vector<std::vector<float>> out_alone(prompts.size()), out_batched(prompts.size());
  std::vector<SequenceStep> batch;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const SequenceStep one{&alone[i], next[i], LogitsMode::all, &out_alone[i]};
    m.forward({&one, 1}, 4);
    batch.push_back({&batched[i], next[i], LogitsMode::all, &out_batched[i]});
  }
  m.forward(batch, 4);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("sequence " << i);
    CHECK(out_alone[i] == out_batched[i]);
  }
}

TEST_CASE("bad token ids and bad calls are refused before any state changes", "[model]") {
  const Model m = Model::load(kData + "/models/tiny");
  ModelState s = m.new_state();
  std::vector<float> out;
  const std::vector<int> bad = {1, 97};
  const SequenceStep step{&s, bad, LogitsMode::last, &out};
  CHECK_THROWS_WITH(m.forward({&step, 1}), Catch::Contains("token id 97") && Catch::Contains("97 tokens"));
  CHECK(s.position() == 0);
  const std::vector<int> good = {1, 5};
  const SequenceStep ok{&s, good, LogitsMode::last, &out};
  const std::vector<SequenceStep> twice = {ok, ok};
  CHECK_THROWS_WITH(m.forward(twice), Catch::Contains("same state twice"));
}

TEST_CASE("model loading names the problem", "[model][load]") {
  SECTION("missing directory") { CHECK_THROWS_WITH(Model::load("/nonexistent/model"), Catch::Contains("config.json")); }
  SECTION("missing tensor") {
    ModelCopy c("missing");
    c.rewrite([](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
    CHECK_THROWS_WITH(Model::load(c.path()), Catch::Contains("model.layers.1.mlp.up_proj.weight"));
  }
  SECTION("wrong shape") {
    ModelCopy c("shape");
    c.rewrite([](auto& t) {
      auto& w = t["model.layers.0.attn.k_proj.weight"];
      w.shape[0] -= 1;
      w.values.resize(static_cast<size_t>(w.shape[0] * w.shape[1]));
    });
    CHECK_THROWS_WITH(Model::load(c.path()),
                      Catch::Contains("model.layers.0.attn.k_proj.weight") && Catch::Contains("shape"));
  }
  SECTION("bad mixing shape") {
    ModelCopy c("mixing");
    c.rewrite([](auto& t) { t["model.layers.0.attn.mixing_matrix"] = {{4, 2}, std::vector<float>(8, 0.5f)}; });
    CHECK_THROWS_WITH(Model::load(c.path()), Catch::Contains("mixing_matrix"));
  }
  SECTION("NaN in mixing") {
    ModelCopy c("nan");
    c.rewrite([](auto& t) { t["model.layers.1.attn.mixing_matrix"].values[5] = std::nanf(""); });
    CHECK_THROWS_WITH(Model::load(c.path()), Catch::Contains("mixing matrix entry"));
  }
  SECTION("corrupt header") {
    ModelCopy c("corrupt");
    std::fstream f(c.dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("#", 1);
    f.close();
    CHECK_THROWS_WITH(Model::load(c.path()), Catch::Contains("model.safetensors"));
  }
  SECTION("truncated file") {
    ModelCopy c("truncated");
    fs::resize_file(c.dir / "model.safetensors", fs::file_size(c.dir / "model.safetensors") - 100);
    CHECK_THROWS_WITH(Model::load(c.path()), Catch::Contains("model.safetensors"));
  }
  SECTION("refused config options name the key") {
    for (const auto& [from, to, key] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"\"use_short_conv\": false", "\"use_short_conv\": true", "use_short_conv"},
             {"\"attn\": null", "\"attn\": {\"layers\": [1]}", "attn"},
             {"\"hidden_act\": \"swish\"", "\"hidden_act\": \"gelu\"", "hidden_act"},
             {"\"feature_map\": \"relu\"", "\"feature_map\": \"cosine\"", "feature_map"},
             {"\"num_heads\": 2", "\"num_heads\": 3", "num_heads"}}) {
      ModelCopy c("config");
      c.set_config(from, to);
      INFO(key);
      CHECK_THROWS_WITH(Model::load(c.path()), Catch::Contains(key));
    }
  }
  SECTION("unknown keys are warnings") {
    ModelCopy c("unknown");
    c.set_config("\"vocab_size\": 97", "\"vocab_size\": 97, \"shiny_new_key\": 3");
    const Model m = Model::load(c.path());
    REQUIRE(m.warnings().size() == 1u);
    CHECK(m.warnings()[0].find("shiny_new_key") != std::string::npos);
  }
}
