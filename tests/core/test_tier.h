// A test double for tier-chain logic: a map in memory that can tear (so it checks checksums, as
// every such tier does) and rots its bytes on request. Registered as "test_rot".
#pragma once

#include <mutex>
#include <unordered_map>
#include <vector>

#include "src/tier.h"

namespace kvtier_test {

class RotTier final : public kvtier::Tier {
 public:
  static RotTier* last;  // the most recently created one, for tests to poke at
  RotTier() { last = this; }
  ~RotTier() override {
    if (last == this) last = nullptr;
  }

  std::string_view name() const override { return "test_rot"; }
  Caps caps() const override { return {.can_tear = true}; }
  void put(std::span<kvtier::PutOp> ops) override {
    std::lock_guard lock(mu_);
    for (auto& op : ops) {
      if (!map_.count(op.id)) {
        kvtier::ensure_checksum(op);
        std::vector<std::byte> v(op.size);
        kvtier::gather(op.frags, v.data());
        map_.emplace(op.id, Value{std::move(v), op.checksum});
      }
      op.result = KVTIER_OK;
    }
  }
  void get(std::span<kvtier::GetOp> ops) override {
    std::lock_guard lock(mu_);
    for (auto& op : ops) {
      auto it = map_.find(op.id);
      if (it == map_.end()) {
        op.result = KVTIER_ERR_NOT_FOUND;
      } else if (const int fit = kvtier::fits(op, it->second.bytes.size()); fit != KVTIER_OK) {
        op.result = fit;
      } else {
        kvtier::scatter(it->second.bytes.data(), it->second.bytes.size(), op.frags);
        op.checksum = it->second.checksum;
        op.result = static_cast<int64_t>(it->second.bytes.size());
        kvtier::verify(op);
      }
    }
  }
  void exists(std::span<const kvtier::KeyId> ids, std::span<uint8_t> present) override {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i) present[i] = map_.count(ids[i]);
  }
  void remove(std::span<const kvtier::KeyId> ids, std::span<int> results) override {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i)
      results[i] = map_.erase(ids[i]) ? KVTIER_OK : KVTIER_ERR_NOT_FOUND;
  }
  kvtier::Status clear() override {
    std::lock_guard lock(mu_);
    map_.clear();
    return {};
  }
  kvtier::TierStats stats() const override {
    std::lock_guard lock(mu_);
    return {map_.size(), 0, 0, 0, 0};
  }

  // Flips one byte of every stored value.
  void rot_all() {
    std::lock_guard lock(mu_);
    for (auto& [id, v] : map_) v.bytes[v.bytes.size() / 2] ^= std::byte{0x40};
  }
  size_t size() const {
    std::lock_guard lock(mu_);
    return map_.size();
  }

 private:
  struct Value {
    std::vector<std::byte> bytes;
    uint64_t checksum;
  };
  mutable std::mutex mu_;
  std::unordered_map<kvtier::KeyId, Value, kvtier::KeyIdHash> map_;
};

}  // namespace kvtier_test
