#include "src/store.h"

#include <cstring>
#include <mutex>
#include <numeric>
#include <sstream>

#include "src/log.h"

namespace kvtier {

struct Store::TierSlot {
  std::unique_ptr<Tier> tier;
  Tier::Caps caps;
  std::atomic<uint64_t> hits{0};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> errors{0};  // seen by the store: checksum mismatches, failed demotions
};

namespace {

Status key_error(size_t i, const Status& s) {
  return {s.code(), "key " + std::to_string(i) + ": " + s.message()};
}

// A batch whose arrays do not match is the caller's bug, not a key's: no key runs, and every
// result slot says so.
Status refuse_batch(const Batch& b, const std::string& why) {
  for (int64_t& r : b.results) r = KVTIER_ERR_INVALID_ARG;
  return {KVTIER_ERR_INVALID_ARG, "batch: " + why};
}

std::string json_escape(const std::string& s) {
  std::ostringstream o;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o << '\\' << c;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o << buf;
    } else {
      o << c;
    }
  }
  return o.str();
}

}  // namespace

Store::Store(const Config& config) : config_(config), ns_seed_(namespace_seed(config.ns)) {}

Store::~Store() {
  // A clean close under write_back writes down what only the top tier holds, for as long as a
  // close may reasonably take; what is left is said.
  if (config_.write_policy != WritePolicy::kWriteBack || tiers_.size() < 2) return;
  constexpr auto kFlushBudget = std::chrono::seconds(30);
  const size_t left = tiers_[0]->tier->flush(std::chrono::steady_clock::now() + kFlushBudget);
  if (left) log().warn("close: {} write_back pages not written down within 30 s: lost", left);
}

Status Store::open(const Config& config, std::unique_ptr<Store>* out) {
  set_log_level(config.log_level);
  std::unique_ptr<Store> store(new Store(config));
  for (const std::string& name : config.tiers) {
    auto slot = std::make_unique<TierSlot>();
    Status s = make_tier(name, config, &slot->tier);
    if (!s.is_ok()) return s;
    slot->caps = slot->tier->caps();
    store->tiers_.push_back(std::move(slot));
  }
  if (config.write_policy == WritePolicy::kWriteBack) {
    // Pages a tier evicts go down to the next one instead of being lost.
    for (size_t i = 0; i + 1 < store->tiers_.size(); ++i) {
      TierSlot* below = store->tiers_[i + 1].get();
      store->tiers_[i]->tier->set_eviction_sink([below](std::span<PutOp> ops) {
        below->tier->put(ops);
        for (const PutOp& op : ops) {
          if (op.result == KVTIER_OK) continue;
          below->errors.fetch_add(1, std::memory_order_relaxed);
          log().warn("demotion to tier '{}' failed: {}", below->tier->name(), code_name(op.result));
        }
      });
    }
  }
  std::string chain;
  for (const auto& t : store->tiers_) {
    // Appended piece by piece: `const char* + std::string&&` trips GCC 12's false -Wrestrict
    // (GCC bug 105329) in Release builds.
    if (!chain.empty()) chain += ',';
    chain += t->tier->name();
  }
  log().info("store open: tiers={} namespace='{}' write_policy={}", chain, config.ns,
             config.write_policy == WritePolicy::kWriteBack ? "write_back" : "write_through");
  *out = std::move(store);
  return {};
}

Status Store::check_key(const char* key) const {
  if (!key) return {KVTIER_ERR_INVALID_ARG, "key is NULL"};
  const size_t len = strnlen(key, KVTIER_MAX_KEY_LEN + 1);
  if (len == 0) return {KVTIER_ERR_KEY_TOO_LONG, "key is empty"};
  if (len > KVTIER_MAX_KEY_LEN)
    return {KVTIER_ERR_KEY_TOO_LONG,
            "key is longer than " + std::to_string(KVTIER_MAX_KEY_LEN) + " bytes"};
  return {};
}

Status Store::check_value(Frags frags, Memory memory) const {
  size_t total = 0;
  for (size_t f = 0; f < frags.size(); ++f) {
    if (!frags[f].ptr && frags[f].len)
      return {KVTIER_ERR_INVALID_ARG, "fragment " + std::to_string(f) + " is NULL"};
    if (__builtin_add_overflow(total, frags[f].len, &total))
      return {KVTIER_ERR_INVALID_ARG, "fragment sizes overflow"};
  }
  if (total == 0) return {KVTIER_ERR_INVALID_ARG, "the fragments total 0 bytes"};
  if (memory == Memory::kRegistered) return regions_.check(frags);
  return {};
}

