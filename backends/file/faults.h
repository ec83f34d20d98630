// The file tier's test-only fault injection, behind the ring's IoFaults seam (uring.h) and the
// tier's sync and commit steps: tests drive every error path without a failing disk.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "src/status.h"
#include "backends/file/uring.h"

namespace kvtier {

// Test-only fault injection (KVTIER_TEST_FILE_FAULTS, read by the file tier at open): rules
// "op:N:kind" separated by ',', with op read, write or sync, kind eio, enospc or short: every
// Nth I/O of that op fails with that errno, or (short, read/write) reports a short transfer,
// so the rest is resubmitted; and "commit:N:kill": the Nth put's commit SIGKILLs its own
// process while it holds the namespace lock. Lets tests drive every error path without a
// failing disk.
class Faults final : public IoFaults {
 public:
  enum Op { kRead, kWrite, kSync, kCommit, kOps };
  // nullptr in *out when text is NULL or empty; KVTIER_ERR_CONFIG for a malformed rule.
  static Status parse(const char* text, std::unique_ptr<Faults>* out);
  int on_complete(bool write, int res) override;
  // 0, or the -errno an fdatasync should fail with.
  int on_sync();
  // Whether this commit kills the process.
  bool on_commit();

 private:
  struct Rule {
    uint64_t every = 0;
    int kind = 0;  // -errno, or 1: short
    std::atomic<uint64_t> count{0};
    // Every `every`th time; a stop (kind 3) only the first time, so that one SIGCONT resumes it.
    bool fires() {
      const uint64_t n = count.fetch_add(1) + 1;
      return kind == 3 ? n == every : n % every == 0;
    }
  };
  std::vector<std::unique_ptr<Rule>> rules_[kOps];
};

}  // namespace kvtier
