// One io_uring, driven by its caller as liburing's examples drive theirs: queue I/Os while the
// ring has room (they go to the device in small groups, so copies into bounce buffers overlap
// the I/O already queued), then reap what completed. The ring resubmits short transfers and
// -EAGAIN itself, so every completion it hands back is final, and it always advances its
// completion queue.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "src/status.h"

namespace kvtier {

// The seam for test-only fault injection (faults.h): the result to report for an I/O that
// returned `res` (-errno, or a short count that the ring then resubmits the rest of).
class IoFaults {
 public:
  virtual ~IoFaults() = default;
  virtual int on_complete(bool write, int res) = 0;
};

struct Io {
  int fd = -1;
  bool write = false;
  uint64_t offset = 0;
  std::vector<iovec> iov;  // the ring's copy; advanced on short transfers
};

// A final completion: the caller's tag, and bytes moved or -errno.
struct Completion {
  size_t tag;
  int res;
};

class Ring {
 public:
  // `faults` (test-only, may be NULL) outlives the ring.
  static Status create(unsigned depth, IoFaults* faults, std::unique_ptr<Ring>* out);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Whether another I/O may be queued now (fewer than `depth` in flight).
  bool has_room() const { return !free_.empty(); }
  size_t in_flight() const { return flights_.size() - free_.size(); }
  // Queues `io` under `tag`; REQUIRES has_room(). It reaches the device with the next few.
  void queue(Io io, size_t tag);
  // Sends what is queued, waits for at least one completion while any I/O is in flight, and
  // appends the I/Os that finished to *done (each once, with its whole count or its error).
  void reap(std::vector<Completion>* done);

 private:
  struct Flight {
    size_t tag = 0;
    Io io;
    size_t moved = 0;
    size_t iov_pos = 0;
  };
  Ring() = default;
  void push(unsigned slot);  // an sqe for what is left of the flight
  void finish(unsigned slot, int res, std::vector<Completion>* done);

  io_uring ring_{};
  unsigned depth_ = 0;
  IoFaults* faults_ = nullptr;
  std::vector<Flight> flights_;
  std::vector<unsigned> free_;
  unsigned unsubmitted_ = 0;
  size_t unsubmitted_bytes_ = 0;
};

// Runs I/Os 0..count-1 through `ring`: prepare(i, io) fills io just before it is queued (an io
// left with fd -1 is not queued: its error is what prepare returns), done(i, res) runs once it
// has completed, before its slot is reused. The one loop the tier's reads and writes share.
template <class Prepare, class Done>
void run_ios(Ring& ring, size_t count, Prepare prepare, Done done) {
  std::vector<Completion> finished;
  size_t next = 0;
  while (next < count || ring.in_flight() > 0) {
    while (next < count && ring.has_room()) {
      Io io;
      const int error = prepare(next, io);
      if (io.fd < 0)
        done(next, error ? error : -EINVAL);
      else
        ring.queue(std::move(io), next);
      ++next;
    }
    finished.clear();
    ring.reap(&finished);
    for (const Completion& c : finished) done(c.tag, c.res);
  }
}

// A few rings shared by the threads that call a tier: a caller takes a free one for a batch.
class RingPool {
 public:
  Status init(unsigned rings, unsigned depth, IoFaults* faults);
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
