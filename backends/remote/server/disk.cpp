// kvtier-server's pages on disk (--tiers memory,file): the library's file tier (through the
// tier registry), one per client namespace, under the arena. A page is written through to it
// before its PUT or COMMIT is answered, so it outlives an eviction from the arena and a restart
// of the server; a page the disk refused is refused to the client too, never acknowledged. A GET
// or LOOKUP of a page the arena lacks reads it from disk into an arena slot first (promotion),
// then serves it as any arena page: the RDMA path keeps reading the arena one-sided, and the
// file tier checks the page's checksum on the way, as it does in the library.
//
// Each namespace with pages on disk has its own folder, "ns-<16 hex digits>", in --file-dir,
// made by its first write: reads (EXISTS, GET, LOOKUP), REMOVE and CLEAR never make one. The
// folders together stay within --file-capacity (the bytes their files take on disk): a write
// that needs more room first deletes the least recently used other namespaces whole. Their file
// tiers are open while recently used, at most max_open_disks_ at once (the server's fd budget,
// loop.cpp), the least recently used closed first; all held by requests in flight: refused.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "log.h"
#include "server.h"
#include "tier.h"

namespace kvtier {

namespace {
constexpr uint64_t kScratch = 64ull << 20;  // bytes of pages read from disk at once

std::string ns_folder(uint64_t ns) {
  char name[32];
  std::snprintf(name, sizeof name, "ns-%016" PRIx64, ns);
  return name;
}

// A subfolder of `parent`, never through a link; -1 if there is none.
int open_folder(int parent, const char* name) {
  return ::openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

// Bytes the files under folder `fd` take on disk (its subfolders' too), or deletes them all
// when `erase`; closes fd.
uint64_t walk(int fd, bool erase, int depth = 0) {
  DIR* d = fd >= 0 ? ::fdopendir(fd) : nullptr;
  if (!d) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  uint64_t bytes = 0;
  while (dirent* e = ::readdir(d)) {
    if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode) && depth < 2)
      bytes += walk(open_folder(::dirfd(d), e->d_name), erase, depth + 1);
    else
      bytes += static_cast<uint64_t>(st.st_blocks) * 512;
    if (erase) ::unlinkat(::dirfd(d), e->d_name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);
  }
  ::closedir(d);
  return bytes;
}
}  // namespace

uint64_t Server::folder_bytes(uint64_t ns, bool erase) {
  const std::string name = ns_folder(ns);
  const uint64_t bytes = walk(open_folder(disk_root_, name.c_str()), erase);
  if (erase) ::unlinkat(disk_root_, name.c_str(), AT_REMOVEDIR);
  return bytes;
}

Status Server::open_disk() {
  if (!opt_.file) return {};
  // The file tier checks (and makes) the folder as it opens a namespace in it: opening one of
  // the server's own now makes a bad --file-dir fail the start, not the first request.
  Config c;
  c.file_dir = opt_.file_dir;
  c.file_capacity = opt_.file_capacity;
  c.ns = "kvtier-server-start-check";
  std::unique_ptr<Tier> probe;
  Status s = make_tier("file", c, &probe);
  if (!s.is_ok()) return s;
  disk_root_ = ::open(opt_.file_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (disk_root_ < 0)
    return {KVTIER_ERR_IO, "cannot open --file-dir " + opt_.file_dir + ": " + std::strerror(errno)};
  // The namespaces already on disk, oldest written first in the LRU.
  DIR* d = ::fdopendir(::dup(disk_root_));
  std::vector<std::pair<timespec, uint64_t>> found;
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    unsigned long long ns = 0;
    char tail = 0;
    struct stat st {};
    if (std::sscanf(e->d_name, "ns-%16llx%c", &ns, &tail) != 1 || ns_folder(ns) != e->d_name ||
        ::fstatat(disk_root_, e->d_name, &st, AT_SYMLINK_NOFOLLOW))
      continue;
    found.push_back({st.st_mtim, ns});
  }
  if (d) ::closedir(d);
  std::sort(found.begin(), found.end(), [](auto& a, auto& b) {
    return std::tie(a.first.tv_sec, a.first.tv_nsec) < std::tie(b.first.tv_sec, b.first.tv_nsec);
  });
  std::lock_guard lock(disk_mu_);
  for (auto& [when, ns] : found) {
    DiskNs& e = disks_[ns];
    disk_lru_.push_front(ns);
    e.lru = disk_lru_.begin();
    e.bytes = folder_bytes(ns, false);
    disk_bytes_ += e.bytes;
  }
  return {};
}

