// The slot allocator: which slot of which page file a new page goes to, shared by every process
// on the namespace through the SharedIndex. Frees, evicts (LRU) and grows the files.
#include <fcntl.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "log.h"
#include "page_files.h"
#include "records.h"

namespace kvtier {

PageFiles::ClassFiles PageFiles::files_of_class(uint32_t cls) {
  ClassFiles f;
  Status s = files_of(index_->klass(cls).slot_size, &f);
  if (!s.is_ok()) log().warn("file tier: {}", s.message());
  return f;
}

void PageFiles::release(uint32_t n) {
  SharedIndex& ix = *index_;
  IndexHeader& h = ix.h();
  Node& x = ix.node(n);
  // Before the slot can be handed out again: a stale record left behind would bring back an
  // evicted, removed or overwritten page after a restart.
  const ClassFiles f = files_of_class(x.cls);
  if (f.idx_fd < 0 || !write_record(f.idx_fd, x.slot, Record{}))
    log().warn("file tier: cannot clear a record in {}: {}", dir_, std::strerror(errno));
  if (x.state == kLive) {
    ix.lru_unlink(n);
    --h.keys;
  } else if (x.state == kReserved) {
    --h.reserved;
  }
  if (x.state != kFree) {
    ix.erase(n);
    h.live_bytes -= std::min(h.live_bytes, ix.klass(x.cls).slot_size);
  }
  ix.push_free(n);
}

void PageFiles::evict_one() {
  release(index_->h().lru_tail);
  ++index_->h().evictions;
}

bool PageFiles::evict_from_class(uint32_t cls) {
  uint64_t steps = 0;  // bounded: the list is in shared memory
  for (uint32_t n = index_->h().lru_tail; n != kNil && ++steps <= index_->max_nodes();
       n = index_->node(n).prev) {
    if (index_->node(n).cls != cls) continue;
    release(n);
    ++index_->h().evictions;
    return true;
  }
  return false;
}

void PageFiles::reclaim_dead() {
  IndexHeader& h = index_->h();
  for (uint64_t n = 0; n < h.nodes_used && h.reserved; ++n) {
    const Node& x = index_->node(static_cast<uint32_t>(n));
    if (x.state == kReserved && x.owner != pid_ && process_stalled(x.owner, x.owner_start))
      release(static_cast<uint32_t>(n));
  }
}

int PageFiles::grow(uint32_t cls) {
  IndexHeader& h = index_->h();
  ClassInfo& c = index_->klass(cls);
  const ClassFiles f = files_of_class(cls);
  if (f.fd < 0) return KVTIER_ERR_IO;
  // Disk follows the bytes stored: a class's files grow by what they hold already (doubling
  // from one slot, so a class with one page takes one slot), in steps of at most kGrowBytes and
  // a slice of the budget, and all classes' files together stay within the capacity: past it,
  // this class's least recently used page gives up its slot, or the files grow by one slot.
  uint64_t files = 0;
  for (uint32_t k = 0; k < h.nclasses; ++k)
    files += index_->klass(k).file_slots * index_->klass(k).slot_size;
  if (files + c.slot_size > h.capacity && evict_from_class(cls)) return KVTIER_OK;
  uint64_t step = std::min({kGrowBytes, h.capacity / 16, c.file_slots * c.slot_size,
                            h.capacity > files ? h.capacity - files : 0});
  struct statvfs vfs {};
  if (::fstatvfs(f.fd, &vfs) == 0)
    step = std::min<uint64_t>(step, uint64_t{vfs.f_bavail} * vfs.f_frsize / 8);
  uint64_t grow = std::max<uint64_t>(1, step / c.slot_size);
  auto extend = [&] {
    // The records first: a slot never exists without room for its record.
    const auto rec = static_cast<off_t>(sizeof(Record));
    int rc = ::fallocate(f.idx_fd, 0, static_cast<off_t>(c.file_slots) * rec,
                         static_cast<off_t>(grow) * rec);
    if (rc != 0 && errno == EOPNOTSUPP)
      rc = ::ftruncate(f.idx_fd, static_cast<off_t>(c.file_slots + grow) * rec);
    if (rc != 0) return rc;
    rc = ::fallocate(f.fd, 0, static_cast<off_t>(c.file_slots * c.slot_size),
                     static_cast<off_t>(grow * c.slot_size));
    if (rc != 0 && errno == EOPNOTSUPP)
      rc = ::ftruncate(f.fd, static_cast<off_t>((c.file_slots + grow) * c.slot_size));
    return rc;
  };
  int rc = extend();
  if (rc != 0 && errno == ENOSPC && grow > 1) {  // a nearly full disk: one slot at a time
    grow = 1;
    rc = extend();
  }
  if (rc == 0) {
    c.file_slots += grow;
    return KVTIER_OK;
  }
  const int err = errno;
  // The disk is full: reuse the slot of this size class's least recently used page.
  if (evict_from_class(cls)) return KVTIER_OK;
  log().warn("file tier: cannot grow {}/pages-{}.dat: {}", dir_, c.slot_size, std::strerror(err));
  return err == ENOSPC || err == EDQUOT || err == EFBIG ? KVTIER_ERR_NO_SPACE : KVTIER_ERR_IO;
}

int PageFiles::reserve(uint32_t cls, uint32_t* node) {
  SharedIndex& ix = *index_;
  IndexHeader& h = ix.h();
  ClassInfo& c = ix.klass(cls);
  if (c.slot_size > h.capacity) return KVTIER_ERR_NO_SPACE;
  for (uint64_t k = 0;
       h.live_bytes + c.slot_size > h.capacity && h.lru_tail != kNil && k < ix.max_nodes(); ++k)
    evict_one();
  if (h.live_bytes + c.slot_size > h.capacity) reclaim_dead();
  if (h.live_bytes + c.slot_size > h.capacity) return KVTIER_ERR_NO_SPACE;  // all in flight
  uint32_t n = ix.pop_free(cls);
  if (n == kNil) {
    if (c.used_slots == c.file_slots) {
      if (const int rc = grow(cls)) return rc;
      n = ix.pop_free(cls);  // grow() may have freed one instead
    }
  }
  if (n == kNil) {
    n = ix.new_node();
    // Nodes are bound to slots; when all are handed out, a free one of another class moves
    // here (its old slot stays unused until a clear or a fresh open). One exists: every node
    // in use holds at least 4 KiB of the capacity, and there are more nodes than that allows.
    // (A disk too full for the index's next nodes: the same, or this class's LRU page.)
    for (uint32_t k = 0; n == kNil && k < h.nclasses; ++k) n = ix.pop_free(k);
    if (n != kNil) {
      Node& x = ix.node(n);
      x.cls = cls;
      x.slot = c.used_slots++;
    } else if (evict_from_class(cls)) {
      n = ix.pop_free(cls);
    } else {
      return KVTIER_ERR_NO_SPACE;
    }
  }
  h.live_bytes += c.slot_size;
  *node = n;
  return KVTIER_OK;
}

}  // namespace kvtier
