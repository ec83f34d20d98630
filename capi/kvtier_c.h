// What the C ABI's files share: argument limits, the last error and the guarded entry point.
#pragma once

#include <kvtier/kvtier.h>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <new>
#include <string>

#include "src/layout.h"
#include "src/log.h"
#include "src/status.h"

// Every entry point checks its arguments, turns Status into a code plus a thread-local detail,
// and lets no exception out.
namespace kvtier::capi {

// Batches above this are refused: they are a caller bug (the engine sends <= a few thousand).
constexpr size_t kMaxBatch = size_t{1} << 24;
// Fragments per call above this are refused before anything is allocated for them (an MHA
// layer_first page has 2 per layer: 256 per key covers 128 layers at kMaxBatch keys).
constexpr size_t kMaxFrags = kMaxBatch * 256;

// The calling thread's last error (kvtier_last_error) is set by fail and cleared by guarded.
int fail(const Status& s);
int fail(int code, const std::string& msg);
void clear_last_error();
// Sets it to `detail` as it is (kvtier_drain: a request's detail, already "CODE: ...").
void set_last_error(std::string detail);
// Records a per-key failure's detail but reports the call itself as run.
int note(const Status& s);

template <class F>
int guarded(const char* fn, F&& body) noexcept {
  clear_last_error();
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(KVTIER_ERR_NO_MEMORY, std::string(fn) + ": out of memory");
  } catch (const std::exception& e) {
    kvtier::log().error("{}: unexpected exception: {}", fn, e.what());
    return fail(KVTIER_ERR_INTERNAL, std::string(fn) + ": " + e.what());
  } catch (...) {
    return fail(KVTIER_ERR_INTERNAL, std::string(fn) + ": unknown exception");
  }
}

template <class T>
int refuse(T* results, size_t n, int code, const std::string& msg) {
  if (results && n <= kMaxBatch)
    for (size_t i = 0; i < n; ++i) results[i] = code;
  return fail(code, msg);
}

// guarded() for batch calls: a call that fails as a whole (also by an exception, such as
// running out of memory) leaves its code in every result slot, as convention 2 promises.
template <class T, class F>
int guarded_batch(const char* fn, T* results, size_t n, F&& body) noexcept {
  const int rc = guarded(fn, body);
  if (rc < 0 && results && n <= kMaxBatch) std::fill(results, results + n, T(rc));
  return rc;
}

// The checks every batch call starts with; an empty string means they passed.
std::string check_batch(const char* const* keys, size_t n, const void* results);
// The fragment arrays of a _v1 call for n keys.
std::string check_v1(void* const* ptrs, const size_t* sizes, size_t n_frags, size_t n);

// The caller's layout struct (any release's size) as the core's.
Status to_layout(const kvtier_pool_layout_t* layout, PoolLayout* out);

}  // namespace kvtier::capi
