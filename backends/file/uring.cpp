#include "uring.h"

#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace kvtier {

Status Faults::parse(const char* text, std::unique_ptr<Faults>* out) {
  out->reset();
  if (!text || !*text) return {};
  auto f = std::make_unique<Faults>();
  std::string spec(text);
  for (size_t at = 0; at <= spec.size();) {
    size_t end = spec.find(',', at);
    if (end == std::string::npos) end = spec.size();
    const std::string rule = spec.substr(at, end - at);
    at = end + 1;
    char op[8] = {}, kind[8] = {};
    unsigned long long every = 0;
    int used = 0;
    if (std::sscanf(rule.c_str(), "%7[a-z]:%llu:%7[a-z]%n", op, &every, kind, &used) != 3 ||
        used != static_cast<int>(rule.size()) || every == 0)
      return {KVTIER_ERR_CONFIG, "KVTIER_TEST_FILE_FAULTS: bad rule '" + rule +
                                     "' (want op:N:kind, op read|write|sync, kind "
                                     "eio|enospc|short, sync:N:stop, or commit:N:kill|stop)"};
    const std::string o(op), k(kind);
    const int which = o == "read"     ? kRead
                      : o == "write"  ? kWrite
                      : o == "sync"   ? kSync
                      : o == "commit" ? kCommit
                                      : -1;
    const int code = k == "eio"      ? -EIO
                     : k == "enospc" ? -ENOSPC
                     : k == "short"  ? 1
                     : k == "kill"   ? 2
                     : k == "stop"   ? 3
                                     : 0;
    // "stop": the process stops itself (SIGSTOP) there, as a debugger or Ctrl-Z would.
    if (which < 0 || code == 0 || (which == kSync && (code == 1 || code == 2)) ||
        (which == kCommit && code != 2 && code != 3) || (code == 3 && which < kSync))
      return {KVTIER_ERR_CONFIG, "KVTIER_TEST_FILE_FAULTS: bad rule '" + rule + "'"};
    auto r = std::make_unique<Rule>();
    r->every = every;
    r->kind = code;
    f->rules_[which].push_back(std::move(r));
  }
  *out = std::move(f);
  return {};
}

int Faults::on_complete(Op op, int res) {
  if (res <= 0) return res;
  for (auto& r : rules_[op]) {
    if (!r->fires()) continue;
    if (r->kind < 0) return r->kind;
    // Short: report only whole 4 KiB blocks of the first half (O_DIRECT must resume aligned);
    // the ring moves the rest again, which rewrites or rereads the same bytes.
    const int part = (res / 2) & ~4095;
    if (part > 0) return part;
  }
  return res;
}

bool Faults::on_commit() {
  for (auto& r : rules_[kCommit])
    if (r->fires()) {
      if (r->kind == 3) ::raise(SIGSTOP);
      return r->kind == 2;
    }
  return false;
}

int Faults::on_sync() {
  for (auto& r : rules_[kSync])
    if (r->fires()) {
      if (r->kind != 3) return r->kind;
      ::raise(SIGSTOP);
    }
  return 0;
}

Status Ring::create(unsigned depth, Faults* faults, std::unique_ptr<Ring>* out) {
  std::unique_ptr<Ring> r(new Ring());
  r->faults_ = faults;
  int rc = io_uring_queue_init(depth, &r->ring_, 0);
  if (rc < 0)
    return {KVTIER_ERR_IO,
            "io_uring_queue_init(" + std::to_string(depth) + ") failed: " + std::strerror(-rc)};
  r->depth_ = depth;
  *out = std::move(r);
  return {};
}

Ring::~Ring() {
  if (depth_) io_uring_queue_exit(&ring_);
}

namespace {
constexpr size_t kSubmitBytes = size_t{1} << 20;  // a large page goes to the device at once
}  // namespace

