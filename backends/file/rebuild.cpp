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

#include "src/log.h"
#include "backends/file/page_files.h"
#include "backends/file/records.h"

namespace kvtier {

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
  x.rotation = rotation_of(r);
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
  std::vector<FoundSlot> found;
  if (keep_writes) found = ix.writes_in_flight();
  std::vector<uint64_t> sizes;
  for (const FoundSlot& f : found) sizes.push_back(f.slot_size);
  Status s = list_classes(&sizes);
  if (!s.is_ok()) return s;
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  ix.reset(!keep_writes);
  uint64_t scanned = 0;
  for (uint64_t size : sizes) {
    if (ix.classes() == kMaxClasses) break;
    uint64_t slots = 0;
    if (!(s = scan_class(size, !keep_writes, &found, &slots)).is_ok()) return s;
    scanned += slots;
  }
  ix.place(found);
  log().info("file tier: {} indexed with {} pages ({} slots scanned)", dir_, ix.keys(), scanned);
  return {};
}

// Reads one size class's records into *found, past the slots that writes in flight (already in
// *found) hold, and adds the class to the index with its files' *slots.
Status PageFiles::scan_class(uint64_t size, bool cut, std::vector<FoundSlot>* found,
                             uint64_t* slots_out) {
  ClassFiles f;
  Status s = files_of(size, &f);
  if (!s.is_ok()) return s;
  struct stat st {};
  if (::fstat(f.fd, &st) != 0)
    return {KVTIER_ERR_IO, std::string("fstat: ") + std::strerror(errno)};
  uint64_t slots = static_cast<uint64_t>(st.st_size) / size;
  // Slots past what the capacity could ever use are cut off the files, so a huge (or sparse)
  // page file costs neither memory nor time here. grow() goes at most kGrowBytes past it.
  const uint64_t capacity = index_->capacity();
  const uint64_t max_slots = (capacity + kGrowBytes) / size;
  if (slots > max_slots && cut) {
    log().warn(
        "file tier: {}/pages-{}.dat holds {} slots, more than a capacity of {} bytes "
        "uses; cut to {}",
        dir_, size, slots, capacity, max_slots);
    slots = max_slots;
    if (::ftruncate(f.fd, static_cast<off_t>(slots * size)) != 0 ||
        ::ftruncate(f.idx_fd, static_cast<off_t>(slots * sizeof(Record))) != 0)
      return {KVTIER_ERR_IO, "cannot shorten a page file in " + dir_ + ": " + strerror(errno)};
  }
  const uint32_t cls = index_->add_class(size, slots);
  *slots_out = slots;
  std::vector<uint8_t> kept(slots, 0);
  for (const FoundSlot& k : *found)
    if (k.kept && k.slot_size == size && k.node.slot < slots) kept[k.node.slot] = 1;
  s = read_records(f.idx_fd, slots, size, [&](uint64_t slot, const Record& r) {
    if (!kept[slot]) found->push_back({live_node(r, slot, cls), size, false});
  });
  if (!s.is_ok()) return {s.code(), s.message() + " in " + dir_};
  return {};
}

}  // namespace kvtier
