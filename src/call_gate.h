// The calls in flight on something that can be closed under them (a handle another thread may
// close while its calls run): a call enters (refused once closing has begun) and leaves; close()
// refuses new calls and returns once the last one has left, so nothing it frees is touched after.
#pragma once

#include <condition_variable>
#include <mutex>

namespace kvtier {

class CallGate {
 public:
  // False once close() has begun: the call must not start.
  bool enter() {
    std::lock_guard l(mu_);
    if (closing_) return false;
    ++calls_;
    return true;
  }
  void leave() {
    std::lock_guard l(mu_);
    if (--calls_ == 0) idle_.notify_all();
  }
  bool closing() const {
    std::lock_guard l(mu_);
    return closing_;
  }
  // Refuses new calls, then waits for those in flight (each bounded by its own timeout; `wake`
  // may end them sooner).
  template <class Wake>
  void close(Wake wake) {
    std::unique_lock l(mu_);
    closing_ = true;
    l.unlock();
    wake();
    l.lock();
    idle_.wait(l, [this] { return calls_ == 0; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable idle_;
  int calls_ = 0;
  bool closing_ = false;
};

}  // namespace kvtier
