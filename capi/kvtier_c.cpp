// The C ABI: the only extern "C" definitions. Every entry point checks its arguments, turns
// Status into a code plus a thread-local detail, and lets no exception out.
#include <kvtier/kvtier.h>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "layout.h"
#include "log.h"
#include "p2p.h"
#include "store.h"

// A handle: the store (shared by the views opened from it) and this handle's page format.
struct kvtier_store {
  std::shared_ptr<kvtier::Store> rep;
  mutable std::shared_mutex mu;  // guards layout and format against register/set calls
  std::optional<kvtier::PoolLayout> layout;
  uint64_t format = 0;  // format_hash() of the page format, mixed into every key id

  uint64_t page_format() const {
    std::shared_lock lock(mu);
    return format;
  }
  kvtier::Status get_layout(kvtier::PoolLayout* out, uint64_t* fmt) const {
    std::shared_lock lock(mu);
    if (!layout) return {KVTIER_ERR_NO_LAYOUT, "no pool layout registered on this handle"};
    *out = *layout;
    *fmt = format;
    return {};
  }
};

struct kvtier_endpoint {
  std::unique_ptr<kvtier::p2p::Endpoint> rep;
};
struct kvtier_peer {
  std::unique_ptr<kvtier::p2p::Peer> rep;
};
// A transfer in the background: its own thread, an eventfd that turns readable at the end.
struct kvtier_transfer {
  std::vector<int64_t> local, remote;
  int status = 0;
  int fd = -1;
  std::atomic<bool> done{false};
  std::thread thread;
};

namespace {

using kvtier::Frag;
using kvtier::Status;
// Store::put or Store::get: the calls that move a batch's bytes.
using BatchCall = Status (kvtier::Store::*)(const kvtier::Batch&);

// Batches above this are refused: they are a caller bug (the engine sends <= a few thousand).
constexpr size_t kMaxBatch = size_t{1} << 24;
// Fragments per call above this are refused before anything is allocated for them (an MHA
// layer_first page has 2 per layer: 256 per key covers 128 layers at kMaxBatch keys).
constexpr size_t kMaxFrags = kMaxBatch * 256;

thread_local std::string t_last_error;

int fail(const Status& s) {
  t_last_error = std::string(kvtier::code_name(s.code())) + ": " + s.message();
  return s.code();
}

int fail(int code, const std::string& msg) {
  return fail(Status(code, msg));
}

// Records a per-key failure's detail but reports the call itself as run.
int note(const Status& s) {
  if (!s.is_ok()) fail(s);
  return KVTIER_OK;
}

template <class F>
int guarded(const char* fn, F&& body) noexcept {
  t_last_error.clear();
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
std::string check_batch(const kvtier_store_t* store, const char* const* keys, size_t n,
                        const void* results) {
  if (!store) return "store is NULL";
  if (!keys) return "keys is NULL";
  if (!results) return "results is NULL";
  if (n == 0) return "n is 0";
  if (n > kMaxBatch) return "n is larger than " + std::to_string(kMaxBatch);
  return {};
}

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

std::string check_v1(void* const* ptrs, const size_t* sizes, size_t n_frags, size_t n) {
  if (!ptrs || !sizes) return "fragment pointer or size array is NULL";
  if (n_frags > kMaxFrags)
    return std::to_string(n_frags) + " fragments is more than " + std::to_string(kMaxFrags);
  if (n_frags == 0 || n_frags % n)
    return std::to_string(n_frags) + " fragments do not split evenly over " + std::to_string(n) +
           " keys";
  return {};
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
  if (std::string bad = check_batch(store, keys, n, results); !bad.empty())
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
  if (std::string bad = check_batch(store, keys, n, results); !bad.empty())
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
  // One check of the whole pool stands for every fragment computed inside it.
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

// The caller's layout struct (any release's size) as the core's.
Status to_layout(const kvtier_pool_layout_t* layout, kvtier::PoolLayout* out) {
  // 0.1's struct ended at pool_tokens; later fields are read only when the caller has them.
  const size_t size = layout->struct_size;
  if (size < offsetof(kvtier_pool_layout_t, dtype_name) || size > (size_t{1} << 16))
    return {KVTIER_ERR_INVALID_ARG, "layout->struct_size is " + std::to_string(size) +
                                        "; set it to sizeof(kvtier_pool_layout_t)"};
  kvtier::PoolLayout& l = *out;
  l.base = static_cast<std::byte*>(layout->base);
  l.kind = static_cast<kvtier::PoolKind>(layout->pool_kind);
  l.order = static_cast<kvtier::PoolOrder>(layout->layout);
  l.page_size = layout->page_size;
  l.layer_num = layout->layer_num;
  l.head_num = layout->head_num;
  l.head_dim = layout->head_dim;
  l.kv_cache_dim = layout->kv_cache_dim;
  l.dtype_size = layout->dtype_size;
  l.pool_tokens = layout->pool_tokens;
  if (size >= offsetof(kvtier_pool_layout_t, dtype_name) + sizeof(char*) && layout->dtype_name) {
    const size_t len = strnlen(layout->dtype_name, 257);
    if (len > 256) return {KVTIER_ERR_INVALID_ARG, "dtype_name is over 256 bytes"};
    l.dtype_name.assign(layout->dtype_name, len);
  }
  return l.validate();
}

int move_pages(bool write, kvtier_peer_t* peer, const int64_t* local, const int64_t* remote,
               size_t n, int32_t layer, int* results) {
  if (!peer) return refuse(results, n, KVTIER_ERR_INVALID_ARG, "peer is NULL");
  if (!local || !remote || !results || n == 0 || n > kMaxBatch)
    return refuse(results, n, KVTIER_ERR_INVALID_ARG,
                  "page arrays or results NULL, or n is 0 or over " + std::to_string(kMaxBatch));
  std::fill(results, results + n, KVTIER_OK);
  auto& p = *peer->rep;
  Status s = write ? p.write_pages({local, n}, {remote, n}, layer, {results, n})
                   : p.read_pages({local, n}, {remote, n}, layer, {results, n});
  return s.is_ok() ? KVTIER_OK : fail(s);
}

int start_async(bool write, kvtier_peer_t* peer, const int64_t* local, const int64_t* remote,
                size_t n, int32_t layer, int* results, kvtier_transfer_t** out) {
  if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
  *out = nullptr;
  if (!peer || !local || !remote || !results || n == 0 || n > kMaxBatch)
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, "NULL argument, or n is 0 or too large");
  auto t = std::make_unique<kvtier_transfer>();
  t->local.assign(local, local + n);
  t->remote.assign(remote, remote + n);
  t->fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->fd < 0) return fail(KVTIER_ERR_NO_MEMORY, "eventfd failed");
  kvtier_transfer* raw = t.get();
  raw->thread = std::thread([raw, write, peer, layer, results] {
    raw->status = guarded("kvtier_transfer", [&] {
      return move_pages(write, peer, raw->local.data(), raw->remote.data(), raw->local.size(),
                        layer, results);
    });
    raw->done.store(true, std::memory_order_release);
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t w = ::write(raw->fd, &one, sizeof one);
  });
  *out = t.release();
  return KVTIER_OK;
}

}  // namespace

