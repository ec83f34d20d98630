#include "config.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string_view>

#include "log.h"

extern char** environ;

namespace kvtier {

std::string default_file_dir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return std::string(xdg) + "/kvtier";
  const char* home = std::getenv("HOME");
  if (home && home[0] == '/' && home[1]) return std::string(home) + "/.cache/kvtier";
  return "/var/tmp/kvtier-" + std::to_string(::geteuid());
}

namespace {

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

// "on"/"off"-style settings; returns what it expected on a bad value.
std::string parse_switch(const std::string& v, const char* yes, const char* no, bool* out) {
  const std::string l = lower(v);
  if (l == yes || l == "1" || l == "true") {
    *out = true;
  } else if (l == no || l == "0" || l == "false") {
    *out = false;
  } else {
    return std::string(yes) + " or " + no;
  }
  return {};
}

bool host_port(const std::string& item) {
  const size_t colon = item.rfind(':');
  return !item.empty() && colon != std::string::npos && colon != 0 && colon + 1 != item.size() &&
         item.size() - colon <= 6 &&
         item.find_first_not_of("0123456789", colon + 1) == std::string::npos &&
         std::stoul(item.substr(colon + 1)) <= 65535;
}

std::string transport(const std::string& v, std::string* out) {
  const std::string l = lower(v);
  if (l != "auto" && l != "rdma" && l != "tcp") return "auto, rdma or tcp";
  *out = l;
  return {};
}

std::string millis(const std::string& v, unsigned* out) {
  uint64_t n = 0;
  if (!parse_size(v, &n).is_ok() || n < 1 || n > 3600000 || !std::isdigit(v.back()))
    return "milliseconds from 1 to 3600000";
  *out = static_cast<unsigned>(n);
  return {};
}

std::string token(const std::string& v, std::string* out) {
  if (v.size() > 256) return "at most 256 bytes";
  *out = v;
  return {};
}

// A setter returns an empty string on success, else what it expected.
using Setter = std::function<std::string(Config&, const std::string&)>;

struct Option {
  const char* name;  // without the KVTIER_ prefix
  Setter set;
};

const std::vector<Option>& options() {
  static const std::vector<Option> kOptions = {
      {"TIERS",
       [](Config& c, const std::string& v) -> std::string {
         std::vector<std::string> tiers;
         size_t start = 0;
         while (start <= v.size()) {
           size_t comma = v.find(',', start);
           if (comma == std::string::npos) comma = v.size();
           std::string name = lower(trim(std::string_view(v).substr(start, comma - start)));
           if (name.empty()) return "a comma list of tier names, e.g. memory,file";
           if (std::find(tiers.begin(), tiers.end(), name) != tiers.end())
             return "each tier at most once";
           tiers.push_back(name);
           start = comma + 1;
         }
         c.tiers = std::move(tiers);
         return {};
       }},
      {"WRITE_POLICY",
       [](Config& c, const std::string& v) -> std::string {
         std::string p = lower(v);
         if (p == "write_through") {
           c.write_policy = WritePolicy::kWriteThrough;
         } else if (p == "write_back") {
           c.write_policy = WritePolicy::kWriteBack;
         } else {
           return "write_through or write_back";
         }
         return {};
       }},
      {"NAMESPACE",
       [](Config& c, const std::string& v) -> std::string {
         if (v.size() > 255) return "at most 255 bytes";
         c.ns = v;
         return {};
       }},
      {"LOG_LEVEL",
       [](Config& c, const std::string& v) -> std::string {
         if (!valid_log_level(lower(v))) return "trace, debug, info, warn, error, critical or off";
         c.log_level = lower(v);
         return {};
       }},
      {"MEMORY_CAPACITY",
       [](Config& c, const std::string& v) -> std::string {
         uint64_t bytes = 0;
         if (!parse_size(v, &bytes).is_ok() || bytes == 0) return "a size such as 4GiB";
         c.memory_capacity = bytes;
         return {};
       }},
      {"FILE_DIR",
       [](Config& c, const std::string& v) -> std::string {
         if (v.empty() || v[0] != '/') return "an absolute path";
         c.file_dir = v;
         return {};
       }},
      {"FILE_CAPACITY",
       [](Config& c, const std::string& v) -> std::string {
         uint64_t bytes = 0;
         if (!parse_size(v, &bytes).is_ok() || bytes < (1u << 20)) return "a size of 1MiB or more";
         c.file_capacity = bytes;
         return {};
       }},
      {"FILE_QUEUE_DEPTH",
       [](Config& c, const std::string& v) -> std::string {
         uint64_t n = 0;
         if (!parse_size(v, &n).is_ok() || n < 1 || n > 4096 || !std::isdigit(v.back()))
           return "an integer from 1 to 4096";
         c.file_queue_depth = static_cast<unsigned>(n);
         return {};
       }},
      {"FILE_DIRECT",
       [](Config& c, const std::string& v) -> std::string {
         return parse_switch(v, "auto", "off", &c.file_direct);
       }},
      {"FILE_COMPRESSION",
       [](Config& c, const std::string& v) -> std::string {
         const std::string l = lower(v);
         const char* expect = "none, zstd or zstd:LEVEL (LEVEL -7..19, not 0)";
         if (l == "none") {
           c.file_zstd_level = 0;
         } else if (l == "zstd") {
           c.file_zstd_level = 1;
         } else if (l.rfind("zstd:", 0) == 0) {
           char* end = nullptr;
           long level = std::strtol(l.c_str() + 5, &end, 10);
           if (*end || end == l.c_str() + 5 || level < -7 || level > 19 || level == 0)
             return expect;
           c.file_zstd_level = static_cast<int>(level);
         } else {
           return expect;
         }
         return {};
       }},
      {"REMOTE_SERVERS",
       [](Config& c, const std::string& v) -> std::string {
         return parse_address_list(v, &c.remote_servers) ? "" : "a comma list of host:port";
       }},
      {"REMOTE_ETCD",
       [](Config& c, const std::string& v) -> std::string {
         return parse_address_list(v, &c.remote_etcd) ? "" : "a comma list of host:port";
       }},
      {"REMOTE_CLUSTER",
       [](Config& c, const std::string& v) -> std::string {
         if (!valid_cluster_name(v)) return "1..64 of [A-Za-z0-9_.-]";
         c.remote_cluster = v;
         return {};
       }},
      {"REMOTE_TRANSPORT",
       [](Config& c, const std::string& v) { return transport(v, &c.remote_transport); }},
      {"REMOTE_TIMEOUT_MS",
       [](Config& c, const std::string& v) { return millis(v, &c.remote_timeout_ms); }},
      {"REMOTE_TOKEN", [](Config& c, const std::string& v) { return token(v, &c.remote_token); }},
      {"P2P_LISTEN",
       [](Config& c, const std::string& v) -> std::string {
         if (!host_port(v)) return "host:port";
         c.p2p_listen = v;
         return {};
       }},
      {"P2P_TOKEN", [](Config& c, const std::string& v) { return token(v, &c.p2p_token); }},
      {"P2P_TRANSPORT",
       [](Config& c, const std::string& v) { return transport(v, &c.p2p_transport); }},
      {"P2P_TIMEOUT_MS",
       [](Config& c, const std::string& v) { return millis(v, &c.p2p_timeout_ms); }},
      {"REMOTE_REPLICAS",
       [](Config& c, const std::string& v) -> std::string {
         uint64_t n = 0;
         if (!parse_size(v, &n).is_ok() || n < 1 || n > 16 || !std::isdigit(v.back()))
           return "an integer from 1 to 16";
         c.remote_replicas = static_cast<unsigned>(n);
         return {};
       }},
      {"REMOTE_RDMA_TOS",
       [](Config& c, const std::string& v) -> std::string {
         uint64_t n = 0;
         if (!parse_size(v, &n).is_ok() || n > 255 || !std::isdigit(v.back()))
           return "an integer from 0 to 255";
         c.remote_rdma_tos = static_cast<int>(n);
         return {};
       }},
      {"FILE_SYNC",
       [](Config& c, const std::string& v) -> std::string {
         return parse_switch(v, "on", "off", &c.file_sync);
       }},
  };
  return kOptions;
}

const Option* find_option(const std::string& name) {
  for (const auto& o : options())
    if (name == o.name) return &o;
  return nullptr;
}

Status apply(Config& c, const Option& o, const std::string& value, const char* source) {
  std::string expected = o.set(c, trim(value));
  if (expected.empty()) return {};
  return {KVTIER_ERR_CONFIG, std::string("KVTIER_") + o.name + "='" + value + "' (" + source +
                                 ") is invalid: expected " + expected};
}

}  // namespace

