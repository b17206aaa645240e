#pragma once
// The engine's default chat format, used by `mhla chat` and the server when the model directory
// brings no template of its own:
//
//   <BOS>User: {message}\nAssistant: {reply}\nUser: {message}\nAssistant: ...
//
// A reply ends at the model's end-of-sequence token or at "\nUser:", which is withheld.
#include <string>
#include <string_view>
#include <vector>

namespace mhla {

// The text that opens a user turn and hands over to the assistant; `first` for the first turn.
std::string chat_user_turn(std::string_view message, bool first);
// Stop strings that end an assistant reply.
std::vector<std::string> chat_stop_strings();

}  // namespace mhla
