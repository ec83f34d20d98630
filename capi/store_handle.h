// The store handle behind kvtier_store_t, and a call's use of it: shared by the store calls
// (kvtier_c_store.cpp) and the asynchronous ones (kvtier_c_async.cpp).
#pragma once

#include <kvtier/kvtier.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>

#include "src/call_gate.h"
#include "src/layout.h"
#include "src/process.h"
#include "src/requests.h"
#include "src/status.h"
#include "src/store.h"

// A handle: the store (shared by the views opened from it), this handle's page format, its
// asynchronous requests, and the calls in flight on it. kvtier_close() marks it closed, ends
// its requests, waits for those calls, releases the store and keeps the handle itself as a
// tombstone (retire()), so that a call after close reads "closed" rather than freed memory.
struct kvtier_store {
  std::shared_ptr<kvtier::Store> rep;
  kvtier::CallGate calls;           // kvtier_close waits for these
  std::atomic<bool> closed{false};  // kvtier_close has begun (a second one does nothing)
  // A handle opened before a fork() is the parent's: its rings, sockets, locks and threads are
  // not the child's to use or to tear down.
  const uint64_t generation = kvtier::fork_generation();
  mutable std::shared_mutex mu;  // guards layout and format against register/set calls
  std::optional<kvtier::PoolLayout> layout;
  uint64_t format = 0;  // format_hash() of the page format, mixed into every key id

  // The asynchronous requests' queue, workers and completion fd: made at the first
  // asynchronous call, ended by kvtier_close (end_requests).
  std::mutex requests_mu;
  std::unique_ptr<kvtier::Requests> requests;
  bool requests_ended = false;

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
  // The handle's requests, made on first use; CLOSED once kvtier_close has ended them.
  kvtier::Status get_requests(kvtier::Requests** out) {
    std::lock_guard lock(requests_mu);
    if (requests_ended) return {KVTIER_ERR_CLOSED, "the handle is closed (kvtier_close)"};
    if (!requests) {
      const kvtier::Config& c = rep->config();
      if (kvtier::Status s = kvtier::Requests::create(c.async_threads, c.async_depth, &requests);
          !s.is_ok())
        return s;
    }
    *out = requests.get();
    return {};
  }
  // kvtier_close's first step: no request runs or is queued once it returns. The requests
  // object itself (its fd) goes once no call can reach it (release_requests).
  void end_requests() {
    kvtier::Requests* r = nullptr;
    {
      std::lock_guard lock(requests_mu);
      requests_ended = true;
      r = requests.get();
    }
    if (r) r->shutdown();
  }
  void release_requests() {
    std::lock_guard lock(requests_mu);
    requests.reset();
  }
};

namespace kvtier::capi {

// One call's use of a handle, from its first look at the handle to its return: kvtier_close()
// waits for every use that began before it, and a use that begins after is refused.
class Use {
 public:
  explicit Use(kvtier_store_t* store) : store_(store) {
    if (!store_) {
      refusal_ = {KVTIER_ERR_INVALID_ARG, "store is NULL"};
    } else if (store_->generation != kvtier::fork_generation()) {
      store_ = nullptr;
      refusal_ = {KVTIER_ERR_CLOSED,
                  "this handle was opened in the parent process before "
                  "fork(); open a new store in the child"};
    } else if (!store_->calls.enter()) {
      store_ = nullptr;
      refusal_ = {KVTIER_ERR_CLOSED, "the handle is closed (kvtier_close)"};
    }
  }
  ~Use() {
    if (store_) store_->calls.leave();
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;

  explicit operator bool() const { return refusal_.is_ok(); }
  const Status& refusal() const { return refusal_; }

 private:
  kvtier_store_t* store_;
  Status refusal_;
};

}  // namespace kvtier::capi
