// Named settings and the one parser of their values, shared by the library (KVTIER_*, declared
// by the core in config.cpp and by each backend beside its factory) and kvtier-server (its
// --flags and KVTIER_SERVER_* variables, server/main.cpp). An option names its variable, maybe
// a flag, says what a valid value looks like and sets a field of its target from the text; a
// refused value gets one message, wherever it came from.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "src/status.h"

namespace kvtier {

// Where a value came from; messages name it.
enum class Source { kEnvironment, kConfigString, kFlag };

// One setting of a target T (the library's Config, the server's settings).
template <class T>
struct Option {
  std::string name;     // the variable without "KVTIER_", e.g. "MEMORY_CAPACITY"
  std::string flag;     // kvtier-server's flag, e.g. "--capacity"; empty in the library
  std::string expects;  // what a valid value looks like, for messages
  // Sets the target from the trimmed value; false (target unchanged) when the value is invalid.
  std::function<bool(T&, const std::string&)> set;
};

// ---- the value parsers, each kind once ------------------------------------------------------

std::string trim(std::string_view s);
std::string lower(std::string s);
// "4GiB", "512MiB", "64KiB", "1G", "1000000" (bytes); KB/MB/GB/TB are powers of 1000.
Status parse_size(const std::string& text, uint64_t* bytes);
// Decimal digits only, min..max.
bool parse_integer(const std::string& text, uint64_t min, uint64_t max, uint64_t* out);
// `yes`, 1 or true -> true; `no`, 0 or false -> false; any case.
bool parse_switch(const std::string& text, const char* yes, const char* no, bool* out);
// host:port with a port of 0..65535 (the host is not resolved).
bool valid_host_port(const std::string& text);
// "host:port,host:port" (spaces around items allowed) -> the list; false when an item is not
// host:port or the list is empty (then *out is unchanged).
bool parse_address_list(const std::string& text, std::vector<std::string>* out);
// The same with each item host:port, http://host:port or https://host:port (etcd's endpoints).
bool parse_url_list(const std::string& text, std::vector<std::string>* out);
// A cluster name: 1..64 of [A-Za-z0-9_.-] (it becomes part of etcd keys).
bool valid_cluster_name(const std::string& name);
constexpr size_t kMaxTokenBytes = 256;       // a HELLO token's limit (protocol.h's kMaxToken)
bool valid_token(const std::string& token);  // at most kMaxTokenBytes

constexpr uint64_t kMaxMillis = 3600000;  // an hour: any timeout past it is a typo

// "KVTIER_NAME='v' (environment) is invalid: expected ..." (or "(config string)"), or
// "--flag 'v' is invalid: expected ..." for a flag: KVTIER_ERR_CONFIG.
Status invalid_value(const std::string& name, const std::string& flag, Source source,
                     const std::string& value, const std::string& expects);

template <class T>
Status apply(const Option<T>& o, T& target, const std::string& value, Source source) {
  if (o.set(target, trim(value))) return {};
  return invalid_value(o.name, o.flag, source, value, o.expects);
}

// The value of the option's KVTIER_ variable, or nullptr when it is unset.
const char* environment_value(const std::string& name);

// ---- options built from the parsers, setting a field of T (or of a base class C of T) -------

// min: 1, or whole MiB (the message says it in MiB).
template <class T, class C>
Option<T> size_option(std::string name, std::string flag, uint64_t C::*field, uint64_t min) {
  static_assert(std::is_base_of_v<C, T>);
  std::string expects =
      min > 1 ? "a size of " + std::to_string(min >> 20) + "MiB or more" : "a size such as 4GiB";
  return {std::move(name), std::move(flag), std::move(expects),
          [field, min](T& t, const std::string& v) {
            uint64_t bytes = 0;
            if (!parse_size(v, &bytes).is_ok() || bytes < min) return false;
            t.*field = bytes;
            return true;
          }};
}

template <class T, class C, class N>
Option<T> integer_option(std::string name, std::string flag, N C::*field, uint64_t min,
                         uint64_t max, const char* unit = "an integer") {
  static_assert(std::is_base_of_v<C, T> && std::is_integral_v<N>);
  std::string expects =
      std::string(unit) + " from " + std::to_string(min) + " to " + std::to_string(max);
  return {std::move(name), std::move(flag), std::move(expects),
          [field, min, max](T& t, const std::string& v) {
            uint64_t n = 0;
            if (!parse_integer(v, min, max, &n)) return false;
            t.*field = static_cast<N>(n);
            return true;
          }};
}

template <class T, class C>
Option<T> millis_option(std::string name, std::string flag, unsigned C::*field, uint64_t min = 1) {
  return integer_option<T>(std::move(name), std::move(flag), field, min, kMaxMillis,
                           "milliseconds");
}

template <class T, class C>
Option<T> switch_option(std::string name, std::string flag, bool C::*field, const char* yes,
                        const char* no) {
  static_assert(std::is_base_of_v<C, T>);
  return {std::move(name), std::move(flag), std::string(yes) + " or " + no,
          [field, yes, no](T& t, const std::string& v) {
            return parse_switch(v, yes, no, &(t.*field));
          }};
}

// One word of `words` (stored in lower case); expects lists them.
template <class T, class C>
Option<T> choice_option(std::string name, std::string flag, std::string C::*field,
                        std::vector<std::string> words) {
  static_assert(std::is_base_of_v<C, T>);
  std::string expects;
  for (size_t i = 0; i < words.size(); ++i)
    expects += (i == 0 ? "" : i + 1 == words.size() ? " or " : ", ") + words[i];
  return {std::move(name), std::move(flag), std::move(expects),
          [field, words](T& t, const std::string& v) {
            const auto w = std::find(words.begin(), words.end(), lower(v));
            if (w == words.end()) return false;
            t.*field = *w;
            return true;
          }};
}

template <class T, class C>
Option<T> transport_option(std::string name, std::string flag, std::string C::*field) {
  return choice_option<T>(std::move(name), std::move(flag), field, {"auto", "rdma", "tcp"});
}

// spdlog's level names (also its "warning" and "err"), stored in lower case.
bool parse_log_level(const std::string& text, std::string* out);

template <class T, class C>
Option<T> log_level_option(std::string name, std::string flag, std::string C::*field) {
  static_assert(std::is_base_of_v<C, T>);
  return {std::move(name), std::move(flag), "trace, debug, info, warn, error, critical or off",
          [field](T& t, const std::string& v) { return parse_log_level(v, &(t.*field)); }};
}

// Text that `valid` accepts, stored as it is (trimmed).
template <class T, class C>
Option<T> text_option(std::string name, std::string flag, std::string C::*field,
                      std::string expects, bool (*valid)(const std::string&)) {
  static_assert(std::is_base_of_v<C, T>);
  return {std::move(name), std::move(flag), std::move(expects),
          [field, valid](T& t, const std::string& v) {
            if (!valid(v)) return false;
            t.*field = v;
            return true;
          }};
}

template <class T, class C>
Option<T> token_option(std::string name, std::string flag, std::string C::*field) {
  return text_option<T>(std::move(name), std::move(flag), field,
                        "at most " + std::to_string(kMaxTokenBytes) + " bytes", valid_token);
}

template <class T, class C>
Option<T> host_port_option(std::string name, std::string flag, std::string C::*field) {
  return text_option<T>(std::move(name), std::move(flag), field, "host:port", valid_host_port);
}

template <class T, class C>
Option<T> cluster_option(std::string name, std::string flag, std::string C::*field) {
  return text_option<T>(std::move(name), std::move(flag), field, "1..64 of [A-Za-z0-9_.-]",
                        valid_cluster_name);
}

template <class T, class C>
Option<T> address_list_option(std::string name, std::string flag,
                              std::vector<std::string> C::*field) {
  static_assert(std::is_base_of_v<C, T>);
  return {std::move(name), std::move(flag), "a comma list of host:port",
          [field](T& t, const std::string& v) { return parse_address_list(v, &(t.*field)); }};
}

template <class T, class C>
Option<T> url_list_option(std::string name, std::string flag, std::vector<std::string> C::*field) {
  static_assert(std::is_base_of_v<C, T>);
  return {std::move(name), std::move(flag), "a comma list of host:port, http:// or https://",
          [field](T& t, const std::string& v) { return parse_url_list(v, &(t.*field)); }};
}

}  // namespace kvtier