std::vector<size_t> Store::valid_keys(const Batch& b, Status* first) const {
  std::vector<size_t> valid;
  if (b.results.size() != b.keys.size() || b.frags.size() != b.keys.size() * b.per_key) {
    *first = refuse_batch(b, std::to_string(b.keys.size()) + " keys, " +
                                 std::to_string(b.results.size()) + " results, " +
                                 std::to_string(b.frags.size()) + " fragments");
    return valid;
  }
  valid.reserve(b.keys.size());
  // One registry lookup for the whole batch in the usual case that all of it is registered;
  // key by key (for each key's own code) only when some fragment is not.
  Memory memory = b.memory;
  if (memory == Memory::kRegistered && regions_.check(b.frags).is_ok()) memory = Memory::kPool;
  for (size_t i = 0; i < b.keys.size(); ++i) {
    if (b.results[i] != KVTIER_OK) continue;
    Status s = check_key(b.keys[i]);
    if (s.is_ok() && b.per_key) s = check_value(b.value(i), memory);
    if (s.is_ok()) {
      valid.push_back(i);
    } else {
      b.results[i] = s.code();
      if (first->is_ok()) *first = key_error(i, s);
    }
  }
  return valid;
}

Status Store::put(const Batch& b) {
  Regions::Hold hold(regions_);  // before valid_keys checks the fragments' memory
  const uint64_t seed = seed_of(b.format);
  if (b.per_key == 0) return refuse_batch(b, "put without fragments");
  Status first;
  std::vector<size_t> index = valid_keys(b, &first);
  std::vector<PutOp> ops;  // ops[j] is key index[j]
  ops.reserve(index.size());
  for (size_t i : index) {
    ops.push_back({.id = key_id(seed, b.keys[i]),
                   .frags = b.value(i),
                   .size = total_len(b.value(i)),
                   .result = KVTIER_ERR_NO_SPACE});
  }
  // Write-through: every tier; write-back: the top tier, the rest by demotion. A key counts
  // as stored when some tier holds it.
  std::vector<int> stored(ops.size(), 0);
  std::vector<int> error(ops.size(), KVTIER_ERR_NO_SPACE);
  const size_t n_tiers = config_.write_policy == WritePolicy::kWriteBack ? 1 : tiers_.size();
  for (size_t t = 0; t < n_tiers && !ops.empty(); ++t) {
    TierSlot& slot = *tiers_[t];
    slot.tier->put(ops);
    for (size_t j = 0; j < ops.size(); ++j) {
      if (ops[j].result == KVTIER_OK) {
        stored[j] = 1;
      } else {
        error[j] = ops[j].result;
        log().debug("tier '{}' could not store key {}: {}", slot.tier->name(), index[j],
                    code_name(ops[j].result));
      }
    }
  }
  for (size_t j = 0; j < ops.size(); ++j) {
    b.results[index[j]] = stored[j] ? KVTIER_OK : error[j];
    if (!stored[j] && first.is_ok())
      first = {error[j], "key " + std::to_string(index[j]) + ": no tier could store it (" +
                             code_text(error[j]) + ")"};
  }
  if (!first.is_ok()) log().warn("batch_set: {}", first.message());
  return first;
}

