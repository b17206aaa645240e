// mhla-server's --device and --precision: the names they take, where the choice is reported,
// and --device cuda refused with an ordinary error where this build or this machine has no GPU.
// (tests/cuda/test_server_gpu.cpp runs the server on a GPU.)
#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdlib>
#include <fmt/format.h>
#include <sys/wait.h>

#include "mhla/device.hpp"
#include "mhla/error.hpp"
#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

const std::string kTiny = std::string(MHLA_TEST_DATA_DIR) + "/models/tiny";

// Runs `mhla-server <args>` (a shell fragment) to its end, output captured in files of dir: for
// invocations that are refused before the server listens.
Run run_server(const TempDir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const int raw = std::system(fmt::format("'{}' {} >'{}' 2>'{}'", server_binary(), args, out, err).c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

std::string base_args(const TempDir& dir) {
  return fmt::format("--model '{}' --port 0 --state-dir '{}' --log-level off", kTiny, dir.file("state"));
}

}  // namespace

TEST_CASE("device precisions by name: f32, bf16 and f16", "[server][device]") {
  for (const auto p : {DevicePrecision::f32, DevicePrecision::bf16, DevicePrecision::f16})
    CHECK(parse_device_precision(to_string(p)) == p);
  CHECK(to_string(DevicePrecision::f16) == "f16");
  CHECK(parse_device_precision("f16") == DevicePrecision::f16);
  CHECK_THROWS_WITH(parse_device_precision("fp16"), Catch::Contains("use bf16, f16 or f32"));
}

TEST_CASE("server: --device takes cpu, cuda or auto and --precision bf16, f16 or f32", "[server][device]") {
  const serve::ServerConfig defaults;
  CHECK(defaults.device == "auto");
  CHECK(defaults.precision == "bf16");

  TempDir dir;
  serve::ServerConfig c = server_config(dir.path().string());
  for (const char* device : {"cpu", "cuda", "auto"})
    for (const char* precision : {"bf16", "f16", "f32"}) {
      c.device = device;
      c.precision = precision;
      CHECK_NOTHROW(c.validate());
    }
  c.device = "gpu";
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("--device must be cpu, cuda or auto"));
  c.device = "cpu";
  c.precision = "fp16";
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("--precision must be bf16, f16 or f32"));

  for (const std::string flag : {"--device tpu", "--precision fp8"}) {
    INFO(flag);
    const auto r = run_server(dir, base_args(dir) + " " + flag);
    CHECK(r.status == 1);
    CHECK(r.err.starts_with("mhla-server: error: "));
    CHECK(r.err.find(flag.substr(0, flag.find(' '))) != std::string::npos);
    CHECK(lines(r.err) == 1);
  }
  const auto help = run_server(dir, "--help");
  CHECK(help.status == 0);
  for (const char* text : {"--device", "--precision", "auto", "{bf16,f16,f32}"})
    CHECK(help.out.find(text) != std::string::npos);
}

TEST_CASE("server: --device cuda without a usable GPU is refused with an ordinary error", "[server][device]") {
  if (cuda_available()) {
    SUCCEED("this machine has a GPU: mhla_cuda_tests runs the server on it");
    return;
  }
  // A build without CUDA says it has no CUDA backend; a CUDA build on a machine without a GPU
  // says there is no CUDA GPU.
  const auto says_why = [](const std::string& message) {
    return message.find("no CUDA backend") != std::string::npos || message.find("no CUDA GPU") != std::string::npos;
  };
  TempDir dir;
  serve::ServerConfig c = server_config(dir.path().string());
  c.device = "cuda";
  c.precision = "f32";
  std::string message;
  try {
    serve::Server server(c);
  } catch (const Error& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(says_why(message));

  const auto r = run_server(dir, base_args(dir) + " --device cuda --precision f32");
  INFO(r.err);
  CHECK(r.status == 1);
  CHECK(r.err.starts_with("mhla-server: error: "));
  CHECK(says_why(r.err));
  CHECK(lines(r.err) == 1);
}

TEST_CASE("server: /health, /v1/models and /metrics say where the model runs", "[server][device]") {
  TestServer cpu;
  const auto c = cpu.client();
  const json health = json_of(c.request("GET", "/health"));
  CHECK(health["device"] == "cpu");
  CHECK(health["precision"] == "f32");  // whatever --precision says: the CPU runs f32
  const json model = json_of(c.request("GET", "/v1/models"))["data"][0];
  CHECK(model["device"] == "cpu");
  CHECK(model["device_name"] == "cpu");
  CHECK(model["precision"] == "f32");
  CHECK(model["state_slots"] == 0);
  CHECK(metric_value(c, "mhla_device_info{device=\"cpu\",precision=\"f32\"}") == 1);
  CHECK(metric_value(c, "mhla_device_state_slots") == 0);
  CHECK(metric_value(c, "mhla_device_state_slots_in_use") == 0);

  // auto: the GPU where this build has CUDA and the machine a GPU, else the CPU.
  TestServer chosen([](serve::ServerConfig& s) { s.device = "auto"; });
  CHECK(json_of(chosen.client().request("GET", "/health"))["device"] == (cuda_available() ? "cuda" : "cpu"));
}
