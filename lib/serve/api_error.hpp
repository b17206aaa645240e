#pragma once
// How a request fails: an HTTP status and an OpenAI-style body
//   {"error": {"message": "...", "type": "...", "param": ..., "code": ...}}
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace mhla::serve {

class ApiError : public std::runtime_error {
public:
  // param: the request field at fault (empty: none); code: a stable machine-readable reason.
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {});

  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // The OpenAI error type for the status (invalid_request_error, authentication_error, ...).
  std::string type() const;
  nlohmann::json to_json() const;

private:
  int status_;
  std::string param_;
  std::string code_;
};

inline ApiError bad_request(const std::string& message, std::string param = {}) {
  return ApiError(400, message, std::move(param));
}
inline ApiError not_found(const std::string& message) { return ApiError(404, message, {}, "not_found"); }

}  // namespace mhla::serve
