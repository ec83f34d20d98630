#include "src/options.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <sstream>

#include "src/log.h"

namespace kvtier {

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

bool parse_integer(const std::string& text, uint64_t min, uint64_t max, uint64_t* out) {
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    return false;
  const uint64_t n = std::strtoull(text.c_str(), nullptr, 10);
  if (n < min || n > max) return false;
  *out = n;
  return true;
}

bool parse_switch(const std::string& text, const char* yes, const char* no, bool* out) {
  const std::string l = lower(text);
  if (l == yes || l == "1" || l == "true") {
    *out = true;
  } else if (l == no || l == "0" || l == "false") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

bool parse_log_level(const std::string& text, std::string* out) {
  if (!valid_log_level(lower(text))) return false;
  *out = lower(text);
  return true;
}

bool valid_host_port(const std::string& text) {
  const size_t colon = text.rfind(':');
  uint64_t port = 0;
  return colon != std::string::npos && colon != 0 &&
         parse_integer(text.substr(colon + 1), 0, 65535, &port);
}

bool parse_address_list(const std::string& text, std::vector<std::string>* out) {
  std::vector<std::string> list;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    item = trim(item);
    if (!valid_host_port(item)) return false;
    list.push_back(item);
  }
  if (list.empty()) return false;
  *out = std::move(list);
  return true;
}

bool parse_url_list(const std::string& text, std::vector<std::string>* out) {
  std::vector<std::string> list;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    item = trim(item);
    std::string_view rest = item;
    for (std::string_view scheme : {"http://", "https://"})
      if (rest.substr(0, scheme.size()) == scheme) rest.remove_prefix(scheme.size());
    if (!valid_host_port(std::string(rest))) return false;
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

bool valid_token(const std::string& token) {
  return token.size() <= kMaxTokenBytes;
}

Status invalid_value(const std::string& name, const std::string& flag, Source source,
                     const std::string& value, const std::string& expects) {
  std::string what;
  if (source == Source::kFlag)
    what = flag + " '" + value + "'";
  else
    what = "KVTIER_" + name + "='" + value + "' (" +
           (source == Source::kEnvironment ? "environment" : "config string") + ")";
  return {KVTIER_ERR_CONFIG, what + " is invalid: expected " + expects};
}

const char* environment_value(const std::string& name) {
  return std::getenv(("KVTIER_" + name).c_str());
}

}  // namespace kvtier
