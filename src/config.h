// Every KVTIER_* setting, in one Config, read by one parser (config.cpp). Each setting is
// declared (name, what it expects, setter: options.h) by its owner: the core's own in
// config.cpp, with their fields here; a backend's beside its factory, with their fields in the
// backend's own section struct (MemoryOptions, FileOptions, RemoteOptions, p2p::Options), so
// adding a tier or a setting of one changes nothing here.
#pragma once

#include <any>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "src/options.h"
#include "src/status.h"

namespace kvtier {

enum class WritePolicy { kWriteThrough, kWriteBack };

struct Config {
  // The core's (config.cpp).
  // KVTIER_TIERS: the tier chain, top first, e.g. "memory" or "memory,file".
  std::vector<std::string> tiers{"memory"};
  // KVTIER_WRITE_POLICY: write_through (every tier on write) | write_back (top tier; lower
  // tiers receive pages as the tier above evicts them).
  WritePolicy write_policy = WritePolicy::kWriteThrough;
  // KVTIER_NAMESPACE: keys of different namespaces never collide (model, TP rank, ...).
  std::string ns;
  // KVTIER_LOG_LEVEL: trace | debug | info | warn | error | critical | off.
  std::string log_level = "warn";
  // KVTIER_ASYNC_THREADS: worker threads of a handle's asynchronous requests (kvtier_submit_*),
  // started at its first submit.
  unsigned async_threads = 4;
  // KVTIER_ASYNC_DEPTH: requests a handle holds between their submit and their drain; past it
  // a submit answers KVTIER_ERR_BUSY.
  unsigned async_depth = 1024;

  Config();  // with every registered section at its defaults

  // Each owner's section: its own options struct, declared beside its code (a tier's, the
  // transfer endpoints'), made by its default constructor with every Config and set by the
  // options it registers. E.g. config.section<FileOptions>().capacity.
  template <class S>
  S& section();
  template <class S>
  const S& section() const;

 private:
  std::vector<std::any> sections_;  // by section_slot<S>()
};

// Builds the config from the environment, then applies `overrides` ("NAME=value" pairs split by
// ';' or newlines; NAME with or without KVTIER_, any case; NULL for none). A set but invalid
// value fails with KVTIER_ERR_CONFIG naming the variable and the value. An unknown KVTIER_
// variable is a warning; an unknown name in `overrides` fails.
Status load_config(const char* overrides, Config* out);

// A section's slot in every Config, given at its first use. That is its owner's registration, at
// static initialisation, so every Config holds every section with options; section<S>() adds
// one used only later (non-const) or reads its defaults (const).
size_t add_section(std::any (*make)());
template <class S>
size_t section_slot() {
  static const size_t slot = add_section([]() -> std::any { return S{}; });
  return slot;
}

template <class S>
S& Config::section() {
  const size_t slot = section_slot<S>();
  if (slot >= sections_.size()) sections_.resize(slot + 1);
  if (!sections_[slot].has_value()) sections_[slot] = S{};
  return *std::any_cast<S>(&sections_[slot]);
}

template <class S>
const S& Config::section() const {
  const size_t slot = section_slot<S>();
  if (slot < sections_.size())
    if (const S* s = std::any_cast<S>(&sections_[slot])) return *s;
  static const S kDefaults{};  // a Config made before S's first use (at static initialisation)
  return kDefaults;
}

// The library's options, registered once per owner at static initialisation (before any
// load_config): KVTIER_REGISTER_OPTIONS(memory, {...}) beside a tier's KVTIER_REGISTER_TIER.
// The core's own set fields of Config.
bool register_options(const char* owner, std::vector<Option<Config>> options);
// An owner's options on its section S (built with options.h's helpers on S's fields): each sets
// config.section<S>().
template <class S>
bool register_options(const char* owner, std::initializer_list<Option<S>> options) {
  static_assert(!std::is_same_v<S, Config>, "only the core's options set Config's own fields");
  section_slot<S>();
  std::vector<Option<Config>> on_config;
  for (const Option<S>& o : options)
    on_config.push_back({o.name, o.flag, o.expects, [set = o.set](Config& c, const std::string& v) {
                           return set(c.section<S>(), v);
                         }});
  return register_options(owner, std::move(on_config));
}
// Every registered option's name (without KVTIER_) and owner ("core", "memory", "file",
// "remote", "p2p"), in registration order.
std::vector<std::pair<std::string, std::string>> registered_options();

#define KVTIER_REGISTER_OPTIONS(owner, ...) \
  static const bool kvtier_options_##owner = ::kvtier::register_options(#owner, __VA_ARGS__)

}  // namespace kvtier
