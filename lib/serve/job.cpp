#include "serve/job.hpp"

namespace mhla::serve {

void Job::push(Event event) {
  std::function<void()> notify;
  {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
    notify = notify_;
  }
  if (notify) notify();
}

void Job::set_notifier(std::function<void()> notify) {
  std::lock_guard lock(mutex_);
  notify_ = std::move(notify);
}

std::vector<Event> Job::take() {
  std::lock_guard lock(mutex_);
  std::vector<Event> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

}  // namespace mhla::serve
