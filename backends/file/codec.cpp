#include "backends/file/codec.h"

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

size_t rotation_for(Frags frags, size_t length) {
  if (frags.empty()) return 0;
  const size_t r = reinterpret_cast<uintptr_t>(frags[0].ptr) % kBlock;
  const size_t rotation = r ? kBlock - r : 0;
  return rotation + kBlock <= length ? rotation : 0;
}

SlotMap::SlotMap(Frags frags, size_t length, size_t rotation, uint64_t mem_align) {
  if (length > total_len(frags) || (rotation && rotation >= length)) return;
  ok_ = true;
  for (size_t start = 0; const Frag& f : frags) {
    if (start >= length) break;
    const size_t len = std::min(f.len, length - start);
    if (!runs_.empty() && runs_.back().ptr + runs_.back().len == f.ptr)
      runs_.back().len += len;
    else if (len)
      runs_.push_back({f.ptr, start, len});
    start += len;
  }
  const size_t blocks = round_block(length) / kBlock;
  size_t k = 0;  // the run that holds the block's first byte: blocks that go straight ascend
  for (size_t b = 0; b < blocks; ++b) {
    const size_t s0 = b * kBlock;
    std::byte* mem = nullptr;
    if (mem_align && s0 + kBlock + rotation <= length) {  // neither wraps nor pads
      const size_t q = s0 + rotation;
      while (runs_[k].start + runs_[k].len <= q) ++k;
      const Run& r = runs_[k];
      std::byte* m = r.ptr + (q - r.start);
      if (q + kBlock <= r.start + r.len && reinterpret_cast<uintptr_t>(m) % mem_align == 0)
        mem = m;
    }
    if (!mem) {
      add_bounce_block(s0, length, rotation);
      continue;
    }
    direct_ += kBlock;
    if (!pieces_.empty() && !pieces_.back().bounce &&
        pieces_.back().ptr + pieces_.back().len == mem)
      pieces_.back().len += kBlock;
    else
      pieces_.push_back({false, mem, 0, kBlock});
  }
}

void SlotMap::add_bounce_block(size_t s0, size_t length, size_t rotation) {
  const size_t off = bounce_;
  bounce_ += kBlock;
  if (!pieces_.empty() && pieces_.back().bounce)
    pieces_.back().len += kBlock;
  else
    pieces_.push_back({true, nullptr, off, kBlock});
  auto edge = [&](size_t at, size_t page, size_t len) {
    if (!len) return;
    Edge& e = edges_.emplace_back(Edge{at, page, len});
    if (edges_.size() > 1) {
      Edge& prev = edges_[edges_.size() - 2];
      if (prev.off + prev.len == e.off && prev.page + prev.len == e.page) {
        prev.len += e.len;
        edges_.pop_back();
      }
    }
  };
  // Slot bytes [s0, end) hold page bytes s + rotation up to the wrap, then s + rotation - length.
  const size_t end = std::min(s0 + kBlock, length), wrap = length - rotation;
  const size_t cut = std::clamp(wrap, s0, end);
  edge(off, s0 + rotation, cut - s0);
  edge(off + (cut - s0), cut + rotation - length, end - cut);
  if (end < s0 + kBlock) {
    pad_off_ = off + (end - s0);
    pad_len_ = s0 + kBlock - end;
  }
}

template <class F>
void SlotMap::walk(const Edge& e, F fn) const {
  auto it = std::upper_bound(runs_.begin(), runs_.end(), e.page,
                             [](size_t page, const Run& r) { return page < r.start; });
  size_t page = e.page, off = e.off, left = e.len;
  for (--it; left; ++it) {
    const size_t n = std::min(left, it->start + it->len - page);
    fn(it->ptr + (page - it->start), off, n);
    page += n, off += n, left -= n;
  }
}

void SlotMap::iov(std::byte* buf, std::vector<iovec>* out) const {
  for (const Piece& p : pieces_) out->push_back({p.bounce ? buf + p.off : p.ptr, p.len});
}

void SlotMap::fill(std::byte* buf) const {
  for (const Edge& e : edges_)
    walk(e, [&](std::byte* mem, size_t off, size_t n) { std::memcpy(buf + off, mem, n); });
  std::memset(buf + pad_off_, 0, pad_len_);
}

void SlotMap::drain(const std::byte* buf) const {
  for (const Edge& e : edges_)
    walk(e, [&](std::byte* mem, size_t off, size_t n) { std::memcpy(mem, buf + off, n); });
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