Status Store::get(const Batch& b) {
  Regions::Hold hold(regions_);  // before valid_keys checks the fragments' memory
  const uint64_t seed = seed_of(b.format);
  if (b.per_key == 0) return refuse_batch(b, "get without fragments");
  Status first;
  const std::vector<size_t> index = valid_keys(b, &first);
  std::vector<GetOp> ops;  // ops[j] is key index[j]
  ops.reserve(index.size());
  for (size_t i : index) {
    ops.push_back({.id = key_id(seed, b.keys[i]),
                   .frags = b.value(i),
                   .capacity = total_len(b.value(i)),
                   .fit = b.fit});
  }
  std::vector<int64_t> final_result(ops.size(), KVTIER_ERR_NOT_FOUND);
  std::vector<size_t> pending(ops.size());  // indices into ops still looked for
  std::iota(pending.begin(), pending.end(), size_t{0});
  std::vector<GetOp> copies;  // the keys a lower tier is asked for
  for (size_t t = 0; t < tiers_.size() && !pending.empty(); ++t) {
    std::span<GetOp> batch = ops;  // every key is still looked for: no copy
    if (pending.size() < ops.size()) {
      copies.clear();
      for (size_t j : pending) copies.push_back(ops[j]);
      batch = copies;
    }
    tiers_[t]->tier->get(batch);
    std::vector<size_t> still;
    std::vector<const GetOp*> hits;
    for (size_t k = 0; k < batch.size(); ++k) {
      const size_t j = pending[k];
      if (take_answer(*tiers_[t], batch[k], index[j], &final_result[j]))
        still.push_back(j);
      else if (batch[k].result >= 0)
        hits.push_back(&batch[k]);
    }
    promote(t, hits);
    pending.swap(still);
  }
  for (size_t j = 0; j < ops.size(); ++j) {
    b.results[index[j]] = final_result[j];
    if (final_result[j] < 0 && final_result[j] != KVTIER_ERR_NOT_FOUND && first.is_ok())
      first = {static_cast<int>(final_result[j]), "key " + std::to_string(index[j]) + ": " +
                                                      code_text(static_cast<int>(final_result[j]))};
  }
  if (!first.is_ok()) log().warn("batch_get: {}", first.message());
  return first;
}

