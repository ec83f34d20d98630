// kvtier-server's pages on disk (disk.h): a file tier per client namespace, their folders'
// LRU, the fd budget and the capacity.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "backends/remote/server/disk.h"
#include "backends/file/file_options.h"
#include "src/tier.h"

namespace kvtier {

namespace {
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

Disk::Disk(std::string dir, uint64_t capacity, LimitedWarnings& warnings)
    : dir_(std::move(dir)), capacity_(capacity), warnings_(warnings) {}

Disk::~Disk() {
  if (root_ >= 0) ::close(root_);
}

uint64_t Disk::folder_bytes(uint64_t ns, bool erase) {
  const std::string name = ns_folder(ns);
  const uint64_t bytes = walk(open_folder(root_, name.c_str()), erase);
  if (erase) ::unlinkat(root_, name.c_str(), AT_REMOVEDIR);
  return bytes;
}

Status Disk::open() {
  // The file tier checks (and makes) the folder as it opens a namespace in it: opening one of
  // the server's own now makes a bad --file-dir fail the start, not the first request.
  Config c;
  c.section<FileOptions>().dir = dir_;
  c.section<FileOptions>().capacity = capacity_;
  c.ns = "kvtier-server-start-check";
  std::unique_ptr<Tier> probe;
  Status s = make_tier("file", c, &probe);
  if (!s.is_ok()) return s;
  root_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (root_ < 0)
    return {KVTIER_ERR_IO, "cannot open --file-dir " + dir_ + ": " + std::strerror(errno)};
  // The namespaces already on disk, oldest written first in the LRU.
  DIR* d = ::fdopendir(::dup(root_));
  std::vector<std::pair<timespec, uint64_t>> found;
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    unsigned long long ns = 0;
    char tail = 0;
    struct stat st {};
    if (std::sscanf(e->d_name, "ns-%16llx%c", &ns, &tail) != 1 || ns_folder(ns) != e->d_name ||
        ::fstatat(root_, e->d_name, &st, AT_SYMLINK_NOFOLLOW))
      continue;
    found.push_back({st.st_mtim, ns});
  }
  if (d) ::closedir(d);
  std::sort(found.begin(), found.end(), [](auto& a, auto& b) {
    return std::tie(a.first.tv_sec, a.first.tv_nsec) < std::tie(b.first.tv_sec, b.first.tv_nsec);
  });
  std::lock_guard lock(mu_);
  for (auto& [when, ns] : found) {
    Namespace& e = namespaces_[ns];
    lru_.push_front(ns);
    e.lru = lru_.begin();
    e.bytes = folder_bytes(ns, false);
    bytes_ += e.bytes;
  }
  return {};
}

std::shared_ptr<Tier> Disk::tier(uint64_t ns, bool create) {
  std::lock_guard lock(mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) {
    if (!create) return nullptr;  // a read makes nothing on disk
    const std::string name = ns_folder(ns);
    if (::mkdirat(root_, name.c_str(), 0700) != 0 && errno != EEXIST) {
      warnings_.warn("server: cannot make a namespace folder in " + dir_ + ": " +
                     std::strerror(errno));
      return nullptr;
    }
    it = namespaces_.try_emplace(ns).first;
    lru_.push_front(ns);
    it->second.lru = lru_.begin();
  }
  Namespace& e = it->second;
  lru_.splice(lru_.begin(), lru_, e.lru);
  if (e.tier) return e.tier;
  // Within the fd budget: close the least recently used tiers no request is using.
  for (auto k = lru_.rbegin(); k != lru_.rend() && open_ >= max_open_; ++k) {
    Namespace& old = namespaces_[*k];
    if (old.tier && old.tier.use_count() == 1) old.tier.reset();
  }
  if (open_ >= max_open_) {
    warnings_.warn("server: " + std::to_string(max_open_) +
                   " namespaces are busy on disk; a request of another one is refused there");
    return nullptr;
  }
  Config c;
  c.section<FileOptions>().dir = dir_ + "/" + ns_folder(ns);
  c.section<FileOptions>().capacity = capacity_;
  c.ns = "pages";
  std::unique_ptr<Tier> made;
  Status s = make_tier("file", c, &made);
  if (!s.is_ok()) {
    warnings_.warn("server: no file tier for a namespace: " + s.message());
    return nullptr;
  }
  ++open_;
  e.tier = std::shared_ptr<Tier>(made.release(), [this](Tier* t) {
    delete t;
    --open_;
  });
  return e.tier;
}

void Disk::make_room(uint64_t ns, uint64_t bytes) {
  std::lock_guard lock(mu_);
  for (auto k = lru_.rbegin(); k != lru_.rend() && bytes_ + bytes > capacity_;) {
    const uint64_t victim = *k;
    Namespace& e = namespaces_[victim];
    if (victim == ns || (e.tier && e.tier.use_count() > 1)) {
      ++k;
      continue;
    }
    e.tier.reset();  // closed before its files go
    folder_bytes(victim, true);
    bytes_ -= std::min(bytes_, e.bytes);
    k = std::make_reverse_iterator(lru_.erase(e.lru));
    namespaces_.erase(victim);
  }
}

void Disk::measure(uint64_t ns) {
  const uint64_t bytes = folder_bytes(ns, false);
  std::lock_guard lock(mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) return;
  bytes_ = bytes_ - std::min(bytes_, it->second.bytes) + bytes;
  it->second.bytes = bytes;
}

void Disk::write(uint64_t ns, std::span<const Page> pages, std::span<int32_t> results) {
  if (pages.empty()) return;
  uint64_t bytes = 0;
  for (const Page& p : pages) bytes += p.length;
  make_room(ns, bytes);
  std::shared_ptr<Tier> t = tier(ns, true);
  if (!t) {
    std::fill(results.begin(), results.end(), KVTIER_ERR_BUSY);
  } else {
    std::vector<Frag> frags;
    frags.reserve(pages.size());
    std::vector<PutOp> ops(pages.size());
    for (size_t i = 0; i < pages.size(); ++i) {
      frags.push_back({pages[i].bytes, pages[i].length});
      ops[i].id = pages[i].id;
      ops[i].frags = Frags(&frags[i], 1);
      ops[i].size = pages[i].length;
      ops[i].checksum = pages[i].checksum;
      ops[i].has_checksum = true;
    }
    t->put(ops);
    for (size_t i = 0; i < pages.size(); ++i) results[i] = ops[i].result;
    measure(ns);
  }
  const auto failed = std::count_if(results.begin(), results.end(), [](int32_t r) { return r; });
  if (failed)
    warnings_.warn(
        "server: " + std::to_string(failed) + " pages refused, not written to disk: " +
        code_name(*std::find_if(results.begin(), results.end(), [](int32_t r) { return r != 0; })));
}

void Disk::exists(uint64_t ns, std::span<const KeyId> ids, std::span<uint8_t> present) {
  std::shared_ptr<Tier> t = tier(ns, false);
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

void Disk::sizes(uint64_t ns, std::span<const KeyId> ids, std::span<int64_t> sizes) {
  std::shared_ptr<Tier> t = tier(ns, false);
  if (!t) return;
  std::vector<KeyId> ask;
  for (size_t i = 0; i < ids.size(); ++i)
    if (sizes[i] == KVTIER_ERR_NOT_FOUND) ask.push_back(ids[i]);
  if (ask.empty()) return;
  std::vector<int64_t> on_disk(ask.size(), KVTIER_ERR_NOT_FOUND);
  t->sizes(ask, on_disk);
  for (size_t i = 0, k = 0; i < ids.size(); ++i)
    if (sizes[i] == KVTIER_ERR_NOT_FOUND) sizes[i] = on_disk[k++];
}

void Disk::remove(uint64_t ns, std::span<const KeyId> ids, std::span<int32_t> results) {
  std::shared_ptr<Tier> t = tier(ns, false);
  if (!t) return;
  std::vector<int> on_disk(ids.size());
  t->remove(ids, on_disk);
  for (size_t i = 0; i < ids.size(); ++i)
    if (on_disk[i] == KVTIER_OK) results[i] = KVTIER_OK;
}

void Disk::clear(uint64_t ns) {
  if (std::shared_ptr<Tier> t = tier(ns, false)) {
    t->clear();
    measure(ns);
  }
}

uint64_t Disk::bytes() {
  std::lock_guard lock(mu_);
  return bytes_;
}

}  // namespace kvtier
