// A get: lookup (where each key's page is, under the lock) -> read_pages (the ring reads them
// without it, each checked against the checksum the index recorded) -> drop_unreadable.
#include <cerrno>
#include <memory>

#include "src/log.h"
#include "backends/file/page_files.h"
#include "backends/file/records.h"

namespace kvtier {

void PageFiles::get(std::span<GetOp> ops) {
  std::vector<Reading> pending;
  lookup(ops, &pending);
  if (pending.empty()) return;
  std::vector<Reading> unreadable;
  read_pages(ops, pending, &unreadable);
  if (!unreadable.empty()) drop_unreadable(ops, unreadable);
}

// Under the lock: where each key's page is, as of now.
void PageFiles::lookup(std::span<GetOp> ops, std::vector<Reading>* pending) {
  Guard g(*index_);
  if (!g.ok()) {  // another process holds the lock: a miss, not a wait
    for (GetOp& op : ops) op.result = KVTIER_ERR_NOT_FOUND;
    return;
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    GetOp& op = ops[i];
    const uint32_t n = index_->find(op.id);
    if (n == kNil || index_->node(n).state != kLive) {
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    const Node& x = index_->node(n);
    if (!plausible_page(x.length, x.stored, x.compressed, x.rotation, index_->slot_size(x.cls))) {
      // Not a page this tier writes (a scribbled entry): a miss, its bytes unread; the index is
      // rebuilt from the records before the lock is let go.
      index_->mark_damaged();
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    if (const int fit = fits(op, x.length); fit != KVTIER_OK) {
      op.result = fit;
      continue;
    }
    index_->touch(n);
    const ClassFiles f = files_of_class(x.cls);
    pending->push_back({i, f.fd, x.slot * index_->slot_size(x.cls), x.length, x.checksum, x.stored,
                        x.seq, x.compressed != 0, x.rotation});
  }
}

// Without the lock: the reads, straight into the engine's fragments when O_DIRECT allows it
// (all of a page, or the middle of a rotated one: codec.h), each checked against the checksum
// the index recorded.
void PageFiles::read_pages(std::span<GetOp> ops, std::vector<Reading>& pending,
                           std::vector<Reading>* unreadable) {
  std::vector<std::unique_ptr<SlotMap>> maps(pending.size());  // of the pages read in pieces
  rings_.with_ring([&](Ring& ring) {
    run_ios(
        ring, pending.size(),
        [&](size_t i, Io& io) {
          Reading& p = pending[i];
          const GetOp& op = ops[p.op];
          io.fd = p.fd;  // -1 when this process cannot open the class's file: -EIO
          io.offset = p.offset;
          if (!p.compressed && !p.rotation && p.length == op.capacity &&
              (!direct_ ||
               (aligned(op.frags, mem_align_, io_align_) && p.length % io_align_ == 0))) {
            for (const Frag& f : op.frags) io.iov.push_back({f.ptr, f.len});
            return -EIO;
          }
          if (!p.compressed) {
            // Any block that lands aligned in the pool goes straight; a rotated page that does
            // not line up with this pool is turned back by the copy out of its bounce blocks.
            auto map = std::make_unique<SlotMap>(op.frags, p.length, p.rotation,
                                                 direct_ ? mem_align_ : 1);
            if (!map->ok()) {  // a rotation the page cannot have: a damaged entry, dropped
              io.fd = -1;
              p.damaged = true;
              return -EIO;
            }
            if (map->pieces() > kMaxIov)
              map = std::make_unique<SlotMap>(op.frags, p.length, p.rotation, 0);
            if (map->direct_bytes() || p.rotation) {
              p.buf_size = map->bounce_bytes();
              if (p.buf_size && !(p.buf = bounce_.get(p.buf_size))) {
                io.fd = -1;
                p.no_memory = true;
                return -ENOMEM;
              }
              map->iov(p.buf, &io.iov);
              maps[i] = std::move(map);
              return -EIO;
            }
          }
          p.buf_size = round_block(p.stored);
          p.buf = bounce_.get(p.buf_size);
          if (!p.buf) {
            io.fd = -1;
            p.no_memory = true;
            return -ENOMEM;
          }
          io.iov.push_back({p.buf, direct_ ? p.buf_size : p.stored});
          return -EIO;
        },
        [&](size_t i, int res) {
          Reading& p = pending[i];
          GetOp& op = ops[p.op];
          if (p.no_memory) {
            op.result = KVTIER_ERR_NO_MEMORY;
          } else if (p.damaged) {
            op.result = KVTIER_ERR_CORRUPT;
          } else if (res < 0) {
            op.result = io_code(res);
          } else if (p.compressed && !decompress_frags(p.buf, p.stored, op.frags, p.length)) {
            op.result = KVTIER_ERR_CORRUPT;  // a damaged frame: a miss, like a bad checksum
          } else {
            op.result = static_cast<int64_t>(p.length);
            op.checksum = p.checksum;
            // Copies out of the bounce buffer overlap the reads still queued, and check the
            // bytes as they go (one pass); a page read in place is checked where it landed.
            if (maps[i]) {
              if (p.buf) maps[i]->drain(p.buf);
              verify(op);
            } else if (!p.buf || p.compressed) {
              verify(op);
            }
            else if (scatter_checksum(p.buf, p.length, op.frags) != p.checksum)
              op.result = KVTIER_ERR_CORRUPT;
          }
          bounce_.put(p.buf, p.buf_size);
          p.buf = nullptr;
          maps[i].reset();
          if (op.result == KVTIER_ERR_IO || op.result == KVTIER_ERR_CORRUPT)
            unreadable->push_back(p);
        });
  });
}

// A page that cannot be read goes: kept, it would count as present and block the engine's next
// set of the key, which would store it again. But a slot that was evicted and rewritten
// meanwhile (by any process) was only read too late: that is a miss, and nothing to drop.
void PageFiles::drop_unreadable(std::span<GetOp> ops, const std::vector<Reading>& unreadable) {
  Guard g(*index_);
  for (const Reading& p : unreadable) {
    GetOp& op = ops[p.op];
    if (!g.ok()) {  // dropped by the next reader that finds it so
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    const uint32_t n = index_->find(op.id);
    if (n == kNil || index_->node(n).seq != p.seq || index_->node(n).state != kLive) {
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    log().warn("file tier: a page in {} is unreadable ({}); it is dropped", dir_,
               op.result == KVTIER_ERR_IO ? "I/O error" : "checksum or index entry");
    index_->release(n);
  }
}

}  // namespace kvtier
