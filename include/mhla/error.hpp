#pragma once
// Errors raised by the library. Every failure is reported by throwing mhla::Error (or a
// subclass); the library never terminates the process.
#include <stdexcept>
#include <string>

namespace mhla {

class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// The input is well-formed but asks for something the engine refuses (a position past the
// trained window under the strict policy, a combination of options that is undefined).
class RefusedError : public Error {
public:
  using Error::Error;
};

}  // namespace mhla
