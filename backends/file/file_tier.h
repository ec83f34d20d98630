// The file tier: KV pages in a few large page files per namespace on local NVMe, moved by
// io_uring with O_DIRECT, straight from and into the engine's pool when it is 4 KiB-aligned
// and through pooled bounce buffers when it is not.
//
// On disk, KVTIER_FILE_DIR/<namespace>/ holds two files per size class: "pages-<bytes>.dat",
// cut into fixed slots that hold the pages' bytes and nothing else (so an aligned page goes
// to disk straight from the engine's pool), and "pages-<bytes>.idx", one 64-byte record per
// slot (key id, length, checksum of the page, sequence number, the record's own checksum).
// The index is shared by every process that has the namespace open (shared_index.h) and rebuilt
// from the .idx files, a sequential read of 64 bytes per slot, by the first process to open
// it. A page becomes visible (to every process at once) only after its slot is written and
// fdatasync'ed; its record follows through the page cache, so a power loss can forget recent
// pages (misses), and a torn or rotted page fails its checksum and reads as a miss.
#pragma once

#include <memory>

#include "src/tier.h"

namespace kvtier {

class PageFiles;

class FileTier final : public Tier {
 public:
  explicit FileTier(std::shared_ptr<PageFiles> files) : files_(std::move(files)) {}
  std::string_view name() const override { return "file"; }
  Caps caps() const override { return {.can_tear = true}; }
  void put(std::span<PutOp> ops) override;
  void get(std::span<GetOp> ops) override;
  void exists(std::span<const KeyId> ids, std::span<uint8_t> present) override;
  void remove(std::span<const KeyId> ids, std::span<int> results) override;
  Status clear() override;
  TierStats stats() const override;

 private:
  std::shared_ptr<PageFiles> files_;  // shared by every store of this process on the namespace
};

// Opens (or finds already open in this process) the page files of config's namespace.
Status open_page_files(const Config& config, std::shared_ptr<PageFiles>* out);

}  // namespace kvtier