void Ring::run(size_t count, const std::function<void(size_t, Io&)>& prepare,
               const std::function<void(size_t, int)>& done) {
  struct Flight {
    size_t index = 0;
    Io io;
    size_t moved = 0;
    size_t iov_pos = 0;
  };
  std::vector<Flight> flights(depth_);
  std::vector<unsigned> free_slots;
  for (unsigned i = 0; i < depth_; ++i) free_slots.push_back(depth_ - 1 - i);
  size_t next = 0, inflight = 0;
  unsigned unsubmitted = 0;
  size_t unsubmitted_bytes = 0;

  auto queue = [&](unsigned s) {
    Flight& f = flights[s];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // never NULL: at most depth_ in flight
    iovec* iov = f.io.iov.data() + f.iov_pos;
    const unsigned n = static_cast<unsigned>(f.io.iov.size() - f.iov_pos);
    if (f.io.write) {
      io_uring_prep_writev(sqe, f.io.fd, iov, n, f.io.offset + f.moved);
    } else {
      io_uring_prep_readv(sqe, f.io.fd, iov, n, f.io.offset + f.moved);
    }
    io_uring_sqe_set_data64(sqe, s);
    ++unsubmitted;
    for (unsigned i = 0; i < n; ++i) unsubmitted_bytes += iov[i].iov_len;
  };
  auto finish = [&](unsigned s, int res) {
    done(flights[s].index, res);
    flights[s].io = Io{};
    free_slots.push_back(s);
    --inflight;
  };

  while (next < count || inflight > 0) {
    while (next < count && !free_slots.empty()) {
      const unsigned s = free_slots.back();
      free_slots.pop_back();
      Flight& f = flights[s];
      f.index = next++;
      f.moved = 0;
      f.iov_pos = 0;
      prepare(f.index, f.io);
      ++inflight;
      if (f.io.fd < 0) {
        finish(s, f.io.error ? f.io.error : -EINVAL);
        continue;
      }
      queue(s);
      // Submit in small groups so the device starts while later pages are still being copied
      // (or checksummed): four pages, or fewer once they add up to kSubmitBytes.
      if (unsubmitted >= 4 || unsubmitted_bytes >= kSubmitBytes) {
        io_uring_submit(&ring_);
        unsubmitted = 0;
        unsubmitted_bytes = 0;
      }
    }
    if (inflight == 0) break;
    int rc = io_uring_submit_and_wait(&ring_, 1);
    unsubmitted = 0;
    unsubmitted_bytes = 0;
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // The ring itself failed: fail whatever is still in flight rather than hang.
      for (unsigned s = 0; s < depth_; ++s)
        if (flights[s].io.fd >= 0) finish(s, rc);
      continue;
    }
    io_uring_cqe* cqes[64];
    unsigned got;
    while ((got = io_uring_peek_batch_cqe(&ring_, cqes, 64)) > 0) {
      for (unsigned c = 0; c < got; ++c) {
        const unsigned s = static_cast<unsigned>(io_uring_cqe_get_data64(cqes[c]));
        Flight& f = flights[s];
        int res = cqes[c]->res;
        if (faults_) res = faults_->on_complete(f.io.write ? Faults::kWrite : Faults::kRead, res);
        if (res == -EAGAIN || res == -EINTR) {
          queue(s);
          continue;
        }
        if (res <= 0) {
          finish(s, res == 0 ? -EIO : res);  // 0: unexpected end of file
          continue;
        }
        f.moved += static_cast<size_t>(res);
        // Advance over what moved; resubmit the rest of a short transfer.
        size_t left = static_cast<size_t>(res);
        while (left && f.iov_pos < f.io.iov.size()) {
          iovec& v = f.io.iov[f.iov_pos];
          if (left >= v.iov_len) {
            left -= v.iov_len;
            ++f.iov_pos;
          } else {
            v.iov_base = static_cast<char*>(v.iov_base) + left;
            v.iov_len -= left;
            left = 0;
          }
        }
        if (f.iov_pos < f.io.iov.size()) {
          queue(s);
        } else {
          finish(s, static_cast<int>(f.moved));
        }
      }
      io_uring_cq_advance(&ring_, got);  // always, also after errors
    }
  }
  if (unsubmitted) io_uring_submit(&ring_);
}

Status RingPool::init(unsigned rings, unsigned depth, Faults* faults) {
  for (unsigned i = 0; i < rings; ++i) {
    auto slot = std::make_unique<Slot>();
    Status s = Ring::create(depth, faults, &slot->ring);
    if (!s.is_ok()) return s;
    rings_.push_back(std::move(slot));
  }
  return {};
}

}  // namespace kvtier
