// The C ABI's store calls: the handle, byte batches, buffers, pool layouts and v1 pages.
#include <kvtier/kvtier.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "src/config.h"
#include "capi/kvtier_c.h"
#include "src/layout.h"
#include "src/process.h"
#include "src/store.h"
#include "capi/store_handle.h"

namespace {

using kvtier::Frag;
using kvtier::Status;
using kvtier::capi::Use;
using namespace kvtier::capi;

// Tombstones: closed handles are kept, so a late call finds "closed", not freed memory; only the
// oldest of very many are freed (an engine opens a handful). The stores of handles a forked
// child inherited are kept too: tearing them down would touch the parent's rings, locks and
// (absent) threads.
void retire(kvtier_store_t* handle) {
  constexpr size_t kTombstones = 4096;
  static std::mutex mu;
  static auto* tombstones = new std::deque<kvtier_store_t*>;
  static auto* inherited = new std::vector<std::shared_ptr<kvtier::Store>>;
  std::shared_ptr<kvtier::Store> rep = std::move(handle->rep);
  kvtier_store_t* freed = nullptr;
  {
    std::lock_guard lock(mu);
    if (handle->generation != kvtier::fork_generation()) inherited->push_back(std::move(rep));
    tombstones->push_back(handle);
    if (tombstones->size() > kTombstones) {
      freed = tombstones->front();
      tombstones->pop_front();
    }
  }
  rep.reset();  // the tiers close here if this was the last handle on them
  delete freed;
}

// Store::put or Store::get: the calls that move a batch's bytes.
using BatchCall = Status (kvtier::Store::*)(const kvtier::Batch&);

std::vector<Frag> frags_of(const void* const* ptrs, const size_t* sizes, size_t count) {
  std::vector<Frag> frags(count);
  for (size_t i = 0; i < count; ++i)
    frags[i] = {static_cast<std::byte*>(const_cast<void*>(ptrs[i])), sizes[i]};
  return frags;
}

// Runs `call`, which fills one int64 result per key, for a C call whose results are int32 (all
// but kvtier_batch_get): they land in the caller's array once, at the end, as 0 for a success
// (a _v1 get's byte count too) or the key's code.
template <class F>
int narrowed(int* results, size_t n, F&& call) {
  std::vector<int64_t> wide(n, KVTIER_OK);
  const int rc = call(std::span<int64_t>(wide));
  for (size_t i = 0; i < n; ++i) results[i] = wide[i] >= 0 ? KVTIER_OK : static_cast<int>(wide[i]);
  return rc;
}

// The batch of a _v1 call: n pages of the engine's pool, frags.size() / n fragments each, that
// a stored value fills exactly.
kvtier::Batch pages(const char* const* keys, size_t n, std::span<const Frag> frags,
                    kvtier::Memory memory, uint64_t format, std::span<int64_t> results) {
  return {.keys = {keys, n},
          .frags = frags,
          .per_key = frags.size() / n,
          .memory = memory,
          .fit = kvtier::Fit::kExact,
          .format = format,
          .results = results};
}

// kvtier_batch_set_v1 / _get_v1, on fragments the caller passes or on token slots.
int pages_v1(BatchCall call, kvtier_store_t* store, const char* const* keys, size_t n,
             void* const* ptrs, const size_t* sizes, size_t n_frags, int* results) {
  Use use(store);
  if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
  if (std::string bad = check_batch(keys, n, results); !bad.empty())
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
  if (std::string bad = check_v1(ptrs, sizes, n_frags, n); !bad.empty())
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
  std::vector<Frag> frags = frags_of(ptrs, sizes, n_frags);
  const uint64_t format = store->page_format();
  return narrowed(results, n, [&](std::span<int64_t> r) {
    return note(std::invoke(call, *store->rep,
                            pages(keys, n, frags, kvtier::Memory::kRegistered, format, r)));
  });
}

int slots_v1(BatchCall call, kvtier_store_t* store, const char* const* keys, size_t n,
             const int64_t* slots, size_t n_slots, int* results) {
  Use use(store);
  if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
  if (std::string bad = check_batch(keys, n, results); !bad.empty())
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
  if (!slots) return refuse(results, n, KVTIER_ERR_INVALID_ARG, "slots is NULL");
  kvtier::PoolLayout layout;
  uint64_t format = 0;
  if (Status s = store->get_layout(&layout, &format); !s.is_ok())
    return refuse(results, n, s.code(), s.message());
  if (n_slots / layout.page_size != n || n_slots % layout.page_size)
    return refuse(results, n, KVTIER_ERR_INVALID_ARG,
                  std::to_string(n_slots) + " token slots for " + std::to_string(n) +
                      " keys; expected keys * page_size = " + std::to_string(n * layout.page_size));
  // One check of the whole pool stands for every fragment computed inside it, held until the
  // call ends (kvtier_unregister_buffer waits for it).
  kvtier::Regions::Hold hold = store->rep->hold_memory();
  if (!store->rep->is_registered(layout.base, layout.pool_bytes()))
    return refuse(results, n, KVTIER_ERR_NOT_REGISTERED,
                  "the pool's buffer is no longer registered (kvtier_unregister_buffer)");
  const size_t per_page = layout.frags_per_page();
  std::vector<Frag> frags(n * per_page);
  return narrowed(results, n, [&](std::span<int64_t> r) {
    Status page_failure = layout.pages_frags(slots, n, frags.data(), r.data());
    const int rc = note(
        std::invoke(call, *store->rep, pages(keys, n, frags, kvtier::Memory::kPool, format, r)));
    note(page_failure);
    return rc;
  });
}

}  // namespace

