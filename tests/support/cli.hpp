#pragma once
// Running the built `mhla` command line from tests, in scratch directories.
#include <filesystem>
#include <string>

namespace mhla::test {

class TempDir {
public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

std::string slurp(const std::string& path);

struct Run {
  int status = -1;
  std::string out, err;
};

// Runs `mhla <args>` (a shell fragment) with stdout and stderr captured in files of `dir`.
Run run_cli(const TempDir& dir, const std::string& args);

}  // namespace mhla::test
