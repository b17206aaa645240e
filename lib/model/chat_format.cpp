#include "mhla/chat_format.hpp"

namespace mhla {

std::string chat_user_turn(std::string_view message, bool first) {
  std::string text = first ? "User: " : "\nUser: ";
  text += message;
  text += "\nAssistant:";
  return text;
}

std::vector<std::string> chat_stop_strings() { return {"\nUser:"}; }

}  // namespace mhla
