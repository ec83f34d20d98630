// Group commit: the puts of this process that finish writing to a page file at the same time
// share one fdatasync. A put whose writes are done needs an fdatasync that began after them; if
// one is running it waits for that one to end, then the next one begins and covers every put
// that arrived meanwhile. The engine writes from several threads at once (SGLang: the backup
// thread and prefetches that write through), and each fdatasync is a flush of the device's cache.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

namespace kvtier {

class GroupSync {
 public:
  // Makes the caller's completed writes to `fd` durable with `run(fd)` (0 or -errno), run by
  // this caller or shared with others. Returns 0, or the -errno of a sync that covered them (a
  // sync that fails fails every put it covered: none of their pages becomes visible).
  template <class Run>
  int sync(int fd, Run run) {
    std::unique_lock lock(mu_);
    File& f = files_[fd];
    const uint64_t need = f.started + 1;  // one that begins after this moment
    while (f.done < need) {
      if (f.running) {
        cv_.wait(lock);
        continue;
      }
      f.running = true;
      const uint64_t gen = ++f.started;
      lock.unlock();
      const int rc = run(fd);
      lock.lock();
      f.running = false;
      f.done = gen;
      if (rc != 0) f.failed = {gen, rc};
      cv_.notify_all();
    }
    return f.failed.first >= need ? f.failed.second : 0;
  }

 private:
  struct File {
    uint64_t started = 0, done = 0;  // syncs begun and ended, numbered from 1
    bool running = false;
    std::pair<uint64_t, int> failed{0, 0};  // the last sync that failed, and its -errno
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, File> files_;  // by fd; entries stay put (references are kept across waits)
};

}  // namespace kvtier