bool Store::take_answer(TierSlot& slot, GetOp& op, size_t key, int64_t* result) {
  if (op.result >= 0) {
    slot.hits.fetch_add(1, std::memory_order_relaxed);
    *result = op.result;
    return false;
  }
  if (op.result == KVTIER_ERR_CORRUPT) {
    slot.errors.fetch_add(1, std::memory_order_relaxed);
    log().error("tier '{}': key {} failed its checksum; dropped and treated as a miss",
                slot.tier->name(), key);
    int rm = 0;
    slot.tier->remove(std::span<const KeyId>(&op.id, 1), std::span<int>(&rm, 1));
    return true;
  }
  if (op.result == KVTIER_ERR_NOT_FOUND) {
    slot.misses.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  *result = op.result;
  // The value exists but does not fit: looking lower would not help.
  if (op.result == KVTIER_ERR_BUFFER_TOO_SMALL || op.result == KVTIER_ERR_SIZE_MISMATCH)
    return false;
  slot.errors.fetch_add(1, std::memory_order_relaxed);
  log().warn("tier '{}' failed to read key {}: {}", slot.tier->name(), key,
             code_name(static_cast<int>(op.result)));
  return true;
}

void Store::promote(size_t t, std::span<const GetOp* const> hits) {
  if (t == 0 || hits.empty()) return;
  std::vector<std::vector<Frag>> frags;  // reserved: each PutOp points into its own entry
  frags.reserve(hits.size());
  std::vector<PutOp> ops;
  ops.reserve(hits.size());
  for (const GetOp* hit : hits) {
    const size_t size = static_cast<size_t>(hit->result);
    frags.push_back(leading(hit->frags, size));
    // A checksum that came from a tier that can tear has just been verified by it.
    ops.push_back({.id = hit->id,
                   .frags = frags.back(),
                   .size = size,
                   .checksum = hit->checksum,
                   .has_checksum = tiers_[t]->caps.can_tear});
  }
  for (size_t up = 0; up < t; ++up) tiers_[up]->tier->put(ops);
}

template <class Ask>
Status Store::ask_down(const Batch& b, Ask ask) {
  const uint64_t seed = seed_of(b.format);
  Status first;
  std::vector<size_t> where = valid_keys(b, &first);  // where[a] is the key of ids[a]
  std::vector<KeyId> ids;                             // the keys no tier above answered
  ids.reserve(where.size());
  for (size_t i : where) {
    b.results[i] = KVTIER_ERR_NOT_FOUND;
    ids.push_back(key_id(seed, b.keys[i]));
  }
  std::vector<int64_t> answer;
  for (const auto& slot : tiers_) {
    if (ids.empty()) break;
    answer.assign(ids.size(), KVTIER_ERR_NOT_FOUND);
    ask(*slot->tier, std::span<const KeyId>(ids), std::span<int64_t>(answer));
    size_t kept = 0;
    for (size_t a = 0; a < ids.size(); ++a) {
      const int64_t r = answer[a];
      if (r == KVTIER_ERR_NOT_FOUND) {  // look lower
        ids[kept] = ids[a];
        where[kept++] = where[a];
        continue;
      }
      b.results[where[a]] = r;
      if (r < 0 && first.is_ok())
        first = {static_cast<int>(r),
                 "key " + std::to_string(where[a]) + ": " + code_text(static_cast<int>(r))};
    }
    ids.resize(kept);
    where.resize(kept);
  }
  return first;
}

Status Store::exists_each(const Batch& b) {
  std::vector<uint8_t> present;
  return ask_down(b, [&present](Tier& tier, std::span<const KeyId> ids, std::span<int64_t> answer) {
    present.assign(ids.size(), 0);
    tier.exists(ids, present);
    for (size_t a = 0; a < ids.size(); ++a)
      if (present[a]) answer[a] = KVTIER_OK;
  });
}

Status Store::sizes(const Batch& b) {
  return ask_down(b, [](Tier& tier, std::span<const KeyId> ids, std::span<int64_t> answer) {
    tier.sizes(ids, answer);
  });
}

Status Store::exists(std::span<const char* const> keys, size_t* hits, uint64_t format) {
  std::vector<int64_t> present(keys.size(), KVTIER_OK);
  Status s = exists_each({.keys = keys, .format = format, .results = present});
  size_t n = 0;
  while (n < present.size() && present[n] == KVTIER_OK) ++n;
  *hits = n;
  return s;  // a bad key ends the run like a miss; its code is the caller's detail
}

Status Store::remove(const Batch& b) {
  const uint64_t seed = seed_of(b.format);
  Status first;
  const std::vector<size_t> index = valid_keys(b, &first);  // ids[j] is key index[j]
  std::vector<KeyId> ids;
  ids.reserve(index.size());
  for (size_t i : index) {
    ids.push_back(key_id(seed, b.keys[i]));
    b.results[i] = KVTIER_ERR_NOT_FOUND;
  }
  std::vector<int> r(ids.size());
  for (const auto& slot : tiers_) {
    slot->tier->remove(ids, r);
    for (size_t j = 0; j < ids.size(); ++j)
      if (r[j] == KVTIER_OK) b.results[index[j]] = KVTIER_OK;
  }
  return first;
}

Status Store::register_buffer(const void* addr, size_t len) {
  Status s = regions_.add(addr, len);
  if (s.is_ok())
    for (auto& t : tiers_) t->tier->register_memory(addr, len);
  return s;
}

Status Store::unregister_buffer(const void* addr) {
  Status s = regions_.remove(addr);
  if (s.is_ok())
    for (auto& t : tiers_) t->tier->unregister_memory(addr);
  return s;
}

Status Store::clear() {
  Status first;
  for (const auto& slot : tiers_)
    if (Status s = slot->tier->clear(); !s.is_ok() && first.is_ok()) first = s;
  return first;
}

std::string Store::stats_json() const {
  std::ostringstream o;
  o << "{\"version\":\"" << KVTIER_VERSION_MAJOR << '.' << KVTIER_VERSION_MINOR << '.'
    << KVTIER_VERSION_PATCH << "\",\"namespace\":\"" << json_escape(config_.ns)
    << "\",\"write_policy\":\""
    << (config_.write_policy == WritePolicy::kWriteBack ? "write_back" : "write_through")
    << "\",\"tiers\":[";
  for (size_t t = 0; t < tiers_.size(); ++t) {
    const TierSlot& slot = *tiers_[t];
    TierStats s = slot.tier->stats();
    o << (t ? "," : "") << "{\"name\":\"" << slot.tier->name() << "\",\"keys\":" << s.keys
      << ",\"bytes\":" << s.bytes << ",\"capacity\":" << s.capacity
      << ",\"hits\":" << slot.hits.load() << ",\"misses\":" << slot.misses.load()
      << ",\"evictions\":" << s.evictions << ",\"errors\":" << s.errors + slot.errors.load();
    if (s.servers >= 0)
      o << ",\"servers\":" << s.servers << ",\"server_hits\":" << s.server_hits
        << ",\"server_misses\":" << s.server_misses << ",\"leases\":" << s.leases
        << ",\"connections\":" << s.connections;
    o << "}";
  }
  o << "]}";
  return o.str();
}

Status Store::check_layout(const PoolLayout& layout) const {
  Status s = layout.validate();
  if (!s.is_ok()) return s;
  if (!regions_.contains(layout.base, layout.pool_bytes()))
    return {KVTIER_ERR_NOT_REGISTERED, "the pool (" + std::to_string(layout.pool_bytes()) +
                                           " bytes from its base) is not inside one registered "
                                           "buffer; call kvtier_register_buffer first"};
  return {};
}

}  // namespace kvtier
