// The free extents of kvtier-server's arena. An extent that comes back is merged with its free
// neighbours, so the space pages of one size gave back serves pages of any size.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <set>
#include <utility>

namespace kvtier {

class FreeSpace {
 public:
  explicit FreeSpace(uint64_t capacity) { add(0, capacity); }

  // The smallest free extent of at least `size` bytes gives its first `size`; false if none.
  bool take(uint64_t size, uint64_t* offset) {
    auto it = by_size_.lower_bound({size, 0});
    if (it == by_size_.end()) return false;
    const auto [len, at] = *it;
    remove(at, len);
    if (len > size) add(at + size, len - size);
    *offset = at;
    return true;
  }

  void give(uint64_t offset, uint64_t size) {
    auto next = by_offset_.lower_bound(offset);
    if (next != by_offset_.end() && next->first == offset + size) {
      size += next->second;
      remove(next->first, next->second);
    }
    auto prev = by_offset_.lower_bound(offset);
    if (prev != by_offset_.begin()) {
      --prev;
      if (prev->first + prev->second == offset) {
        offset = prev->first;
        size += prev->second;
        remove(prev->first, prev->second);
      }
    }
    add(offset, size);
  }

  uint64_t largest() const { return by_size_.empty() ? 0 : std::prev(by_size_.end())->first; }

 private:
  void add(uint64_t offset, uint64_t size) {
    by_offset_.emplace(offset, size);
    by_size_.emplace(size, offset);
  }
  void remove(uint64_t offset, uint64_t size) {
    by_offset_.erase(offset);
    by_size_.erase({size, offset});
  }

  std::map<uint64_t, uint64_t> by_offset_;           // offset -> length
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // (length, offset): best fit first
};

}  // namespace kvtier
