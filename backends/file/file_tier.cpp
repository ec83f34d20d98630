// The tier's calls, and the process-wide table of open namespaces: a namespace's folder, its
// PageFiles shared by the stores of one process.
#include "backends/file/file_tier.h"

#include <unistd.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "backends/file/file_options.h"
#include "src/log.h"
#include "backends/file/page_files.h"
#include "src/process.h"
#include "backends/file/safe_dir.h"

namespace kvtier {

namespace {

// A namespace's folder is named by a hash of its name, which stays inside (NAME): the names of
// the folders show no tenant or model to whoever lists the parent.
std::string dir_name(const std::string& ns) {
  const KeyId id = key_id(0x6b76646972 /* "kvdir" */, ns);
  char name[40];
  std::snprintf(name, sizeof name, "ns-%016llx%016llx", static_cast<unsigned long long>(id.hi),
                static_cast<unsigned long long>(id.lo));
  return name;
}

// The folder the file tier uses: KVTIER_FILE_DIR, or when that is left to its default and
// another user took the default (made it first, or left it open), the first of default-1 ..
// default-8 that is the caller's or that it can make, so every process of the user finds the
// same one. A KVTIER_FILE_DIR that was set is used as it is, or refused.
std::string usable_dir(const std::string& dir) {
  if (dir != default_file_dir()) return dir;
  for (int k = 0; k <= 8; ++k) {
    const std::string candidate = k ? dir + "-" + std::to_string(k) : dir;
    int fd = -1;
    Status s = open_private_dir(candidate, &fd);
    if (s.is_ok()) {
      ::close(fd);
      return candidate;
    }
    if (s.code() != KVTIER_ERR_DENIED) return dir;  // not another user's doing: said at open
    log().warn("file tier: the default folder is not usable ({}); trying the next one",
               s.message());
  }
  return dir;
}

}  // namespace

void FileTier::put(std::span<PutOp> ops) {
  files_->put(ops);
}
void FileTier::get(std::span<GetOp> ops) {
  files_->get(ops);
}
void FileTier::exists(std::span<const KeyId> ids, std::span<uint8_t> present) {
  files_->exists(ids, present);
}
void FileTier::remove(std::span<const KeyId> ids, std::span<int> results) {
  files_->remove(ids, results);
}
Status FileTier::clear() {
  return files_->clear();
}
TierStats FileTier::stats() const {
  return files_->stats();
}

Status open_page_files(const Config& config, std::shared_ptr<PageFiles>* out) {
  // Stores of one process on the same namespace share one PageFiles (one shared flock). A forked
  // child opens its own: the parent's (rings, flock, pid) are not the child's.
  static std::mutex mu;
  static std::map<std::pair<std::string, uint64_t>, std::weak_ptr<PageFiles>> open;
  std::lock_guard lock(mu);
  const std::string root = usable_dir(config.section<FileOptions>().dir);
  const std::string path = root + "/" + dir_name(config.ns);
  const auto key = std::make_pair(path, fork_generation());
  if (auto existing = open[key].lock()) {
    *out = std::move(existing);
    return {};
  }
  Status s = PageFiles::open(config, root, path, out);
  if (s.is_ok()) open[key] = *out;
  return s;
}

namespace {
Status make_file_tier(const Config& config, std::unique_ptr<Tier>* out) {
  std::shared_ptr<PageFiles> files;
  Status s = open_page_files(config, &files);
  if (!s.is_ok()) return s;
  *out = std::make_unique<FileTier>(std::move(files));
  return {};
}
}  // namespace

KVTIER_REGISTER_TIER("file", make_file_tier);

}  // namespace kvtier
