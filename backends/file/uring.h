// One io_uring and the loop that pushes a batch of I/Os through it: up to `depth` in flight,
// submitted in groups so copies into bounce buffers overlap the I/O already queued, completions
// reaped in bulk, short transfers and -EAGAIN resubmitted, the completion queue always advanced.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "status.h"

namespace kvtier {

struct Io {
  int fd = -1;  // -1: nothing to do (prepare failed); done() gets `error`
  bool write = false;
  uint64_t offset = 0;
  std::vector<iovec> iov;  // the ring's copy; advanced on short transfers
  int error = 0;
};

class Ring {
 public:
  static Status create(unsigned depth, std::unique_ptr<Ring>* out);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Runs I/Os 0..count-1. prepare(i, io) fills io just before it is queued; done(i, res) runs
  // once it has completed (res = bytes moved, or -errno), before its slot is reused.
  void run(size_t count, const std::function<void(size_t, Io&)>& prepare,
           const std::function<void(size_t, int)>& done);

 private:
  Ring() = default;
  io_uring ring_{};
  unsigned depth_ = 0;
};

// A few rings shared by the threads that call a tier: a caller takes a free one for a batch.
class RingPool {
 public:
  Status init(unsigned rings, unsigned depth);
  template <class F>
  void with_ring(F&& f) {
    const size_t n = rings_.size();
    const size_t start = next_.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < n; ++k) {
      auto& slot = *rings_[(start + k) % n];
      std::unique_lock lock(slot.mu, std::try_to_lock);
      if (lock.owns_lock()) return f(*slot.ring);
    }
    auto& slot = *rings_[start % n];
    std::lock_guard lock(slot.mu);
    f(*slot.ring);
  }

 private:
  struct Slot {
    std::mutex mu;
    std::unique_ptr<Ring> ring;
  };
  std::vector<std::unique_ptr<Slot>> rings_;
  std::atomic<size_t> next_{0};
};

}  // namespace kvtier
