#include "backends/file/uring.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace kvtier {

namespace {
// Queued I/Os go to the device in groups, so it starts while later pages are still being
// copied (or checksummed): four I/Os, or fewer once they add up to this (a large page at once).
constexpr unsigned kSubmitIos = 4;
constexpr size_t kSubmitBytes = size_t{1} << 20;
}  // namespace

Status Ring::create(unsigned depth, IoFaults* faults, std::unique_ptr<Ring>* out) {
  std::unique_ptr<Ring> r(new Ring());
  r->faults_ = faults;
  int rc = io_uring_queue_init(depth, &r->ring_, 0);
  if (rc < 0)
    return {KVTIER_ERR_IO,
            "io_uring_queue_init(" + std::to_string(depth) + ") failed: " + std::strerror(-rc)};
  r->depth_ = depth;
  r->flights_.resize(depth);
  for (unsigned i = 0; i < depth; ++i) r->free_.push_back(depth - 1 - i);
  *out = std::move(r);
  return {};
}

Ring::~Ring() {
  if (depth_) io_uring_queue_exit(&ring_);
}

void Ring::queue(Io io, size_t tag) {
  const unsigned s = free_.back();
  free_.pop_back();
  flights_[s] = Flight{tag, std::move(io), 0, 0};
  push(s);
  if (unsubmitted_ >= kSubmitIos || unsubmitted_bytes_ >= kSubmitBytes) {
    io_uring_submit(&ring_);
    unsubmitted_ = 0;
    unsubmitted_bytes_ = 0;
  }
}

void Ring::push(unsigned s) {
  Flight& f = flights_[s];
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // never NULL: at most depth_ in flight
  iovec* iov = f.io.iov.data() + f.iov_pos;
  const unsigned n = static_cast<unsigned>(f.io.iov.size() - f.iov_pos);
  if (f.io.write)
    io_uring_prep_writev(sqe, f.io.fd, iov, n, f.io.offset + f.moved);
  else
    io_uring_prep_readv(sqe, f.io.fd, iov, n, f.io.offset + f.moved);
  io_uring_sqe_set_data64(sqe, s);
  ++unsubmitted_;
  for (unsigned i = 0; i < n; ++i) unsubmitted_bytes_ += iov[i].iov_len;
}

void Ring::finish(unsigned s, int res, std::vector<Completion>* done) {
  done->push_back({flights_[s].tag, res});
  flights_[s].io = Io{};
  free_.push_back(s);
}

void Ring::reap(std::vector<Completion>* done) {
  if (in_flight() == 0) {
    if (unsubmitted_) io_uring_submit(&ring_);
    unsubmitted_ = 0;
    unsubmitted_bytes_ = 0;
    return;
  }
  const int rc = io_uring_submit_and_wait(&ring_, 1);
  unsubmitted_ = 0;
  unsubmitted_bytes_ = 0;
  if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
    // The ring itself failed: fail whatever is still in flight rather than hang.
    for (unsigned s = 0; s < depth_; ++s)
      if (flights_[s].io.fd >= 0) finish(s, rc, done);
    return;
  }
  io_uring_cqe* cqes[64];
  unsigned got;
  while ((got = io_uring_peek_batch_cqe(&ring_, cqes, 64)) > 0) {
    for (unsigned c = 0; c < got; ++c) {
      const unsigned s = static_cast<unsigned>(io_uring_cqe_get_data64(cqes[c]));
      Flight& f = flights_[s];
      int res = cqes[c]->res;
      if (faults_) res = faults_->on_complete(f.io.write, res);
      if (res == -EAGAIN || res == -EINTR) {
        push(s);
        continue;
      }
      if (res <= 0) {
        finish(s, res == 0 ? -EIO : res, done);  // 0: unexpected end of file
        continue;
      }
      f.moved += static_cast<size_t>(res);
      // Advance over what moved; resubmit the rest of a short transfer.
      for (size_t left = static_cast<size_t>(res); left && f.iov_pos < f.io.iov.size();) {
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
      if (f.iov_pos < f.io.iov.size())
        push(s);
      else
        finish(s, static_cast<int>(f.moved), done);
    }
    io_uring_cq_advance(&ring_, got);  // always, also after errors
  }
}

Status RingPool::init(unsigned rings, unsigned depth, IoFaults* faults) {
  for (unsigned i = 0; i < rings; ++i) {
    auto slot = std::make_unique<Slot>();
    Status s = Ring::create(depth, faults, &slot->ring);
    if (!s.is_ok()) return s;
    rings_.push_back(std::move(slot));
  }
  return {};
}

}  // namespace kvtier