bool parse_address_list(const std::string& text, std::vector<std::string>* out) {
  std::vector<std::string> list;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    item = trim(item);
    if (!host_port(item)) return false;
    list.push_back(item);
  }
  if (list.empty()) return false;
  *out = std::move(list);
  return true;
}

bool valid_cluster_name(const std::string& name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-';
  });
}

Status parse_size(const std::string& text, uint64_t* bytes) {
  std::string t = trim(text);
  size_t i = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i;
  if (i == 0 || i > 19) return {KVTIER_ERR_CONFIG, "not a size: '" + text + "'"};
  uint64_t n = std::strtoull(t.substr(0, i).c_str(), nullptr, 10);
  std::string unit = lower(trim(std::string_view(t).substr(i)));
  struct Unit {
    const char* name;
    uint64_t mult;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},
      {"b", 1},
      {"k", 1ull << 10},
      {"kib", 1ull << 10},
      {"kb", 1000},
      {"m", 1ull << 20},
      {"mib", 1ull << 20},
      {"mb", 1000000},
      {"g", 1ull << 30},
      {"gib", 1ull << 30},
      {"gb", 1000000000ull},
      {"t", 1ull << 40},
      {"tib", 1ull << 40},
      {"tb", 1000000000000ull},
  };
  for (const auto& u : kUnits) {
    if (unit != u.name) continue;
    if (n > UINT64_MAX / u.mult) return {KVTIER_ERR_CONFIG, "size overflows: '" + text + "'"};
    *bytes = n * u.mult;
    return {};
  }
  return {KVTIER_ERR_CONFIG, "unknown size unit in '" + text + "'"};
}