extern "C" {

unsigned kvtier_version_number(void) {
  return KVTIER_VERSION_NUMBER;
}

const char* kvtier_version_string(void) {
#define KVTIER_STR2(x) #x
#define KVTIER_STR(x) KVTIER_STR2(x)
  return KVTIER_STR(KVTIER_VERSION_MAJOR) "." KVTIER_STR(KVTIER_VERSION_MINOR) "." KVTIER_STR(
      KVTIER_VERSION_PATCH);
}

const char* kvtier_error_name(int code) {
  return kvtier::code_name(code);
}
const char* kvtier_strerror(int code) {
  return kvtier::code_text(code);
}
const char* kvtier_last_error(void) {
  return t_last_error.c_str();
}
void kvtier_free(void* ptr) {
  std::free(ptr);
}

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
    if (!store) return fail(KVTIER_ERR_INVALID_ARG, "store is NULL");
    auto view = std::make_unique<kvtier_store>();
    view->rep = store->rep;
    *out = view.release();
    return KVTIER_OK;
  });
}

int kvtier_set_page_format(kvtier_store_t* store, const char* format) {
  return guarded("kvtier_set_page_format", [&] {
    if (!store) return fail(KVTIER_ERR_INVALID_ARG, "store is NULL");
    const std::string_view text = format ? std::string_view(format, strnlen(format, 4097)) : "";
    if (text.size() > 4096) return fail(KVTIER_ERR_INVALID_ARG, "format is over 4096 bytes");
    std::unique_lock lock(store->mu);
    store->format = kvtier::format_hash(text);
    return KVTIER_OK;
  });
}

void kvtier_close(kvtier_store_t* store) {
  guarded("kvtier_close", [&] {
    delete store;
    return KVTIER_OK;
  });
}

