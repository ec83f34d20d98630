#include "src/config.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string_view>

#include "src/log.h"

extern char** environ;

namespace kvtier {

namespace {

struct Registered {
  const char* owner;
  Option<Config> option;
};

// Filled at static initialisation (each owner's KVTIER_REGISTER_OPTIONS), read-only after.
std::vector<Registered>& registry() {
  static std::vector<Registered> options;
  return options;
}

// Each section's default constructor, by slot; filled like the options, read-only after.
std::vector<std::any (*)()>& section_makers() {
  static std::vector<std::any (*)()> makers;
  return makers;
}

const Option<Config>* find_option(const std::string& name) {
  for (const auto& r : registry())
    if (name == r.option.name) return &r.option;
  return nullptr;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

// The core's own settings; the tiers' are beside their factories.
std::vector<Option<Config>> core_options() {
  Option<Config> tiers{
      "TIERS", "", "a comma list of tier names, each at most once, e.g. memory,file",
      [](Config& c, const std::string& v) {
        std::vector<std::string> names;
        size_t start = 0;
        while (start <= v.size()) {
          size_t comma = v.find(',', start);
          if (comma == std::string::npos) comma = v.size();
          std::string name = lower(trim(std::string_view(v).substr(start, comma - start)));
          if (name.empty() || std::find(names.begin(), names.end(), name) != names.end())
            return false;
          names.push_back(name);
          start = comma + 1;
        }
        c.tiers = std::move(names);
        return true;
      }};
  Option<Config> policy{
      "WRITE_POLICY", "", "write_through or write_back", [](Config& c, const std::string& v) {
        const std::string p = lower(v);
        if (p != "write_through" && p != "write_back") return false;
        c.write_policy = p == "write_back" ? WritePolicy::kWriteBack : WritePolicy::kWriteThrough;
        return true;
      }};
  auto ns = text_option<Config>("NAMESPACE", "", &Config::ns, "at most 255 bytes",
                                [](const std::string& v) { return v.size() <= 255; });
  return {tiers,
          policy,
          ns,
          log_level_option<Config>("LOG_LEVEL", "", &Config::log_level),
          integer_option<Config>("ASYNC_THREADS", "", &Config::async_threads, 1, 64),
          integer_option<Config>("ASYNC_DEPTH", "", &Config::async_depth, 1, 65536)};
}

KVTIER_REGISTER_OPTIONS(core, core_options());

// The variables read elsewhere by design: the Python shim's (the library path, the Mooncake
// drop-in's opt-in), kvtier-server's own, the tests'.
bool read_elsewhere(const std::string& name) {
  return name == "LIBRARY" || name == "MOONCAKE_DROPIN" || name.rfind("TEST_", 0) == 0 ||
         name.rfind("SERVER_", 0) == 0;
}

Status apply_overrides(std::string_view rest, Config& c) {
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
    const Option<Config>* o = find_option(name);
    if (!o) return {KVTIER_ERR_CONFIG, "unknown setting '" + name + "' in config string"};
    Status s = apply(*o, c, item.substr(eq + 1), Source::kConfigString);
    if (!s.is_ok()) return s;
  }
  return {};
}

}  // namespace

size_t add_section(std::any (*make)()) {
  section_makers().push_back(make);
  return section_makers().size() - 1;
}

Config::Config() {
  sections_.reserve(section_makers().size());
  for (auto make : section_makers()) sections_.push_back(make());
}

bool register_options(const char* owner, std::vector<Option<Config>> options) {
  for (auto& o : options) registry().push_back({owner, std::move(o)});
  return true;
}

std::vector<std::pair<std::string, std::string>> registered_options() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& r : registry()) out.emplace_back(r.option.name, r.owner);
  return out;
}

Status load_config(const char* overrides, Config* out) {
  Config c;
  for (const auto& r : registry()) {
    if (const char* v = environment_value(r.option.name)) {
      Status s = apply(r.option, c, v, Source::kEnvironment);
      if (!s.is_ok()) return s;
    }
  }
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    if (kv.substr(0, 7) != "KVTIER_") continue;
    std::string name(kv.substr(7, kv.find('=') - 7));
    if (!find_option(name) && !read_elsewhere(name))
      log().warn("ignoring unknown environment variable KVTIER_{}", name);
  }
  if (overrides) {
    Status s = apply_overrides(overrides, c);
    if (!s.is_ok()) return s;
  }
  *out = std::move(c);
  return {};
}

}  // namespace kvtier