Status load_config(const char* overrides, Config* out) {
  Config c;
  for (const auto& o : options()) {
    std::string var = std::string("KVTIER_") + o.name;
    if (const char* v = std::getenv(var.c_str())) {
      Status s = apply(c, o, v, "environment");
      if (!s.is_ok()) return s;
    }
  }
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    if (kv.substr(0, 7) != "KVTIER_") continue;
    std::string name(kv.substr(7, kv.find('=') - 7));
    // Read elsewhere by design: the library path (Python shim), kvtier-server, the tests.
    if (!find_option(name) && name != "LIBRARY" && name.rfind("TEST_", 0) != 0 &&
        name.rfind("SERVER_", 0) != 0)
      log().warn("ignoring unknown environment variable KVTIER_{}", name);
  }
  if (overrides) {
    std::string_view rest(overrides);
    while (!rest.empty()) {
      size_t end = rest.find_first_of(";\n");
      std::string item = trim(rest.substr(0, end));
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
      if (item.empty()) continue;
      size_t eq = item.find('=');
      if (eq == std::string::npos)
        return {KVTIER_ERR_CONFIG, "config item '" + item + "' is not NAME=value"};
      std::string name = upper(trim(std::string_view(item).substr(0, eq)));
      if (name.rfind("KVTIER_", 0) == 0) name = name.substr(7);
      const Option* o = find_option(name);
      if (!o) return {KVTIER_ERR_CONFIG, "unknown setting '" + name + "' in config string"};
      Status s = apply(c, *o, item.substr(eq + 1), "config string");
      if (!s.is_ok()) return s;
    }
  }
  *out = std::move(c);
  return {};
}

}  // namespace kvtier