std::shared_ptr<Tier> Server::disk(uint64_t ns, bool create) {
  if (!opt_.file) return nullptr;
  std::lock_guard lock(disk_mu_);
  auto it = disks_.find(ns);
  if (it == disks_.end()) {
    if (!create) return nullptr;  // a read makes nothing on disk
    const std::string name = ns_folder(ns);
    if (::mkdirat(disk_root_, name.c_str(), 0700) != 0 && errno != EEXIST) {
      warn_limited("server: cannot make a namespace folder in " + opt_.file_dir + ": " +
                   std::strerror(errno));
      return nullptr;
    }
    it = disks_.try_emplace(ns).first;
    disk_lru_.push_front(ns);
    it->second.lru = disk_lru_.begin();
  }
  DiskNs& e = it->second;
  disk_lru_.splice(disk_lru_.begin(), disk_lru_, e.lru);
  if (e.tier) return e.tier;
  // Within the fd budget: close the least recently used tiers no request is using.
  for (auto k = disk_lru_.rbegin(); k != disk_lru_.rend() && disks_open_ >= max_open_disks_; ++k) {
    DiskNs& old = disks_[*k];
    if (old.tier && old.tier.use_count() == 1) old.tier.reset();
  }
  if (disks_open_ >= max_open_disks_) {
    warn_limited("server: " + std::to_string(max_open_disks_) +
                 " namespaces are busy on disk; a request of another one is refused there");
    return nullptr;
  }
  Config c;
  c.file_dir = opt_.file_dir + "/" + ns_folder(ns);
  c.file_capacity = opt_.file_capacity;
  c.ns = "pages";
  std::unique_ptr<Tier> tier;
  Status s = make_tier("file", c, &tier);
  if (!s.is_ok()) {
    warn_limited("server: no file tier for a namespace: " + s.message());
    return nullptr;
  }
  ++disks_open_;
  e.tier = std::shared_ptr<Tier>(tier.release(), [this](Tier* t) {
    delete t;
    --disks_open_;
  });
  return e.tier;
}

void Server::make_disk_room(uint64_t ns, uint64_t bytes) {
  std::lock_guard lock(disk_mu_);
  for (auto k = disk_lru_.rbegin();
       k != disk_lru_.rend() && disk_bytes_ + bytes > opt_.file_capacity;) {
    const uint64_t victim = *k;
    DiskNs& e = disks_[victim];
    if (victim == ns || (e.tier && e.tier.use_count() > 1)) {
      ++k;
      continue;
    }
    e.tier.reset();  // closed before its files go
    folder_bytes(victim, true);
    disk_bytes_ -= std::min(disk_bytes_, e.bytes);
    k = std::make_reverse_iterator(disk_lru_.erase(e.lru));
    disks_.erase(victim);
  }
}

void Server::measure_disk(uint64_t ns) {
  const uint64_t bytes = folder_bytes(ns, false);
  std::lock_guard lock(disk_mu_);
  auto it = disks_.find(ns);
  if (it == disks_.end()) return;
  disk_bytes_ = disk_bytes_ - std::min(disk_bytes_, it->second.bytes) + bytes;
  it->second.bytes = bytes;
}

