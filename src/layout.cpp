#include "src/layout.h"

#include <algorithm>
#include <string>

namespace kvtier {

namespace {
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
}  // namespace

std::string PoolLayout::describe() const {
  static constexpr const char* kOrders[] = {"layer_first", "page_first", "page_first_direct"};
  const bool mha = kind == PoolKind::kMHA;
  std::string d = std::string(mha ? "mha" : "mla") + "/" + kOrders[static_cast<int>(order)] +
                  "/dtype=" + (dtype_name.empty() ? "?" : dtype_name) +
                  "/E=" + std::to_string(dtype_size) + "/P=" + std::to_string(page_size) +
                  "/L=" + std::to_string(layer_num);
  if (mha) return d + "/H=" + std::to_string(head_num) + "/D=" + std::to_string(head_dim);
  return d + "/C=" + std::to_string(kv_cache_dim);
}

uint64_t PoolLayout::token_bytes() const {
  return kind == PoolKind::kMHA ? head_num * head_dim * dtype_size : kv_cache_dim * dtype_size;
}

uint64_t PoolLayout::pool_bytes() const {
  return (kind == PoolKind::kMHA ? 2 : 1) * layer_num * pool_tokens * token_bytes();
}

size_t PoolLayout::frags_per_page() const {
  size_t per_entry = kind == PoolKind::kMHA ? 2 : 1;
  return order == PoolOrder::kLayerFirst ? per_entry * layer_num : per_entry;
}

uint64_t PoolLayout::page_bytes() const {
  return (kind == PoolKind::kMHA ? 2 : 1) * layer_num * page_size * token_bytes();
}

Status PoolLayout::validate() const {
  if (!base) return {KVTIER_ERR_INVALID_ARG, "layout base is NULL"};
  if (kind != PoolKind::kMHA && kind != PoolKind::kMLA)
    return {KVTIER_ERR_INVALID_ARG, "pool_kind is neither MHA nor MLA"};
  if (order != PoolOrder::kLayerFirst && order != PoolOrder::kPageFirst &&
      order != PoolOrder::kPageFirstDirect)
    return {KVTIER_ERR_INVALID_ARG, "layout is not layer_first, page_first or page_first_direct"};
  bool mha = kind == PoolKind::kMHA;
  if (!page_size || !layer_num || !dtype_size || !pool_tokens ||
      (mha ? (!head_num || !head_dim) : !kv_cache_dim))
    return {KVTIER_ERR_INVALID_ARG,
            mha ? "MHA layout needs non-zero page_size, layer_num, head_num, head_dim, "
                  "dtype_size and pool_tokens"
                : "MLA layout needs non-zero page_size, layer_num, kv_cache_dim, dtype_size "
                  "and pool_tokens"};
  if (pool_tokens % page_size)
    return {KVTIER_ERR_INVALID_ARG, "pool_tokens " + std::to_string(pool_tokens) +
                                        " is not a multiple of page_size " +
                                        std::to_string(page_size)};
  uint64_t t = 0;
  if (!mul_ok(mha ? head_num : kv_cache_dim, mha ? head_dim : 1, &t) ||
      !mul_ok(t, dtype_size, &t) || !mul_ok(t, pool_tokens, &t) || !mul_ok(t, layer_num, &t) ||
      !mul_ok(t, 2, &t) || t > (1ull << 62))
    return {KVTIER_ERR_INVALID_ARG, "layout dims overflow"};
  return {};
}

Status PoolLayout::page_frags(int64_t slot, Frag* out) const {
  if (slot < 0 || static_cast<uint64_t>(slot) % page_size ||
      static_cast<uint64_t>(slot) + page_size > pool_tokens)
    return {KVTIER_ERR_OUT_OF_RANGE, "token slot " + std::to_string(slot) +
                                         " is not a page start in a pool of " +
                                         std::to_string(pool_tokens) + " tokens (page_size " +
                                         std::to_string(page_size) + ")"};
  const uint64_t s = static_cast<uint64_t>(slot);
  const uint64_t tb = token_bytes();
  // MHA keeps all K before all V: V of an entry is K plus L*S*H*D*E bytes.
  const uint64_t v_off = layer_num * pool_tokens * tb;
  if (order == PoolOrder::kLayerFirst) {
    // (2, L, S, ...) or (L, S, ...): one run of P tokens per layer.
    const size_t len = page_size * tb;
    for (uint64_t l = 0; l < layer_num; ++l) {
      std::byte* k = base + (l * pool_tokens + s) * tb;
      if (kind == PoolKind::kMHA) {
        out[2 * l] = {k, len};
        out[2 * l + 1] = {k + v_off, len};
      } else {
        out[l] = {k, len};
      }
    }
    return {};
  }
  // page_first (S, L, ...) and page_first_direct (S/P, L, P, ...) place a page's L*P tokens
  // contiguously at the same offset, s*L*token_bytes; they differ only inside the page.
  std::byte* k = base + s * layer_num * tb;
  const size_t len = layer_num * page_size * tb;
  out[0] = {k, len};
  if (kind == PoolKind::kMHA) out[1] = {k + v_off, len};
  return {};
}

Status PoolLayout::layer_frags(int64_t slot, uint64_t layer, std::vector<Frag>* out) const {
  if (layer >= layer_num)
    return {KVTIER_ERR_OUT_OF_RANGE, "layer " + std::to_string(layer) + " of a pool of " +
                                         std::to_string(layer_num) + " layers"};
  Frag whole[2];
  if (order == PoolOrder::kLayerFirst) {
    std::vector<Frag> all(frags_per_page());
    if (Status s = page_frags(slot, all.data()); !s.is_ok()) return s;
    const size_t per_layer = kind == PoolKind::kMHA ? 2 : 1;
    out->insert(out->end(), all.begin() + layer * per_layer, all.begin() + (layer + 1) * per_layer);
    return {};
  }
  if (Status s = page_frags(slot, whole); !s.is_ok()) return s;
  const uint64_t tb = token_bytes();
  for (int kv = 0; kv < (kind == PoolKind::kMHA ? 2 : 1); ++kv) {
    if (order == PoolOrder::kPageFirstDirect) {  // (L, P, ...) inside the page
      out->push_back({whole[kv].ptr + layer * page_size * tb, page_size * tb});
    } else {  // (P, L, ...) inside the page: one run per token
      for (uint64_t t = 0; t < page_size; ++t)
        out->push_back({whole[kv].ptr + (t * layer_num + layer) * tb, tb});
    }
  }
  return {};
}

Status PoolLayout::pages_frags(const int64_t* slots, size_t pages, Frag* out,
                               int64_t* codes) const {
  const size_t per_page = frags_per_page();
  Status first;
  for (size_t i = 0; i < pages; ++i) {
    Status s = page_frags(slots[i * page_size], out + i * per_page);
    if (s.is_ok()) continue;
    std::fill(out + i * per_page, out + (i + 1) * per_page, Frag{nullptr, 0});
    if (codes) codes[i] = s.code();
    if (first.is_ok()) first = {s.code(), "page " + std::to_string(i) + ": " + s.message()};
  }
  return first;
}

}  // namespace kvtier