extern "C" {

int kvtier_open(const char* config, kvtier_store_t** out) {
  return guarded("kvtier_open", [&] {
    if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    kvtier::Config cfg;
    Status s = kvtier::load_config(config, &cfg);
    if (!s.is_ok()) {
      kvtier::log().error("open: {}", s.message());
      return fail(s);
    }
    std::unique_ptr<kvtier::Store> store;
    s = kvtier::Store::open(cfg, &store);
    if (!s.is_ok()) {
      kvtier::log().error("open: {}", s.message());
      return fail(s);
    }
    auto handle = std::make_unique<kvtier_store>();
    handle->rep = std::move(store);
    *out = handle.release();
    return KVTIER_OK;
  });
}

int kvtier_open_view(kvtier_store_t* store, kvtier_store_t** out) {
  return guarded("kvtier_open_view", [&] {
    if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    Use use(store);
    if (!use) return fail(use.refusal());
    auto view = std::make_unique<kvtier_store>();
    view->rep = store->rep;
    *out = view.release();
    return KVTIER_OK;
  });
}

int kvtier_set_page_format(kvtier_store_t* store, const char* format) {
  return guarded("kvtier_set_page_format", [&] {
    Use use(store);
    if (!use) return fail(use.refusal());
    const std::string_view text = format ? std::string_view(format, strnlen(format, 4097)) : "";
    if (text.size() > 4096) return fail(KVTIER_ERR_INVALID_ARG, "format is over 4096 bytes");
    std::unique_lock lock(store->mu);
    store->format = kvtier::format_hash(text);
    return KVTIER_OK;
  });
}

void kvtier_close(kvtier_store_t* store) {
  guarded("kvtier_close", [&] {
    if (!store) return KVTIER_OK;
    if (store->closed.exchange(true)) return KVTIER_OK;  // closed already
    // Wait for the calls in flight (each bounded by its tiers' timeouts). A forked child has
    // none (it is refused its inherited handles) and must not touch the gate: its lock and
    // count are as some parent thread left them at the fork.
    if (store->generation == kvtier::fork_generation()) {
      store->end_requests();  // its queued requests abandoned, its running ones waited for
      store->calls.close([] {});
      store->release_requests();  // closes the completion fd
    } else {
      // The parent's workers are not in this process, and its lock may be held: keep it all.
      static_cast<void>(store->requests.release());
    }
    retire(store);
    return KVTIER_OK;
  });
}

int kvtier_batch_set(kvtier_store_t* store, const char* const* keys, size_t n,
                     const void* const* values, const size_t* sizes, int* results) {
  return guarded_batch("kvtier_batch_set", results, n, [&] {
    Use use(store);
    if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
    if (std::string bad = check_batch(keys, n, results); !bad.empty())
      return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
    if (!values || !sizes)
      return refuse(results, n, KVTIER_ERR_INVALID_ARG, "values or sizes is NULL");
    std::vector<Frag> frags = frags_of(values, sizes, n);
    const uint64_t format = store->page_format();
    return narrowed(results, n, [&](std::span<int64_t> r) {
      return note(store->rep->put(
          {.keys = {keys, n}, .frags = frags, .per_key = 1, .format = format, .results = r}));
    });
  });
}

int kvtier_batch_get(kvtier_store_t* store, const char* const* keys, size_t n, void* const* buffers,
                     const size_t* capacities, int64_t* results) {
  return guarded_batch("kvtier_batch_get", results, n, [&] {
    Use use(store);
    if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
    if (std::string bad = check_batch(keys, n, results); !bad.empty())
      return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
    if (!buffers || !capacities)
      return refuse(results, n, KVTIER_ERR_INVALID_ARG, "buffers or capacities is NULL");
    std::fill(results, results + n, KVTIER_OK);
    std::vector<Frag> frags = frags_of(buffers, capacities, n);
    return note(store->rep->get({.keys = {keys, n},
                                 .frags = frags,
                                 .per_key = 1,
                                 .format = store->page_format(),
                                 .results = {results, n}}));
  });
}

int kvtier_batch_exists(kvtier_store_t* store, const char* const* keys, size_t n, size_t* hits) {
  return guarded("kvtier_batch_exists", [&] {
    Use use(store);
    if (!use) return fail(use.refusal());
    if (std::string bad = check_batch(keys, n, hits); !bad.empty())
      return fail(KVTIER_ERR_INVALID_ARG, bad);
    *hits = 0;
    return note(store->rep->exists({keys, n}, hits, store->page_format()));
  });
}

int kvtier_batch_exists_each(kvtier_store_t* store, const char* const* keys, size_t n,
                             int* present) {
  return guarded_batch("kvtier_batch_exists_each", present, n, [&] {
    Use use(store);
    if (!use) return refuse(present, n, use.refusal().code(), use.refusal().message());
    if (std::string bad = check_batch(keys, n, present); !bad.empty())
      return refuse(present, n, KVTIER_ERR_INVALID_ARG, bad);
    const uint64_t format = store->page_format();
    return narrowed(present, n, [&](std::span<int64_t> r) {
      return note(store->rep->exists_each({.keys = {keys, n}, .format = format, .results = r}));
    });
  });
}

int kvtier_batch_size_each(kvtier_store_t* store, const char* const* keys, size_t n,
                           int64_t* sizes) {
  return guarded_batch("kvtier_batch_size_each", sizes, n, [&] {
    Use use(store);
    if (!use) return refuse(sizes, n, use.refusal().code(), use.refusal().message());
    if (std::string bad = check_batch(keys, n, sizes); !bad.empty())
      return refuse(sizes, n, KVTIER_ERR_INVALID_ARG, bad);
    const uint64_t format = store->page_format();
    std::fill(sizes, sizes + n, KVTIER_OK);  // the store reads a code there as a failed key
    return note(store->rep->sizes({.keys = {keys, n}, .format = format, .results = {sizes, n}}));
  });
}

int kvtier_batch_remove(kvtier_store_t* store, const char* const* keys, size_t n, int* results) {
  return guarded_batch("kvtier_batch_remove", results, n, [&] {
    Use use(store);
    if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
    if (std::string bad = check_batch(keys, n, results); !bad.empty())
      return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
    const uint64_t format = store->page_format();
    return narrowed(results, n, [&](std::span<int64_t> r) {
      return note(store->rep->remove({.keys = {keys, n}, .format = format, .results = r}));
    });
  });
}

int kvtier_clear(kvtier_store_t* store) {
  return guarded("kvtier_clear", [&] {
    Use use(store);
    if (!use) return fail(use.refusal());
    const Status s = store->rep->clear();
    return s.is_ok() ? KVTIER_OK : fail(s);
  });
}

int kvtier_stats_json(kvtier_store_t* store, char** json) {
  return guarded("kvtier_stats_json", [&] {
    if (!json) return fail(KVTIER_ERR_INVALID_ARG, "json is NULL");
    Use use(store);
    if (!use) return fail(use.refusal());
    *json = nullptr;
    std::string s = store->rep->stats_json();
    char* copy = static_cast<char*>(std::malloc(s.size() + 1));
    if (!copy) return fail(KVTIER_ERR_NO_MEMORY, "stats: out of memory");
    std::memcpy(copy, s.c_str(), s.size() + 1);
    *json = copy;
    return KVTIER_OK;
  });
}

int kvtier_register_buffer(kvtier_store_t* store, void* addr, size_t len) {
  return guarded("kvtier_register_buffer", [&] {
    Use use(store);
    if (!use) return fail(use.refusal());
    Status s = store->rep->register_buffer(addr, len);
    return s.is_ok() ? KVTIER_OK : fail(s);
  });
}

int kvtier_unregister_buffer(kvtier_store_t* store, void* addr) {
  return guarded("kvtier_unregister_buffer", [&] {
    Use use(store);
    if (!use) return fail(use.refusal());
    Status s = store->rep->unregister_buffer(addr);
    return s.is_ok() ? KVTIER_OK : fail(s);
  });
}

int kvtier_batch_set_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                        void* const* frag_ptrs, const size_t* frag_sizes, size_t n_frags,
                        int* results) {
  return guarded_batch("kvtier_batch_set_v1", results, n, [&] {
    return pages_v1(&kvtier::Store::put, store, keys, n, frag_ptrs, frag_sizes, n_frags, results);
  });
}

