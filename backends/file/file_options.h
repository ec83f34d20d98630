// The file tier's settings (KVTIER_FILE_*), its section of the Config:
// config.section<FileOptions>(). Registered in options.cpp.
#pragma once

#include <cstdint>
#include <string>

namespace kvtier {

// The file tier's folder when KVTIER_FILE_DIR is unset: one that is the user's own, not a
// world-writable one another user could prepare: $XDG_CACHE_HOME/kvtier, else
// $HOME/.cache/kvtier, else /var/tmp/kvtier-<uid> (refused if someone else made it).
std::string default_file_dir();

struct FileOptions {
  // KVTIER_FILE_DIR: where the file tier keeps its page files (one folder per namespace).
  std::string dir = default_file_dir();
  // KVTIER_FILE_CAPACITY: bytes of pages the file tier may hold before it evicts.
  uint64_t capacity = 16ull << 30;
  // KVTIER_FILE_QUEUE_DEPTH: I/Os in flight per io_uring (1..4096).
  unsigned queue_depth = 32;
  // KVTIER_FILE_DIRECT: auto (O_DIRECT unless the filesystem refuses it) | off (page cache).
  bool direct = true;
  // KVTIER_FILE_COMPRESSION: none | zstd[:level] (level -7..19, default 1). A page is stored
  // compressed only when that saves at least 1/8 of it. 0 here means none.
  int zstd_level = 0;
  // KVTIER_FILE_SYNC: on (a page is visible only once fdatasync says it is durable) | off.
  bool sync = true;
  // KVTIER_FILE_LOCK_TIMEOUT_MS: the longest a call waits for another process on the folder
  // (its lock, a key it is writing, a clear); then the call fails with KVTIER_ERR_TIMEOUT.
  unsigned lock_timeout_ms = 2000;
};

}  // namespace kvtier
