// The C ABI's asynchronous calls: a submit copies what the blocking call would read during the
// call (keys, fragment and slot arrays) and queues that call on the handle's workers
// (src/requests.h), which owns queueing, cancellation and completions.
#include <kvtier/kvtier.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "capi/kvtier_c.h"
#include "src/requests.h"
#include "capi/store_handle.h"

namespace {

using kvtier::Status;
using namespace kvtier::capi;

// What a request keeps of the caller's arguments: the keys (a NULL key stays NULL, an over-long
// one is copied one byte past the limit so it still fails as too long), fragments and slots.
struct Args {
  std::string blob;
  std::vector<const char*> keys;
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  std::vector<int64_t> slots;

  Args(const char* const* k, size_t n) : keys(n) {
    std::vector<size_t> at(n, SIZE_MAX);
    for (size_t i = 0; i < n; ++i) {
      if (!k[i]) continue;
      at[i] = blob.size();
      blob.append(k[i], strnlen(k[i], KVTIER_MAX_KEY_LEN + 1));
      blob.push_back('\0');
    }
    for (size_t i = 0; i < n; ++i) keys[i] = at[i] == SIZE_MAX ? nullptr : blob.data() + at[i];
  }
  Args(const Args&) = delete;  // keys point into blob
  Args& operator=(const Args&) = delete;
};

// Queues `run` (the blocking call on the copied arguments) on the handle's workers; the
// worker keeps the call's last error (its first failed key) for kvtier_drain to hand on.
template <class Run>
int submit(kvtier_store_t* store, int op, size_t n, int* results, uint64_t user_data, uint64_t* id,
           Run run) {
  kvtier::Requests* requests = nullptr;
  if (Status s = store->get_requests(&requests); !s.is_ok())
    return refuse(results, n, s.code(), s.message());
  kvtier::Requests::Work work{
      .op = op,
      .user_data = user_data,
      .run =
          [run = std::move(run)](std::string* detail) {
            const int rc = run();  // a blocking kvtier call: it clears, then sets, the detail
            *detail = kvtier_last_error();
            return rc;
          },
      .abandon = [results, n](int code) { std::fill(results, results + n, code); }};
  if (Status s = requests->submit(std::move(work), id); !s.is_ok())
    return refuse(results, n, s.code(), s.message());
  return KVTIER_OK;
}

// The checks every submit starts with; an empty string means they passed.
std::string check_submit(const char* const* keys, size_t n, const int* results,
                         const uint64_t* id) {
  if (!id) return "id is NULL";
  return check_batch(keys, n, results);
}

using V1Call = int (*)(kvtier_store_t*, const char* const*, size_t, void* const*, const size_t*,
                       size_t, int*);

int submit_v1(int op, V1Call call, kvtier_store_t* store, const char* const* keys, size_t n,
              void* const* ptrs, const size_t* sizes, size_t n_frags, int* results,
              uint64_t user_data, uint64_t* id) {
  Use use(store);
  if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
  if (std::string bad = check_submit(keys, n, results, id); !bad.empty())
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
  if (std::string bad = check_v1(ptrs, sizes, n_frags, n); !bad.empty())
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
  auto args = std::make_shared<Args>(keys, n);
  args->ptrs.assign(ptrs, ptrs + n_frags);
  args->sizes.assign(sizes, sizes + n_frags);
  return submit(store, op, n, results, user_data, id, [call, store, n, results, args] {
    return call(store, args->keys.data(), n, args->ptrs.data(), args->sizes.data(),
                args->ptrs.size(), results);
  });
}

using SlotsCall = int (*)(kvtier_store_t*, const char* const*, size_t, const int64_t*, size_t,
                          int*);

int submit_slots(int op, SlotsCall call, kvtier_store_t* store, const char* const* keys, size_t n,
                 const int64_t* slots, size_t n_slots, int* results, uint64_t user_data,
                 uint64_t* id) {
  Use use(store);
  if (!use) return refuse(results, n, use.refusal().code(), use.refusal().message());
  if (std::string bad = check_submit(keys, n, results, id); !bad.empty())
    return refuse(results, n, KVTIER_ERR_INVALID_ARG, bad);
  if (!slots) return refuse(results, n, KVTIER_ERR_INVALID_ARG, "slots is NULL");
  // The layout (page_size) is checked when the request runs; here only what copying needs.
  if (n_slots == 0 || n_slots % n || n_slots > kMaxFrags)
    return refuse(results, n, KVTIER_ERR_INVALID_ARG,
                  std::to_string(n_slots) + " token slots do not split evenly over " +
                      std::to_string(n) + " keys");
  auto args = std::make_shared<Args>(keys, n);
  args->slots.assign(slots, slots + n_slots);
  return submit(store, op, n, results, user_data, id, [call, store, n, results, args] {
    return call(store, args->keys.data(), n, args->slots.data(), args->slots.size(), results);
  });
}

}  // namespace