int kvtier_batch_set(kvtier_store_t* store, const char* const* keys, size_t n,
                     const void* const* values, const size_t* sizes, int* results) {
  return guarded_batch("kvtier_batch_set", results, n, [&] {
    if (std::string bad = check_batch(store, keys, n, results); !bad.empty())
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
    if (std::string bad = check_batch(store, keys, n, results); !bad.empty())
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
    if (std::string bad = check_batch(store, keys, n, hits); !bad.empty())
      return fail(KVTIER_ERR_INVALID_ARG, bad);
    *hits = 0;
    return note(store->rep->exists({keys, n}, hits, store->page_format()));
  });
}

int kvtier_batch_exists_each(kvtier_store_t* store, const char* const* keys, size_t n,
                             int* present) {
  return guarded_batch("kvtier_batch_exists_each", present, n, [&] {
    if (std::string bad = check_batch(store, keys, n, present); !bad.empty())
      return refuse(present, n, KVTIER_ERR_INVALID_ARG, bad);
    const uint64_t format = store->page_format();
    return narrowed(present, n, [&](std::span<int64_t> r) {
      return note(store->rep->exists_each({.keys = {keys, n}, .format = format, .results = r}));
    });
  });
}

int kvtier_batch_remove(kvtier_store_t* store, const char* const* keys, size_t n, int* results) {
  return guarded_batch("kvtier_batch_remove", results, n, [&] {
    if (std::string bad = check_batch(store, keys, n, results); !bad.empty())
      return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
    const uint64_t format = store->page_format();
    return narrowed(results, n, [&](std::span<int64_t> r) {
      return note(store->rep->remove({.keys = {keys, n}, .format = format, .results = r}));
    });
  });
}

int kvtier_clear(kvtier_store_t* store) {
  return guarded("kvtier_clear", [&] {
    if (!store) return fail(KVTIER_ERR_INVALID_ARG, "store is NULL");
    store->rep->clear();
    return KVTIER_OK;
  });
}

int kvtier_stats_json(kvtier_store_t* store, char** json) {
  return guarded("kvtier_stats_json", [&] {
    if (!store || !json) return fail(KVTIER_ERR_INVALID_ARG, "store or json is NULL");
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
    if (!store) return fail(KVTIER_ERR_INVALID_ARG, "store is NULL");
    Status s = store->rep->register_buffer(addr, len);
    return s.is_ok() ? KVTIER_OK : fail(s);
  });
}

int kvtier_unregister_buffer(kvtier_store_t* store, void* addr) {
  return guarded("kvtier_unregister_buffer", [&] {
    if (!store) return fail(KVTIER_ERR_INVALID_ARG, "store is NULL");
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
    if (!store || !layout) return fail(KVTIER_ERR_INVALID_ARG, "store or layout is NULL");
    kvtier::PoolLayout l;
    if (Status s = to_layout(layout, &l); !s.is_ok()) return fail(s);
    if (Status s = store->rep->check_layout(l); !s.is_ok()) return fail(s);
    std::unique_lock lock(store->mu);
    store->format = kvtier::format_hash(l.describe());
    store->layout = std::move(l);
    return KVTIER_OK;
  });
}

int kvtier_endpoint_open(const char* config, const kvtier_pool_layout_t* pool,
                         kvtier_endpoint_t** out) {
  return guarded("kvtier_endpoint_open", [&] {
    if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!pool) return fail(KVTIER_ERR_INVALID_ARG, "pool is NULL");
    kvtier::Config cfg;
    if (Status s = kvtier::load_config(config, &cfg); !s.is_ok()) return fail(s);
    kvtier::PoolLayout l;
    if (Status s = to_layout(pool, &l); !s.is_ok()) return fail(s);
    kvtier::p2p::Options opt{.listen = cfg.p2p_listen,
                             .token = cfg.p2p_token,
                             .transport = cfg.p2p_transport,
                             .timeout_ms = cfg.p2p_timeout_ms,
                             .max_peers = cfg.p2p_max_peers};
    auto ep = std::make_unique<kvtier_endpoint>();
    if (Status s = kvtier::p2p::Endpoint::open(opt, l, &ep->rep); !s.is_ok()) return fail(s);
    *out = ep.release();
    return KVTIER_OK;
  });
}

