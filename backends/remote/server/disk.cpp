// kvtier-server's pages on disk (--tiers memory,file): the library's file tier (through the
// tier registry), one per client namespace, under the arena. A page is written through to it
// before its PUT or COMMIT is answered, so it outlives an eviction from the arena and a restart
// of the server. A GET or LOOKUP of a page the arena lacks reads it from disk into an arena slot
// first (promotion), then serves it as any arena page: the RDMA path keeps reading the arena
// one-sided, and the file tier checks the page's checksum on the way, as it does in the library.
#include <algorithm>

#include "log.h"
#include "server.h"
#include "tier.h"

namespace kvtier {

namespace {
constexpr uint64_t kScratch = 64ull << 20;  // bytes of pages read from disk at once
// Namespaces with pages on disk: each costs a folder, its files and an index, and a client
// chooses its namespace, so past this many new ones are served from memory only.
constexpr size_t kMaxDiskNamespaces = 256;
}  // namespace

Tier* Server::disk(uint64_t ns) {
  if (!opt_.file) return nullptr;
  std::lock_guard lock(disk_mu_);
  auto it = disks_.find(ns);
  if (it != disks_.end()) return it->second.get();
  if (disks_.size() >= kMaxDiskNamespaces) {
    warn_limited("server: " + std::to_string(kMaxDiskNamespaces) +
                 " namespaces have pages on disk already; a new one is served from memory only");
    return nullptr;
  }
  Config c;
  c.file_dir = opt_.file_dir;
  c.file_capacity = opt_.file_capacity;
  char name[32];
  std::snprintf(name, sizeof name, "ns-%016llx", static_cast<unsigned long long>(ns));
  c.ns = name;
  std::unique_ptr<Tier> tier;
  Status s = make_tier("file", c, &tier);
  if (!s.is_ok()) {  // the arena still serves; one line per namespace
    warn_limited("server: no file tier for a namespace: " + s.message());
    disks_[ns] = nullptr;
    return nullptr;
  }
  return (disks_[ns] = std::move(tier)).get();
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
  return make_tier("file", c, &probe);
}

void Server::write_through(uint64_t ns, std::span<const DiskPage> pages) {
  Tier* t = disk(ns);
  if (!t || pages.empty()) return;
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
  const auto failed = std::count_if(ops.begin(), ops.end(), [](auto& op) { return op.result; });
  if (failed) {
    warn_limited("server: " + std::to_string(failed) + " pages not written to disk: " +
                 code_name(std::find_if(ops.begin(), ops.end(), [](auto& op) {
                             return op.result != 0;
                           })->result));
    std::lock_guard lock(mu_);
    errors_ += static_cast<uint64_t>(failed);
  }
}

void Server::promote(uint64_t ns, std::span<const KeyId> ids) {
  Tier* t = disk(ns);
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
  Tier* t = disk(ns);
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
  Tier* t = disk(ns);
  if (!t) return;
  std::vector<int> on_disk(ids.size());
  t->remove(ids, on_disk);
  for (size_t i = 0; i < ids.size(); ++i)
    if (on_disk[i] == KVTIER_OK) results[i] = KVTIER_OK;
}

void Server::disk_clear(uint64_t ns) {
  if (Tier* t = disk(ns)) t->clear();
}

}  // namespace kvtier
