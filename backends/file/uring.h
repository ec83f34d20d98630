// One io_uring and the loop that pushes a batch of I/Os through it: up to `depth` in flight,
// submitted in groups so copies into bounce buffers overlap the I/O already queued, completions
// reaped in bulk, short transfers and -EAGAIN resubmitted, the completion queue always advanced.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "status.h"

namespace kvtier {

// Test-only fault injection (KVTIER_TEST_FILE_FAULTS, read by the file tier at open): rules
// "op:N:kind" separated by ',', with op read, write or sync, kind eio, enospc or short: every
// Nth I/O of that op fails with that errno, or (short, read/write) reports a short transfer,
// so the rest is resubmitted; and "commit:N:kill": the Nth put's commit SIGKILLs its own
// process while it holds the namespace lock. Lets tests drive every error path without a
// failing disk.
class Faults {
 public:
  enum Op { kRead, kWrite, kSync, kCommit, kOps };
  // nullptr in *out when text is NULL or empty; KVTIER_ERR_CONFIG for a malformed rule.
  static Status parse(const char* text, std::unique_ptr<Faults>* out);
  // The completion result to report for an I/O of `op` that returned `res`.
  int on_complete(Op op, int res);
  // 0, or the -errno an fdatasync should fail with.
  int on_sync();
  // Whether this commit kills the process.
  bool on_commit();

 private:
  struct Rule {
    uint64_t every = 0;
    int kind = 0;  // -errno, or 1: short
    std::atomic<uint64_t> count{0};
    // Every `every`th time; a stop (kind 3) only the first time, so that one SIGCONT resumes it.
    bool fires() {
      const uint64_t n = count.fetch_add(1) + 1;
      return kind == 3 ? n == every : n % every == 0;
    }
  };
  std::vector<std::unique_ptr<Rule>> rules_[kOps];
};

struct Io {
  int fd = -1;  // -1: nothing to do (prepare failed); done() gets `error`
  bool write = false;
  uint64_t offset = 0;
  std::vector<iovec> iov;  // the ring's copy; advanced on short transfers
  int error = 0;
};

class Ring {
 public:
  // `faults` (test-only, may be NULL) outlives the ring.
  static Status create(unsigned depth, Faults* faults, std::unique_ptr<Ring>* out);
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
  Faults* faults_ = nullptr;
};

// A few rings shared by the threads that call a tier: a caller takes a free one for a batch.
class RingPool {
 public:
  Status init(unsigned rings, unsigned depth, Faults* faults);
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
