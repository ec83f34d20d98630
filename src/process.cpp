#include "src/process.h"

#include <pthread.h>

#include <atomic>

namespace kvtier {

namespace {

std::atomic<uint64_t> g_generation{0};

// A static object registers the handler when the library loads, before any fork can matter.
// The handler runs in the child only, where it may do nothing but async-signal-safe work: a
// lock-free atomic increment is.
const int g_registered = pthread_atfork(nullptr, nullptr,
                                        [] { g_generation.fetch_add(1, std::memory_order_relaxed); });

}  // namespace

uint64_t fork_generation() {
  (void)g_registered;
  return g_generation.load(std::memory_order_relaxed);
}

}  // namespace kvtier
