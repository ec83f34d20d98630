// The file tier's settings (KVTIER_FILE_*, file_options.h). Built also where the tier is not (no
// liburing), so that a config naming them reads the same on every build; KVTIER_TIERS=file then
// says the build has no file tier.
#include <unistd.h>

#include <cstdlib>

#include "src/config.h"
#include "backends/file/file_options.h"

namespace kvtier {

std::string default_file_dir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return std::string(xdg) + "/kvtier";
  const char* home = std::getenv("HOME");
  if (home && home[0] == '/' && home[1]) return std::string(home) + "/.cache/kvtier";
  return "/var/tmp/kvtier-" + std::to_string(::geteuid());
}

namespace {

Option<FileOptions> compression_option() {
  return {"FILE_COMPRESSION", "", "none, zstd or zstd:LEVEL (LEVEL -7..19, not 0)",
          [](FileOptions& o, const std::string& v) {
            const std::string l = lower(v);
            if (l == "none" || l == "zstd") {
              o.zstd_level = l == "zstd" ? 1 : 0;
              return true;
            }
            if (l.rfind("zstd:", 0) != 0) return false;
            char* end = nullptr;
            const long level = std::strtol(l.c_str() + 5, &end, 10);
            if (*end || end == l.c_str() + 5 || level < -7 || level > 19 || level == 0)
              return false;
            o.zstd_level = static_cast<int>(level);
            return true;
          }};
}

using O = FileOptions;

}  // namespace

KVTIER_REGISTER_OPTIONS(
    file, {text_option<O>("FILE_DIR", "", &O::dir, "an absolute path",
                          [](const std::string& v) { return !v.empty() && v[0] == '/'; }),
           size_option<O>("FILE_CAPACITY", "", &O::capacity, 1ull << 20),
           integer_option<O>("FILE_QUEUE_DEPTH", "", &O::queue_depth, 1, 4096),
           switch_option<O>("FILE_DIRECT", "", &O::direct, "auto", "off"), compression_option(),
           switch_option<O>("FILE_SYNC", "", &O::sync, "on", "off"),
           millis_option<O>("FILE_LOCK_TIMEOUT_MS", "", &O::lock_timeout_ms)});

}  // namespace kvtier
