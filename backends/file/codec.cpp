#include "codec.h"

#include <zstd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace kvtier {

namespace {
struct ZstdDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};
}  // namespace

bool aligned(Frags frags, uint64_t mem_align, uint64_t len_align) {
  if (frags.size() > kMaxIov) return false;
  for (const Frag& f : frags)
    if (reinterpret_cast<uintptr_t>(f.ptr) % mem_align || f.len % len_align) return false;
  return true;
}

size_t compress_bound(size_t n) {
  return ZSTD_compressBound(n);
}

size_t compress_frags(Frags frags, std::byte* dst, size_t cap, int level) {
  thread_local std::unique_ptr<ZSTD_CCtx, ZstdDeleter> cctx(ZSTD_createCCtx());
  if (!cctx) return 0;
  ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_only);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setPledgedSrcSize(cctx.get(), total_len(frags));
  ZSTD_outBuffer out{dst, cap, 0};
  for (size_t i = 0; i < frags.size(); ++i) {
    ZSTD_inBuffer in{frags[i].ptr, frags[i].len, 0};
    const bool last = i + 1 == frags.size();
    size_t rc;
    do {
      rc = ZSTD_compressStream2(cctx.get(), &out, &in, last ? ZSTD_e_end : ZSTD_e_continue);
      if (ZSTD_isError(rc) || (out.pos == cap && rc != 0)) return 0;
    } while (last ? rc != 0 : in.pos < in.size);
  }
  return out.pos;
}

bool decompress_frags(const std::byte* src, size_t n, Frags frags, size_t length) {
  thread_local std::unique_ptr<ZSTD_DCtx, ZstdDeleter> dctx(ZSTD_createDCtx());
  if (!dctx) return false;
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
  ZSTD_inBuffer in{src, n, 0};
  size_t produced = 0, rc = 1;
  for (const Frag& f : frags) {
    if (produced >= length) break;
    ZSTD_outBuffer out{f.ptr, std::min(f.len, length - produced), 0};
    while (out.pos < out.size) {
      rc = ZSTD_decompressStream(dctx.get(), &out, &in);
      if (ZSTD_isError(rc) || (rc != 0 && in.pos == in.size && out.pos < out.size)) return false;
      if (rc == 0) break;
    }
    produced += out.pos;
    if (out.pos < out.size) return false;
  }
  return produced == length && rc == 0;
}

BouncePool::~BouncePool() {
  for (auto& [size, bufs] : free_)
    for (std::byte* b : bufs) std::free(b);
}

std::byte* BouncePool::get(size_t size) {
  {
    std::lock_guard lock(mu_);
    auto& list = free_[size];
    if (!list.empty()) {
      std::byte* b = list.back();
      list.pop_back();
      return b;
    }
  }
  auto* b = static_cast<std::byte*>(std::aligned_alloc(kBlock, size));
  if (b) std::memset(b, 0, size);
  return b;
}

void BouncePool::put(std::byte* b, size_t size) {
  if (!b) return;
  std::lock_guard lock(mu_);
  free_[size].push_back(b);
}

}  // namespace kvtier