int kvtier_batch_get_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                        void* const* frag_ptrs, const size_t* frag_sizes, size_t n_frags,
                        int* results) {
  return guarded_batch("kvtier_batch_get_v1", results, n, [&] {
    return pages_v1(&kvtier::Store::get, store, keys, n, frag_ptrs, frag_sizes, n_frags, results);
  });
}

int kvtier_register_layout(kvtier_store_t* store, const kvtier_pool_layout_t* layout) {
  return guarded("kvtier_register_layout", [&] {
    if (!layout) return fail(KVTIER_ERR_INVALID_ARG, "layout is NULL");
    Use use(store);
    if (!use) return fail(use.refusal());
    kvtier::PoolLayout l;
    if (Status s = to_layout(layout, &l); !s.is_ok()) return fail(s);
    if (Status s = store->rep->check_layout(l); !s.is_ok()) return fail(s);
    std::unique_lock lock(store->mu);
    store->format = kvtier::format_hash(l.describe());
    store->layout = std::move(l);
    return KVTIER_OK;
  });
}

int kvtier_page_fragments(kvtier_store_t* store, size_t* per_page) {
  return guarded("kvtier_page_fragments", [&] {
    if (!per_page) return fail(KVTIER_ERR_INVALID_ARG, "per_page is NULL");
    Use use(store);
    if (!use) return fail(use.refusal());
    kvtier::PoolLayout layout;
    uint64_t format = 0;
    if (Status s = store->get_layout(&layout, &format); !s.is_ok()) return fail(s);
    *per_page = layout.frags_per_page();
    return KVTIER_OK;
  });
}