extern "C" {

int kvtier_submit_set_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                         void* const* frag_ptrs, const size_t* frag_sizes, size_t n_frags,
                         int* results, uint64_t user_data, uint64_t* id) {
  return guarded_batch("kvtier_submit_set_v1", results, n, [&] {
    return submit_v1(KVTIER_OP_SET_V1, kvtier_batch_set_v1, store, keys, n, frag_ptrs, frag_sizes,
                     n_frags, results, user_data, id);
  });
}

int kvtier_submit_get_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                         void* const* frag_ptrs, const size_t* frag_sizes, size_t n_frags,
                         int* results, uint64_t user_data, uint64_t* id) {
  return guarded_batch("kvtier_submit_get_v1", results, n, [&] {
    return submit_v1(KVTIER_OP_GET_V1, kvtier_batch_get_v1, store, keys, n, frag_ptrs, frag_sizes,
                     n_frags, results, user_data, id);
  });
}

int kvtier_submit_set_v1_slots(kvtier_store_t* store, const char* const* keys, size_t n,
                               const int64_t* slots, size_t n_slots, int* results,
                               uint64_t user_data, uint64_t* id) {
  return guarded_batch("kvtier_submit_set_v1_slots", results, n, [&] {
    return submit_slots(KVTIER_OP_SET_V1_SLOTS, kvtier_batch_set_v1_slots, store, keys, n, slots,
                        n_slots, results, user_data, id);
  });
}

int kvtier_submit_get_v1_slots(kvtier_store_t* store, const char* const* keys, size_t n,
                               const int64_t* slots, size_t n_slots, int* results,
                               uint64_t user_data, uint64_t* id) {
  return guarded_batch("kvtier_submit_get_v1_slots", results, n, [&] {
    return submit_slots(KVTIER_OP_GET_V1_SLOTS, kvtier_batch_get_v1_slots, store, keys, n, slots,
                        n_slots, results, user_data, id);
  });
}

int kvtier_submit_exists(kvtier_store_t* store, const char* const* keys, size_t n, int* present,
                         uint64_t user_data, uint64_t* id) {
  return guarded_batch("kvtier_submit_exists", present, n, [&] {
    Use use(store);
    if (!use) return refuse(present, n, use.refusal().code(), use.refusal().message());
    if (std::string bad = check_submit(keys, n, present, id); !bad.empty())
      return refuse(present, n, KVTIER_ERR_INVALID_ARG, bad);
    auto args = std::make_shared<Args>(keys, n);
    return submit(store, KVTIER_OP_EXISTS, n, present, user_data, id, [store, n, present, args] {
      return kvtier_batch_exists_each(store, args->keys.data(), n, present);
    });
  });
}

int kvtier_async_fd(kvtier_store_t* store, int* fd) {
  return guarded("kvtier_async_fd", [&] {
    if (!fd) return fail(KVTIER_ERR_INVALID_ARG, "fd is NULL");
    Use use(store);
    if (!use) return fail(use.refusal());
    kvtier::Requests* requests = nullptr;
    if (Status s = store->get_requests(&requests); !s.is_ok()) return fail(s);
    *fd = requests->fd();
    return KVTIER_OK;
  });
}

int kvtier_drain(kvtier_store_t* store, kvtier_completion_t* out, size_t capacity, int timeout_ms,
                 size_t* n) {
  return guarded("kvtier_drain", [&] {
    if (n) *n = 0;
    if (!out || !n || capacity == 0 || timeout_ms < 0)
      return fail(KVTIER_ERR_INVALID_ARG, "out or n is NULL, capacity is 0 or timeout_ms < 0");
    Use use(store);
    if (!use) return fail(use.refusal());
    kvtier::Requests* requests = nullptr;
    if (Status s = store->get_requests(&requests); !s.is_ok()) return fail(s);
    std::string detail;
    *n = requests->drain({out, capacity}, timeout_ms, &detail);
    set_last_error(std::move(detail));
    return KVTIER_OK;
  });
}

int kvtier_cancel(kvtier_store_t* store, uint64_t id) {
  return guarded("kvtier_cancel", [&] {
    Use use(store);
    if (!use) return fail(use.refusal());
    kvtier::Requests* requests = nullptr;
    if (Status s = store->get_requests(&requests); !s.is_ok()) return fail(s);
    const Status s = requests->cancel(id);
    return s.is_ok() ? KVTIER_OK : fail(s);
  });
}

}  // extern "C"
