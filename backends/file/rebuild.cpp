// Filling the shared index from the records on disk: by the first process to open a namespace,
// and by the next locker after a process died holding the lock. One sequential read of every
// .idx file (64 bytes per slot), bounded by what the capacity lets the files hold.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "log.h"
#include "page_files.h"
#include "records.h"

namespace kvtier {

struct PageFiles::Found {
  Node node;
  bool kept;  // a write in flight of a live process
};

namespace {
Node live_node(const Record& r, uint64_t slot, uint32_t cls) {
  Node x{};
  x.key_hi = r.key_hi;
  x.key_lo = r.key_lo;
  x.length = r.length;
  x.checksum = r.checksum;
  x.seq = r.seq;
  x.stored = r.stored;
  x.slot = slot;
  x.cls = cls;
  x.state = kLive;
  x.compressed = (r.flags & kCompressed) != 0;
  return x;
}
}  // namespace

Status PageFiles::list_classes(std::vector<uint64_t>* sizes) {
  const int list_fd = ::openat(dir_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = list_fd >= 0 ? ::fdopendir(list_fd) : nullptr;
  if (!d && list_fd >= 0) ::close(list_fd);
  if (!d) return {KVTIER_ERR_IO, "cannot list " + dir_ + ": " + std::strerror(errno)};
  std::vector<std::string> stale;
  while (dirent* ent = ::readdir(d)) {
    unsigned long long size = 0;
    char tail[8] = {};
    const std::string name = ent->d_name;
    if (std::sscanf(name.c_str(), "pages-%llu.%4s", &size, tail) == 2 &&
        std::string(tail) == "dat" && size >= kBlock && size % kBlock == 0)
      sizes->push_back(size);
    else if (name.rfind("slots-", 0) == 0)  // the format before the .idx files
      stale.push_back(name);
  }
  ::closedir(d);
  for (const std::string& name : stale) {
    log().warn("file tier: {}/{} is in an older on-disk format; its pages are dropped", dir_, name);
    ::unlinkat(dir_fd_, name.c_str(), 0);
  }
  std::sort(sizes->begin(), sizes->end());
  return {};
}

Status PageFiles::rebuild(bool keep_writes) {
  SharedIndex& ix = *index_;
  IndexHeader& h = ix.h();
  std::vector<Found> found;
  if (keep_writes)
    for (uint64_t n = 0; n < std::min(h.nodes_used, ix.max_nodes()); ++n) {
      // The index may be damaged: only writes of a class with a slot size kept.
      const Node& x = ix.node(static_cast<uint32_t>(n));
      const uint32_t classes = std::min(h.nclasses, kMaxClasses);
      if (x.state == kReserved && x.cls < classes && h.classes[x.cls].slot_size >= kBlock &&
          h.classes[x.cls].slot_size % kBlock == 0 && !process_gone(x.owner, x.owner_start))
        found.push_back({x, true});
    }
  std::vector<uint64_t> sizes;
  for (const Found& f : found) sizes.push_back(h.classes[f.node.cls].slot_size);
  Status s = list_classes(&sizes);
  if (!s.is_ok()) return s;
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  std::vector<ClassInfo> old(h.classes, h.classes + std::min(h.nclasses, kMaxClasses));
  for (Found& f : found)  // from the old class numbers to the new ones
    f.node.cls = static_cast<uint32_t>(
        std::lower_bound(sizes.begin(), sizes.end(), old[f.node.cls].slot_size) - sizes.begin());
  ix.reset(!keep_writes);
  std::vector<std::vector<uint8_t>> used(sizes.size());
  uint64_t scanned = 0;
  for (uint64_t size : sizes) {
    const uint32_t cls = ix.class_of(size);
    if (cls == kNil) break;
    if (!(s = scan_class(cls, !keep_writes, &found, &used[cls])).is_ok()) return s;
    scanned += used[cls].size();
  }
  place(found, used);
  while (h.live_bytes > h.capacity && h.lru_tail != kNil) evict_one();
  log().info("file tier: {} indexed with {} pages ({} slots scanned)", dir_, h.keys, scanned);
  return {};
}

// Reads one size class's records into *found, past the slots that writes in flight (already in
// *found) hold; *used gets one entry per slot.
Status PageFiles::scan_class(uint32_t cls, bool cut, std::vector<Found>* found,
                             std::vector<uint8_t>* used) {
  IndexHeader& h = index_->h();
  const uint64_t size = h.classes[cls].slot_size;
  ClassFiles f;
  Status s = files_of(size, &f);
  if (!s.is_ok()) return s;
  struct stat st {};
  if (::fstat(f.fd, &st) != 0)
    return {KVTIER_ERR_IO, std::string("fstat: ") + std::strerror(errno)};
  uint64_t slots = static_cast<uint64_t>(st.st_size) / size;
  // Slots past what the capacity could ever use are cut off the files, so a huge (or sparse)
  // page file costs neither memory nor time here. grow() goes at most kGrowBytes past it.
  const uint64_t max_slots = (h.capacity + kGrowBytes) / size;
  if (slots > max_slots && cut) {
    log().warn(
        "file tier: {}/pages-{}.dat holds {} slots, more than a capacity of {} bytes "
        "uses; cut to {}",
        dir_, size, slots, h.capacity, max_slots);
    slots = max_slots;
    if (::ftruncate(f.fd, static_cast<off_t>(slots * size)) != 0 ||
        ::ftruncate(f.idx_fd, static_cast<off_t>(slots * sizeof(Record))) != 0)
      return {KVTIER_ERR_IO, "cannot shorten a page file in " + dir_ + ": " + strerror(errno)};
  }
  h.classes[cls].file_slots = h.classes[cls].used_slots = slots;
  used->assign(slots, 0);
  for (const Found& k : *found)
    if (k.kept && k.node.cls == cls && k.node.slot < slots) (*used)[k.node.slot] = 1;
  s = read_records(f.idx_fd, slots, size, [&](uint64_t slot, const Record& r) {
    if (!(*used)[slot]) found->push_back({live_node(r, slot, cls), false});
  });
  if (!s.is_ok()) return {s.code(), s.message() + " in " + dir_};
  return {};
}

// Gives every write in flight and every page found a node, then the free slots.
void PageFiles::place(std::vector<Found>& found, std::vector<std::vector<uint8_t>>& used) {
  SharedIndex& ix = *index_;
  IndexHeader& h = ix.h();
  // Writes in flight first, then the pages oldest first (the newest end at the LRU front).
  std::stable_sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return a.kept != b.kept ? a.kept : a.node.seq < b.node.seq;
  });
  for (const Found& f : found) {
    h.seq = std::max(h.seq, f.node.seq + 1);
    if (f.node.cls >= h.nclasses || f.node.slot >= used[f.node.cls].size()) continue;
    const uint32_t n = ix.find(f.node.key()) == kNil ? ix.new_node() : kNil;
    if (n == kNil) {
      // A second copy of a key (the first one written is the one served), or more pages
      // than the capacity holds: the record goes.
      const ClassFiles cf = files_of_class(f.node.cls);
      if (!f.kept && cf.idx_fd >= 0) write_record(cf.idx_fd, f.node.slot, Record{});
      continue;
    }
    ix.node(n) = f.node;
    used[f.node.cls][f.node.slot] = 1;
    ix.insert(n);
    h.live_bytes += h.classes[f.node.cls].slot_size;
    if (f.kept) {
      ++h.reserved;
    } else {
      ix.lru_push_front(n);
      ++h.keys;
    }
  }
  for (uint32_t cls = 0; cls < h.nclasses; ++cls)
    for (uint64_t slot = 0; slot < used[cls].size(); ++slot) {
      if (used[cls][slot]) continue;
      const uint32_t n = ix.new_node();
      if (n == kNil) return;  // the rest stay unused until a clear
      ix.node(n).cls = cls;
      ix.node(n).slot = slot;
      ix.push_free(n);
    }
}

}  // namespace kvtier
