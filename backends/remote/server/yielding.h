// A lock held over a long loop of keys that lets other threads in now and then.
#pragma once

#include <mutex>
#include <thread>

namespace kvtier {

// Holds a lock over a loop of up to 65,536 keys, letting others in every 1024, so that one
// client's big batch does not keep the table from everyone else for its whole length.
class Yielding {
 public:
  explicit Yielding(std::mutex& mu) : lock_(mu) {}
  void step() {
    if (++n_ % 1024) return;
    lock_.unlock();
    std::this_thread::yield();
    lock_.lock();
  }

 private:
  std::unique_lock<std::mutex> lock_;
  size_t n_ = 0;
};

}  // namespace kvtier
