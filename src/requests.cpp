#include "src/requests.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <system_error>

namespace kvtier {

Status Requests::create(unsigned threads, size_t depth, std::unique_ptr<Requests>* out) {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return {KVTIER_ERR_NO_MEMORY, std::string("eventfd: ") + std::strerror(errno)};
  out->reset(new Requests(std::max(threads, 1u), std::max<size_t>(depth, 1), fd));
  return {};
}

Requests::~Requests() {
  shutdown();
  ::close(fd_);
}

Status Requests::submit(Work work, uint64_t* id) {
  std::lock_guard l(mu_);
  if (stopping_) return {KVTIER_ERR_CLOSED, "the handle is closed (kvtier_close)"};
  if (outstanding_ >= depth_)
    return {KVTIER_ERR_BUSY, std::to_string(outstanding_) +
                                 " requests submitted and not drained (KVTIER_ASYNC_DEPTH): "
                                 "drain completions first"};
  if (workers_.empty()) {
    try {
      for (unsigned i = 0; i < threads_; ++i) workers_.emplace_back([this] { worker(); });
    } catch (const std::system_error& e) {
      if (workers_.empty())  // one worker is enough to run the queue
        return {KVTIER_ERR_NO_MEMORY, std::string("cannot start a worker thread: ") + e.what()};
    }
  }
  *id = next_id_++;
  pending_.emplace(*id, Pending{.work = std::move(work)});
  queue_.push_back(*id);
  ++outstanding_;
  work_ready_.notify_one();
  return {};
}

Status Requests::cancel(uint64_t id) {
  std::lock_guard l(mu_);
  auto it = pending_.find(id);
  if (it == pending_.end())
    return {KVTIER_ERR_NOT_FOUND,
            "request " + std::to_string(id) + " is not pending (completed, or never submitted)"};
  Pending& p = it->second;
  if (p.running) {  // its run() cannot be stopped: it completes as cancelled when it returns
    p.cancelled = true;
    return {};
  }
  queue_.erase(std::find(queue_.begin(), queue_.end(), id));
  p.work.abandon(KVTIER_ERR_CANCELLED);
  complete_locked(id, p.work, KVTIER_ERR_CANCELLED);
  pending_.erase(it);
  return {};
}

size_t Requests::drain(std::span<Completion> out, int timeout_ms, std::string* detail) {
  std::unique_lock l(mu_);
  if (done_.empty() && timeout_ms > 0)
    done_ready_.wait_for(l, std::chrono::milliseconds(timeout_ms),
                         [this] { return !done_.empty() || stopping_; });
  const size_t n = std::min(out.size(), done_.size());
  std::copy_n(done_.begin(), n, out.begin());
  detail->clear();
  for (size_t i = 0; i < n && detail->empty(); ++i)
    if (!details_[i].empty()) *detail = "request " + std::to_string(out[i].id) + ": " + details_[i];
  done_.erase(done_.begin(), done_.begin() + static_cast<ptrdiff_t>(n));
  details_.erase(details_.begin(), details_.begin() + static_cast<ptrdiff_t>(n));
  outstanding_ -= n;
  if (done_.empty()) {  // the fd is readable exactly while completions wait: reset it
    uint64_t count;
    [[maybe_unused]] ssize_t r = ::read(fd_, &count, sizeof count);
  }
  return n;
}

void Requests::shutdown() {
  std::vector<std::thread> workers;
  {
    std::unique_lock l(mu_);
    stopping_ = true;
    for (uint64_t id : queue_) {
      auto it = pending_.find(id);
      it->second.work.abandon(KVTIER_ERR_CLOSED);
      pending_.erase(it);
    }
    queue_.clear();
    work_ready_.notify_all();
    done_ready_.notify_all();
    idle_.wait(l, [this] { return running_ == 0; });  // each bounded by its tiers' timeouts
    done_.clear();
    details_.clear();
    workers = std::move(workers_);
    workers_.clear();
  }
  for (std::thread& t : workers) t.join();
}

void Requests::worker() {
  std::unique_lock l(mu_);
  for (;;) {
    work_ready_.wait(l, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping
    const uint64_t id = queue_.front();
    queue_.pop_front();
    Pending& p = pending_.at(id);  // stays put while running: only this thread erases it
    p.running = true;
    ++running_;
    l.unlock();
    std::string detail;
    const int status = p.work.run(&detail);
    l.lock();
    --running_;
    complete_locked(id, p.work, p.cancelled ? KVTIER_ERR_CANCELLED : status, std::move(detail));
    pending_.erase(id);
    if (running_ == 0) idle_.notify_all();
  }
}

void Requests::complete_locked(uint64_t id, const Work& work, int status, std::string detail) {
  done_.push_back({.id = id, .user_data = work.user_data, .op = work.op, .status = status});
  details_.push_back(std::move(detail));
  if (done_.size() == 1) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(fd_, &one, sizeof one);
  }
  done_ready_.notify_all();
}

}  // namespace kvtier
