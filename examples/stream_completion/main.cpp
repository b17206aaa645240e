// Loads a model and streams a greedy completion of a prompt given as token ids:
//   stream_completion MODEL_DIR 1,5,9 [max_tokens]
#include <mhla/error.hpp>
#include <mhla/session.hpp>

#include <cstdio>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR IDS [MAX_TOKENS]\n", argv[0]);
    return 1;
  }
  try {
    const mhla::Model model = mhla::Model::load(argv[1]);
    std::vector<int> prompt;
    std::stringstream ids(argv[2]);
    for (std::string item; std::getline(ids, item, ',');) prompt.push_back(std::stoi(item));

    mhla::SessionOptions options;
    options.sampling.temperature = 0;  // greedy
    mhla::Session session(model, nullptr, options);
    session.append(prompt);

    mhla::StopCriteria stop;
    stop.max_tokens = argc > 3 ? std::stoi(argv[3]) : 16;
    stop.eos_id = model.config().eos_token_id;
    session.generate(stop, [](int id, std::string_view) {
      if (id >= 0) std::printf("%d ", id);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
