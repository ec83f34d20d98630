// A put: plan (reserve a slot per new key under one lock) -> run (the ring writes the slots)
// -> commit (fdatasync, the records, then the keys become live under one lock).
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "src/log.h"
#include "backends/file/page_files.h"
#include "backends/file/records.h"
#include "src/size_class.h"

namespace kvtier {

namespace {
// A page is kept compressed only when that saves at least this fraction of it.
constexpr uint64_t kMinSavingDiv = 8;  // 1/8 = 12.5%
}  // namespace

void PageFiles::put(std::span<PutOp> ops) {
  std::vector<Writing> todo(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) todo[i].op = i;
  encode(ops, todo);
  // Keys another process is writing are waited for, but no longer than the lock's timeout.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::nanoseconds(index_->timeout_ns());
  for (unsigned round = 0; !todo.empty(); ++round) {
    if (round && std::chrono::steady_clock::now() > deadline) {
      for (Writing& w : todo) {
        ops[w.op].result = KVTIER_ERR_TIMEOUT;
        bounce_.put(w.buf, w.buf_size);
      }
      break;
    }
    if (round) pause_for_others(round);
    std::vector<Writing> mine, waiting;
    plan(ops, todo, &mine, &waiting);
    if (!mine.empty()) {
      run(ops, mine);
      sync_and_record(ops, mine);
      commit(ops, mine);
    }
    todo = std::move(waiting);
  }
}

// Sizes each page as it will be stored (compressed first, when asked and it pays) and opens its
// class's files, outside the lock. The checksum is of the page itself, taken just before the
// compressor reads the page from cache.
void PageFiles::encode(std::span<PutOp> ops, std::vector<Writing>& todo) {
  std::vector<Writing> ready;
  for (Writing& w : todo) {
    PutOp& op = ops[w.op];
    w.stored = op.size;
    if (zstd_level_) {
      ensure_checksum(op);
      w.buf_size = round_block(compress_bound(op.size));
      if ((w.buf = bounce_.get(w.buf_size))) {
        const size_t n = compress_frags(op.frags, w.buf, w.buf_size, zstd_level_);
        w.compressed = n > 0 && n <= op.size - op.size / kMinSavingDiv;
        if (w.compressed) w.stored = n;
      }
    }
    w.slot_size = slot_size_for(w.stored);
    Status s = files_of(w.slot_size, &w.files);
    if (s.is_ok()) {
      ready.push_back(w);
      continue;
    }
    log().warn("file tier: {}", s.message());
    op.result = s.code();
    bounce_.put(w.buf, w.buf_size);
  }
  todo = std::move(ready);
}

// Under one lock: a key already stored is done (it keeps its value); a key another write holds
// (this batch's, another thread's or another process's) waits for it, unless its writer died;
// the rest get a slot each, reserved to this process. So a key never has two records on disk.
void PageFiles::plan(std::span<PutOp> ops, std::vector<Writing>& todo, std::vector<Writing>* mine,
                     std::vector<Writing>* waiting) {
  Guard g(*index_);
  if (!g.ok()) {
    for (Writing& w : todo) {
      ops[w.op].result = KVTIER_ERR_TIMEOUT;
      bounce_.put(w.buf, w.buf_size);
    }
    return;
  }
  release_orphans();
  if (index_->writes_held(pid_)) {
    *waiting = std::move(todo);  // a clear() waits for the writes in flight to end
    return;
  }
  for (Writing& w : todo) {
    PutOp& op = ops[w.op];
    uint32_t n = index_->find_for_write(op.id, pid_);
    if (n != kNil && index_->node(n).state == kReserved) {
      waiting->push_back(w);
      continue;
    }
    if (n != kNil) {
      index_->touch(n);
      op.result = KVTIER_OK;
    } else if ((op.result = index_->reserve(op.id, w.slot_size, pid_, start_, &n)) == KVTIER_OK) {
      w.seq = index_->node(n).seq;
      w.slot = index_->node(n).slot;
      mine->push_back(w);
      continue;
    }
    bounce_.put(w.buf, w.buf_size);
  }
}

void PageFiles::release_orphans() {
  std::lock_guard lock(orphans_mu_);
  for (const auto& [id, seq] : orphans_) {
    const uint32_t n = index_->find(id);
    if (n != kNil && index_->node(n).seq == seq && index_->node(n).owner == pid_)
      index_->release(n);
  }
  orphans_.clear();
}

void PageFiles::run(std::span<PutOp> ops, std::vector<Writing>& mine) {
  rings_.with_ring([&](Ring& ring) {
    run_ios(
        ring, mine.size(),
        [&](size_t i, Io& io) { return prepare_write(ops[mine[i].op], mine[i], io); },
        [&](size_t i, int res) {
          Writing& w = mine[i];
          if (w.result != KVTIER_ERR_NO_MEMORY) {
            w.result = res < 0 ? io_code(res) : KVTIER_OK;
            if (res < 0)
              log().warn("file tier: write of slot {} in {} failed: {}", w.slot, dir_,
                         std::strerror(-res));
          }
          bounce_.put(w.buf, w.buf_size);
          w.buf = nullptr;
        });
  });
}

int PageFiles::prepare_write(PutOp& op, Writing& w, Io& io) {
  // Straight from the engine's pool when O_DIRECT allows it, else its middle straight and the
  // edges copied, else a bounce copy of all of it.
  const bool direct = !w.compressed && (!direct_ || aligned(op.frags, mem_align_, io_align_));
  if (!direct && !w.compressed && prepare_rotated(op, w, io)) return w.buf ? 0 : -ENOMEM;
  const size_t end = direct_ ? round_block(w.stored) : w.stored;
  if (!direct && (!w.buf || w.buf_size < end)) {
    bounce_.put(w.buf, w.buf_size);
    w.buf_size = round_block(end);
    if (!(w.buf = bounce_.get(w.buf_size))) {
      w.result = KVTIER_ERR_NO_MEMORY;
      return -ENOMEM;  // io.fd stays -1: nothing is queued
    }
  }
  if (direct) {
    ensure_checksum(op);  // the only pass over the bytes: the disk reads them itself
  } else if (!w.compressed && op.has_checksum) {
    gather(op.frags, w.buf);  // while the I/O already queued runs
  } else if (!w.compressed) {
    op.checksum = gather_checksum(op.frags, w.buf);  // one pass: copy and checksum
    op.has_checksum = true;
  }
  io.fd = w.files.fd;
  io.write = true;
  io.offset = w.slot * w.slot_size;
  if (direct) {
    for (const Frag& f : op.frags) io.iov.push_back({f.ptr, f.len});
  } else {
    std::memset(w.buf + w.stored, 0, end - w.stored);
    io.iov.push_back({w.buf, end});
  }
  return 0;
}

bool PageFiles::prepare_rotated(PutOp& op, Writing& w, Io& io) {
  const size_t rotation = rotation_for(op.frags, op.size);
  const SlotMap map(op.frags, op.size, rotation, mem_align_);
  if (!map.direct_bytes() || map.pieces() > kMaxIov) return false;
  if (!w.buf || w.buf_size < map.bounce_bytes()) {
    bounce_.put(w.buf, w.buf_size);
    w.buf_size = map.bounce_bytes();
    if (!(w.buf = bounce_.get(w.buf_size))) {
      w.result = KVTIER_ERR_NO_MEMORY;
      return true;  // io.fd stays -1: nothing is queued
    }
  }
  ensure_checksum(op);  // the one pass over the middle: the disk reads it itself
  map.fill(w.buf);
  w.rotation = static_cast<uint16_t>(rotation);
  io.fd = w.files.fd;
  io.write = true;
  io.offset = w.slot * w.slot_size;
  map.iov(w.buf, &io.iov);
  return true;
}

int PageFiles::sync_fd(int fd) {
  const int rc = ::fdatasync(fd) == 0 ? 0 : -errno;
  if (faults_)  // after the real one, so an injected failure takes as long as a sync does
    if (const int injected = faults_->on_sync()) return injected;
  return rc;
}

void PageFiles::sync_and_record(std::span<PutOp> ops, std::vector<Writing>& mine) {
  // The files (the slots' or the records') that the batch's writes still standing went to.
  auto written = [&](int ClassFiles::*file) {
    std::vector<int> fds;
    for (const Writing& w : mine)
      if (w.result == KVTIER_OK && std::find(fds.begin(), fds.end(), w.files.*file) == fds.end())
        fds.push_back(w.files.*file);
    return fds;
  };
  // Durable before visible: an fdatasync per file the batch wrote, shared with the puts of
  // other threads that finish at the same time.
  if (sync_) {
    for (int fd : written(&ClassFiles::fd)) {
      const int rc = syncs_.sync(fd, [this](int f) { return sync_fd(f); });
      if (rc == 0) continue;
      log().warn("file tier: fdatasync in {} failed: {}", dir_, std::strerror(-rc));
      for (Writing& w : mine)
        if (w.files.fd == fd && w.result == KVTIER_OK) w.result = io_code(rc);
    }
  }
  // Then the records, through the page cache (see file_tier.h), a size class at a time.
  std::vector<Writing*> of_fd;
  std::vector<uint64_t> slots;
  std::vector<Record> recs;
  std::vector<uint8_t> ok;
  for (int fd : written(&ClassFiles::idx_fd)) {
    of_fd.clear(), slots.clear(), recs.clear();
    for (Writing& w : mine) {
      if (w.result != KVTIER_OK || w.files.idx_fd != fd) continue;
      const PutOp& op = ops[w.op];
      of_fd.push_back(&w);
      slots.push_back(w.slot);
      recs.push_back(make_record(op.id, op.size, op.checksum, w.seq, w.stored, w.compressed,
                                 w.rotation));
    }
    ok.assign(of_fd.size(), 0);
    const int err = write_records(fd, slots, recs, ok);
    if (err) log().warn("file tier: cannot write records in {}: {}", dir_, std::strerror(err));
    for (size_t k = 0; k < of_fd.size(); ++k)
      if (!ok[k]) of_fd[k]->result = io_code(-err);
  }
}

// Under one lock: the pages written become live for every process; the slots of failed writes
// go back (their records zeroed).
void PageFiles::commit(std::span<PutOp> ops, std::vector<Writing>& mine) {
  Guard g(*index_);
  if (!g.ok()) {
    // Written but not visible: the slots go back at this process's next plan().
    std::lock_guard lock(orphans_mu_);
    for (Writing& w : mine) {
      ops[w.op].result = KVTIER_ERR_TIMEOUT;
      orphans_.push_back({ops[w.op].id, w.seq});
    }
    return;
  }
  for (Writing& w : mine) {
    if (faults_ && faults_->on_commit()) ::kill(pid_, SIGKILL);  // test-only: die holding it
    PutOp& op = ops[w.op];
    const uint32_t n = index_->find(op.id);
    if (n == kNil || index_->node(n).seq != w.seq) {
      // An index rebuilt meanwhile (a process died holding the lock) that lost this write.
      op.result = w.result == KVTIER_OK ? KVTIER_ERR_IO : w.result;
      index_->note_error();
      continue;
    }
    op.result = w.result;
    if (w.result != KVTIER_OK) {
      index_->note_error();
      index_->release(n);
    } else {
      index_->commit(n, op.size, op.checksum, w.stored, w.compressed, w.rotation);
    }
  }
}

}  // namespace kvtier
