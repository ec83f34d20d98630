// The file tier's settings (KVTIER_FILE_*). Built also where the tier is not (no liburing), so
// that a config naming them reads the same on every build; KVTIER_TIERS=file then says the build
// has no file tier.
#include <cstdlib>

#include "config.h"

namespace kvtier {

namespace {

Option<Config> compression_option() {
  return {"FILE_COMPRESSION", "", "none, zstd or zstd:LEVEL (LEVEL -7..19, not 0)",
          [](Config& c, const std::string& v) {
            const std::string l = lower(v);
            if (l == "none" || l == "zstd") {
              c.file_zstd_level = l == "zstd" ? 1 : 0;
              return true;
            }
            if (l.rfind("zstd:", 0) != 0) return false;
            char* end = nullptr;
            const long level = std::strtol(l.c_str() + 5, &end, 10);
            if (*end || end == l.c_str() + 5 || level < -7 || level > 19 || level == 0)
              return false;
            c.file_zstd_level = static_cast<int>(level);
            return true;
          }};
}

}  // namespace

KVTIER_REGISTER_OPTIONS(
    file, {text_option<Config>("FILE_DIR", "", &Config::file_dir, "an absolute path",
                               [](const std::string& v) { return !v.empty() && v[0] == '/'; }),
           size_option<Config>("FILE_CAPACITY", "", &Config::file_capacity, 1ull << 20),
           integer_option<Config>("FILE_QUEUE_DEPTH", "", &Config::file_queue_depth, 1, 4096),
           switch_option<Config>("FILE_DIRECT", "", &Config::file_direct, "auto", "off"),
           compression_option(),
           switch_option<Config>("FILE_SYNC", "", &Config::file_sync, "on", "off"),
           millis_option<Config>("FILE_LOCK_TIMEOUT_MS", "", &Config::file_lock_timeout_ms)});

}  // namespace kvtier