int kvtier_get_page_buffer_meta(kvtier_store_t* store, const int64_t* slots, size_t n_slots,
                                void** ptrs, size_t* sizes, size_t capacity) {
  return guarded("kvtier_get_page_buffer_meta", [&] {
    if (!slots || !ptrs || !sizes)
      return fail(KVTIER_ERR_INVALID_ARG, "slots, ptrs or sizes is NULL");
    Use use(store);
    if (!use) return fail(use.refusal());
    kvtier::PoolLayout layout;
    uint64_t format = 0;
    if (Status s = store->get_layout(&layout, &format); !s.is_ok()) return fail(s);
    if (n_slots == 0 || n_slots % layout.page_size)
      return fail(KVTIER_ERR_INVALID_ARG, std::to_string(n_slots) +
                                              " token slots is not a whole number of pages of " +
                                              std::to_string(layout.page_size));
    const size_t pages = n_slots / layout.page_size;
    size_t count = 0, bytes = 0;
    // A count whose arrays cannot exist is bad input, not a wrapped multiplication.
    if (__builtin_mul_overflow(pages, layout.frags_per_page(), &count) ||
        __builtin_mul_overflow(count, sizeof(Frag), &bytes) || count > kMaxFrags)
      return fail(KVTIER_ERR_INVALID_ARG, std::to_string(n_slots) + " token slots make more than " +
                                              std::to_string(kMaxFrags) + " fragments");
    if (capacity < count)
      return fail(KVTIER_ERR_BUFFER_TOO_SMALL, "need room for " + std::to_string(count) +
                                                   " fragments, got " + std::to_string(capacity));
    std::vector<Frag> frags(count);
    if (Status s = layout.pages_frags(slots, pages, frags.data(), nullptr); !s.is_ok())
      return fail(s);
    for (size_t i = 0; i < count; ++i) {
      ptrs[i] = frags[i].ptr;
      sizes[i] = frags[i].len;
    }
    return KVTIER_OK;
  });
}

int kvtier_batch_set_v1_slots(kvtier_store_t* store, const char* const* keys, size_t n,
                              const int64_t* slots, size_t n_slots, int* results) {
  return guarded_batch("kvtier_batch_set_v1_slots", results, n, [&] {
    return slots_v1(&kvtier::Store::put, store, keys, n, slots, n_slots, results);
  });
}

int kvtier_batch_get_v1_slots(kvtier_store_t* store, const char* const* keys, size_t n,
                              const int64_t* slots, size_t n_slots, int* results) {
  return guarded_batch("kvtier_batch_get_v1_slots", results, n, [&] {
    return slots_v1(&kvtier::Store::get, store, keys, n, slots, n_slots, results);
  });
}

}  // extern "C"
