// Page-layout math: where the engine's host pool keeps each page (DESIGN.md's table).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/keys.h"
#include "src/status.h"

namespace kvtier {

enum class PoolKind { kMHA = KVTIER_POOL_MHA, kMLA = KVTIER_POOL_MLA };
enum class PoolOrder {
  kLayerFirst = KVTIER_LAYOUT_LAYER_FIRST,
  kPageFirst = KVTIER_LAYOUT_PAGE_FIRST,
  kPageFirstDirect = KVTIER_LAYOUT_PAGE_FIRST_DIRECT,
};

struct PoolLayout {
  std::byte* base = nullptr;
  PoolKind kind = PoolKind::kMHA;
  PoolOrder order = PoolOrder::kLayerFirst;
  uint64_t page_size = 0;     // P
  uint64_t layer_num = 0;     // L
  uint64_t head_num = 0;      // H
  uint64_t head_dim = 0;      // D
  uint64_t kv_cache_dim = 0;  // C
  uint64_t dtype_size = 0;    // E
  uint64_t pool_tokens = 0;   // S
  std::string dtype_name;     // "bfloat16", ...; empty: known by dtype_size only

  // The page format as text: everything that orders or sizes a page's bytes (kind, order,
  // dtype, P, L, H, D or C), not where the pool lives (base, S). Two layouts with the same
  // description hold byte-identical pages for the same tokens.
  std::string describe() const;

  // Checks the dims (non-zero where used, S a multiple of P, no overflow).
  Status validate() const;
  // Bytes of one token in one layer: H*D*E (MHA) or C*E (MLA).
  uint64_t token_bytes() const;
  // The whole pool buffer: 2*L*S*H*D*E (MHA) or L*S*C*E (MLA).
  uint64_t pool_bytes() const;
  // Fragments per page: MHA 2 (page_first*) or 2L (layer_first); MLA 1 or L.
  size_t frags_per_page() const;
  // Bytes per page: the sum of its fragments.
  uint64_t page_bytes() const;
  // Writes the frags_per_page() fragments of the page starting at token `slot`, in the engine's
  // order. KVTIER_ERR_OUT_OF_RANGE if the slot is off a page boundary or outside the pool.
  Status page_frags(int64_t slot, Frag* out) const;
  // One layer of the page at token `slot`, in the page's own byte order, appended to `out`:
  // layer_first and page_first_direct keep a layer's tokens together (1 fragment, 2 for MHA's
  // K and V); page_first interleaves layers per token (P fragments, 2P for MHA).
  // KVTIER_ERR_OUT_OF_RANGE for a bad slot or a layer >= L.
  Status layer_frags(int64_t slot, uint64_t layer, std::vector<Frag>* out) const;
  // The fragments of `pages` pages that start at slots[0], slots[P], slots[2P], ... into
  // out[pages * frags_per_page()]. A bad page gets null fragments and, when `codes` is not
  // NULL, its code in codes[i]; the first failure is returned.
  Status pages_frags(const int64_t* slots, size_t pages, Frag* out, int64_t* codes) const;
};

}  // namespace kvtier
