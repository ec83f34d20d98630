// Asynchronous requests on a handle: a bounded queue, the worker threads that run it, and the
// completions, announced through an eventfd. What a request does is the caller's (a closure that
// runs the blocking call); this class owns when it runs, when it is reported done, and that once
// it is reported done (completed, cancelled, or dropped by shutdown) none of it runs any more.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "src/status.h"

namespace kvtier {

class Requests {
 public:
  using Completion = kvtier_completion_t;  // the C ABI's, so drain fills the caller's array
  // A request's work. run() returns the status the blocking call would, and may set *detail
  // (the blocking call's detail of its first failure); abandon(code) fills the caller's
  // results with `code` for a request that never ran (cancelled, or closed).
  struct Work {
    int op = 0;
    uint64_t user_data = 0;
    std::function<int(std::string* detail)> run;
    std::function<void(int)> abandon;
  };

  // threads: workers (started at the first submit); depth: requests between their submit and
  // their drain (queued, running, or completed and not drained yet) before submit says BUSY.
  static Status create(unsigned threads, size_t depth, std::unique_ptr<Requests>* out);
  ~Requests();
  Requests(const Requests&) = delete;
  Requests& operator=(const Requests&) = delete;

  // Readable while completions wait to be drained.
  int fd() const { return fd_; }
  // Queues `work`; *id names it. BUSY at the depth, CLOSED after shutdown(); never blocks on
  // the work of others.
  Status submit(Work work, uint64_t* id);
  // A queued request is abandoned (KVTIER_ERR_CANCELLED in its results) and completes now; a
  // running one completes as cancelled once its run() returns. NOT_FOUND: no such request, or
  // it has completed already.
  Status cancel(uint64_t id);
  // Up to out.size() completions, oldest first; waits up to timeout_ms for the first.
  // *detail: "request <id>: " and the detail of the first of them that has one, else "".
  size_t drain(std::span<Completion> out, int timeout_ms, std::string* detail);
  // Refuses new requests, abandons the queued ones with KVTIER_ERR_CLOSED, waits for the
  // running ones and stops the workers; completions not drained are dropped. Idempotent.
  void shutdown();

 private:
  Requests(unsigned threads, size_t depth, int fd) : threads_(threads), depth_(depth), fd_(fd) {}
  struct Pending {
    Work work;
    bool running = false;
    bool cancelled = false;
  };
  void worker();
  // Under mu_: posts a completion and makes the fd readable.
  void complete_locked(uint64_t id, const Work& work, int status, std::string detail = {});

  const unsigned threads_;
  const size_t depth_;
  const int fd_;

  std::mutex mu_;
  std::condition_variable work_ready_, done_ready_, idle_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  size_t outstanding_ = 0;               // submitted and not drained
  size_t running_ = 0;                   // in a worker's run()
  std::map<uint64_t, Pending> pending_;  // submitted and not completed
  std::deque<uint64_t> queue_;           // ids of pending_ not started, oldest first
  std::deque<Completion> done_;          // completed, not drained
  std::deque<std::string> details_;      // done_'s details, in step with it
  std::vector<std::thread> workers_;     // started at the first submit
};

}  // namespace kvtier
