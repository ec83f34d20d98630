#include "backends/file/faults.h"

#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <string>

namespace kvtier {

Status Faults::parse(const char* text, std::unique_ptr<Faults>* out) {
  out->reset();
  if (!text || !*text) return {};
  auto f = std::make_unique<Faults>();
  std::string spec(text);
  for (size_t at = 0; at <= spec.size();) {
    size_t end = spec.find(',', at);
    if (end == std::string::npos) end = spec.size();
    const std::string rule = spec.substr(at, end - at);
    at = end + 1;
    char op[8] = {}, kind[8] = {};
    unsigned long long every = 0;
    int used = 0;
    if (std::sscanf(rule.c_str(), "%7[a-z]:%llu:%7[a-z]%n", op, &every, kind, &used) != 3 ||
        used != static_cast<int>(rule.size()) || every == 0)
      return {KVTIER_ERR_CONFIG, "KVTIER_TEST_FILE_FAULTS: bad rule '" + rule +
                                     "' (want op:N:kind, op read|write|sync, kind "
                                     "eio|enospc|short, sync:N:stop, or commit:N:kill|stop)"};
    const std::string o(op), k(kind);
    const int which = o == "read"     ? kRead
                      : o == "write"  ? kWrite
                      : o == "sync"   ? kSync
                      : o == "commit" ? kCommit
                                      : -1;
    const int code = k == "eio"      ? -EIO
                     : k == "enospc" ? -ENOSPC
                     : k == "short"  ? 1
                     : k == "kill"   ? 2
                     : k == "stop"   ? 3
                                     : 0;
    // "stop": the process stops itself (SIGSTOP) there, as a debugger or Ctrl-Z would.
    if (which < 0 || code == 0 || (which == kSync && (code == 1 || code == 2)) ||
        (which == kCommit && code != 2 && code != 3) || (code == 3 && which < kSync))
      return {KVTIER_ERR_CONFIG, "KVTIER_TEST_FILE_FAULTS: bad rule '" + rule + "'"};
    auto r = std::make_unique<Rule>();
    r->every = every;
    r->kind = code;
    f->rules_[which].push_back(std::move(r));
  }
  *out = std::move(f);
  return {};
}

int Faults::on_complete(bool write, int res) {
  if (res <= 0) return res;
  for (auto& r : rules_[write ? kWrite : kRead]) {
    if (!r->fires()) continue;
    if (r->kind < 0) return r->kind;
    // Short: report only whole 4 KiB blocks of the first half (O_DIRECT must resume aligned);
    // the ring moves the rest again, which rewrites or rereads the same bytes.
    const int part = (res / 2) & ~4095;
    if (part > 0) return part;
  }
  return res;
}

bool Faults::on_commit() {
  for (auto& r : rules_[kCommit])
    if (r->fires()) {
      if (r->kind == 3) ::raise(SIGSTOP);
      return r->kind == 2;
    }
  return false;
}

int Faults::on_sync() {
  for (auto& r : rules_[kSync])
    if (r->fires()) {
      if (r->kind != 3) return r->kind;
      ::raise(SIGSTOP);
    }
  return 0;
}

}  // namespace kvtier
