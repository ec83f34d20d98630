// Slot sizes for stored pages (file tier slots, kvtier-server arena slots): 4 KiB steps up to
// 64 KiB, then sixteen steps per power of two, so a slot wastes at most 1/16 of its page.
#pragma once

#include <cstdint>

namespace kvtier {

inline uint64_t slot_size_for(uint64_t bytes) {
  const uint64_t need = (bytes + 4095) & ~uint64_t{4095};
  if (need <= 65536) return need;
  const uint64_t step = (uint64_t{1} << (63 - __builtin_clzll(need - 1))) / 16;
  return (need + step - 1) / step * step;
}

}  // namespace kvtier