void Server::write_through(uint64_t ns, std::span<const DiskPage> pages,
                           std::span<int32_t> results) {
  if (pages.empty()) return;
  uint64_t bytes = 0;
  for (const DiskPage& p : pages) bytes += p.length;
  make_disk_room(ns, bytes);
  std::shared_ptr<Tier> t = disk(ns, true);
  if (!t) {
    std::fill(results.begin(), results.end(), KVTIER_ERR_BUSY);
  } else {
    std::vector<Frag> frags;
    frags.reserve(pages.size());
    std::vector<PutOp> ops(pages.size());
    for (size_t i = 0; i < pages.size(); ++i) {
      frags.push_back({arena_ + pages[i].offset, pages[i].length});
      ops[i].id = pages[i].id;
      ops[i].frags = Frags(&frags[i], 1);
      ops[i].size = pages[i].length;
      ops[i].checksum = pages[i].checksum;
      ops[i].has_checksum = true;
    }
    t->put(ops);
    for (size_t i = 0; i < pages.size(); ++i) results[i] = ops[i].result;
    measure_disk(ns);
  }
  const auto failed = std::count_if(results.begin(), results.end(), [](int32_t r) { return r; });
  if (failed) {
    warn_limited(
        "server: " + std::to_string(failed) + " pages refused, not written to disk: " +
        code_name(*std::find_if(results.begin(), results.end(), [](int32_t r) { return r != 0; })));
    std::lock_guard lock(mu_);
    errors_ += static_cast<uint64_t>(failed);
  }
}

void Server::promote(uint64_t ns, std::span<const KeyId> ids) {
  std::shared_ptr<Tier> t = disk(ns, false);
  if (!t) return;
  std::vector<KeyId> missing;
  {
    std::lock_guard lock(mu_);
    for (const KeyId& id : ids)
      if (!has_page({ns, id})) missing.push_back(id);
  }
  // Pages of unknown size: read with room for the largest seen, more if the disk says so.
  size_t room = std::max<size_t>(largest_page_.load(), 1 << 20);
  while (!missing.empty()) {
    const size_t n = std::min(missing.size(), std::max<size_t>(1, kScratch / room));
    std::unique_ptr<std::byte[]> scratch(new std::byte[n * room]);
    std::vector<Frag> frags;
    std::vector<GetOp> ops(n);
    for (size_t i = 0; i < n; ++i) frags.push_back({scratch.get() + i * room, room});
    for (size_t i = 0; i < n; ++i) {
      ops[i].id = missing[i];
      ops[i].frags = Frags(&frags[i], 1);
      ops[i].capacity = room;
    }
    t->get(ops);
    std::vector<KeyId> larger;
    std::lock_guard lock(mu_);
    for (GetOp& op : ops) {
      if (op.result == KVTIER_ERR_BUFFER_TOO_SMALL) larger.push_back(op.id);
      uint64_t offset = 0, slot = 0;
      if (op.result <= 0 || has_page({ns, op.id})) continue;
      const uint64_t len = static_cast<uint64_t>(op.result);
      if (!allocate(len, &offset, &slot)) continue;  // the arena is full of pinned pages
      std::memcpy(arena_ + offset, op.frags[0].ptr, len);
      publish({ns, op.id}, offset, slot, len, op.checksum);
    }
    missing.erase(missing.begin(), missing.begin() + static_cast<ptrdiff_t>(n));
    if (!larger.empty() && room < wire::kMaxValue) {
      room = std::min<size_t>(room * 4, wire::kMaxValue);
      missing.insert(missing.end(), larger.begin(), larger.end());
    }
  }
}

void Server::disk_exists(uint64_t ns, std::span<const KeyId> ids, std::span<uint8_t> present) {
  std::shared_ptr<Tier> t = disk(ns, false);
  if (!t) return;
  std::vector<KeyId> ask;
  for (size_t i = 0; i < ids.size(); ++i)
    if (!present[i]) ask.push_back(ids[i]);
  if (ask.empty()) return;
  std::vector<uint8_t> on_disk(ask.size());
  t->exists(ask, on_disk);
  for (size_t i = 0, k = 0; i < ids.size(); ++i)
    if (!present[i]) present[i] = on_disk[k++];
}

void Server::disk_remove(uint64_t ns, std::span<const KeyId> ids, std::span<int32_t> results) {
  std::shared_ptr<Tier> t = disk(ns, false);
  if (!t) return;
  std::vector<int> on_disk(ids.size());
  t->remove(ids, on_disk);
  for (size_t i = 0; i < ids.size(); ++i)
    if (on_disk[i] == KVTIER_OK) results[i] = KVTIER_OK;
}

void Server::disk_clear(uint64_t ns) {
  if (std::shared_ptr<Tier> t = disk(ns, false)) {
    t->clear();
    measure_disk(ns);
  }
}

}  // namespace kvtier