int kvtier_endpoint_address(const kvtier_endpoint_t* endpoint, char* buf, size_t capacity) {
  return guarded("kvtier_endpoint_address", [&] {
    if (!endpoint || !buf) return fail(KVTIER_ERR_INVALID_ARG, "endpoint or buf is NULL");
    const std::string& a = endpoint->rep->address();
    if (capacity < a.size() + 1)
      return fail(KVTIER_ERR_BUFFER_TOO_SMALL,
                  "the address needs " + std::to_string(a.size() + 1) + " bytes");
    std::memcpy(buf, a.c_str(), a.size() + 1);
    return KVTIER_OK;
  });
}

void kvtier_endpoint_close(kvtier_endpoint_t* endpoint) {
  guarded("kvtier_endpoint_close", [&] {
    delete endpoint;
    return KVTIER_OK;
  });
}

int kvtier_endpoint_connect(kvtier_endpoint_t* endpoint, const char* address, kvtier_peer_t** out) {
  return guarded("kvtier_endpoint_connect", [&] {
    if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!endpoint || !address) return fail(KVTIER_ERR_INVALID_ARG, "endpoint or address is NULL");
    auto peer = std::make_unique<kvtier_peer>();
    if (Status s = endpoint->rep->connect(address, &peer->rep); !s.is_ok()) return fail(s);
    *out = peer.release();
    return KVTIER_OK;
  });
}

void kvtier_peer_close(kvtier_peer_t* peer) {
  guarded("kvtier_peer_close", [&] {
    delete peer;
    return KVTIER_OK;
  });
}

int kvtier_peer_connected(kvtier_peer_t* peer) {
  return peer && peer->rep->connected() ? 1 : 0;
}

int kvtier_peer_write_pages(kvtier_peer_t* peer, const int64_t* local_pages,
                            const int64_t* remote_pages, size_t n, int32_t layer, int* results) {
  return guarded("kvtier_peer_write_pages", [&] {
    return move_pages(true, peer, local_pages, remote_pages, n, layer, results);
  });
}

int kvtier_peer_read_pages(kvtier_peer_t* peer, const int64_t* local_pages,
                           const int64_t* remote_pages, size_t n, int32_t layer, int* results) {
  return guarded("kvtier_peer_read_pages", [&] {
    return move_pages(false, peer, local_pages, remote_pages, n, layer, results);
  });
}

int kvtier_peer_write_pages_async(kvtier_peer_t* peer, const int64_t* local_pages,
                                  const int64_t* remote_pages, size_t n, int32_t layer,
                                  int* results, kvtier_transfer_t** out) {
  return guarded("kvtier_peer_write_pages_async", [&] {
    return start_async(true, peer, local_pages, remote_pages, n, layer, results, out);
  });
}

int kvtier_peer_read_pages_async(kvtier_peer_t* peer, const int64_t* local_pages,
                                 const int64_t* remote_pages, size_t n, int32_t layer, int* results,
                                 kvtier_transfer_t** out) {
  return guarded("kvtier_peer_read_pages_async", [&] {
    return start_async(false, peer, local_pages, remote_pages, n, layer, results, out);
  });
}

int kvtier_transfer_fd(const kvtier_transfer_t* transfer) {
  return transfer ? transfer->fd : KVTIER_ERR_INVALID_ARG;
}

int kvtier_transfer_wait(kvtier_transfer_t* transfer, int timeout_ms, int* status) {
  return guarded("kvtier_transfer_wait", [&] {
    if (!transfer) return fail(KVTIER_ERR_INVALID_ARG, "transfer is NULL");
    pollfd p{transfer->fd, POLLIN, 0};
    while (!transfer->done.load(std::memory_order_acquire)) {
      int rc = ::poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
      if (rc == 0) return fail(KVTIER_ERR_TIMEOUT, "the transfer is still running");
      if (rc < 0 && errno != EINTR) return fail(KVTIER_ERR_INTERNAL, "poll on the transfer failed");
    }
    if (status) *status = transfer->status;
    return KVTIER_OK;
  });
}

void kvtier_transfer_free(kvtier_transfer_t* transfer) {
  guarded("kvtier_transfer_free", [&] {
    if (!transfer) return KVTIER_OK;
    if (transfer->thread.joinable()) transfer->thread.join();
    ::close(transfer->fd);
    delete transfer;
    return KVTIER_OK;
  });
}

int kvtier_page_fragments(kvtier_store_t* store, size_t* per_page) {
  return guarded("kvtier_page_fragments", [&] {
    if (!store || !per_page) return fail(KVTIER_ERR_INVALID_ARG, "store or per_page is NULL");
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
    if (!store || !slots || !ptrs || !sizes)
      return fail(KVTIER_ERR_INVALID_ARG, "store, slots, ptrs or sizes is NULL");
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
