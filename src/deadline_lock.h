// A mutex whose waiters can give up at a deadline: std::unique_lock's try_lock_until works on
// it as on std::timed_mutex. Built on a condition variable because std::timed_mutex waits with
// pthread_mutex_clocklock, which ThreadSanitizer (GCC 12) does not see: it then reports the
// unlock as a race.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace kvtier {

class DeadlineLock {
 public:
  void lock() {
    std::unique_lock l(mu_);
    idle_.wait(l, [this] { return !busy_; });
    busy_ = true;
  }
  bool try_lock() {
    std::lock_guard l(mu_);
    if (busy_) return false;
    busy_ = true;
    return true;
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    std::unique_lock l(mu_);
    if (!idle_.wait_until(l, deadline, [this] { return !busy_; })) return false;
    busy_ = true;
    return true;
  }
  void unlock() {
    {
      std::lock_guard l(mu_);
      busy_ = false;
    }
    idle_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable idle_;
  bool busy_ = false;
};

}  // namespace kvtier
