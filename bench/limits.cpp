// The machine's copy limits: memcpy and a streaming copy, the memory tier's ceiling.
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

// ---- limits -------------------------------------------------------------------------------

// A copy that bypasses the cache (SSE2 streaming stores), as glibc's memmove does for very
// large sizes: part of what the machine can do, whatever the block size.
void stream_copy(std::byte* dst, const std::byte* src, size_t n) {
#if defined(__x86_64__)
  const size_t head = (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16;
  std::memcpy(dst, src, std::min(head, n));
  if (head >= n) return;
  dst += head, src += head, n -= head;
  for (; n >= 64; n -= 64, dst += 64, src += 64)
    for (int k = 0; k < 4; ++k)
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst) + k,
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(src) + k));
  _mm_sfence();
#endif
  std::memcpy(dst, src, n);
}

void stream_fill(std::byte* dst, std::byte value, size_t n) {
#if defined(__x86_64__)
  const size_t head = std::min(n, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memset(dst, static_cast<int>(value), head);
  dst += head, n -= head;
  const __m128i v = _mm_set1_epi8(static_cast<char>(value));
  for (; n >= 16; n -= 16, dst += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(dst), v);
  _mm_sfence();
#endif
  std::memset(dst, static_cast<int>(value), n);
}

CopyLimit::CopyLimit(size_t block, size_t count, size_t threads)
    : block_(block),
      per_(count / threads),
      src_(block * count),
      dst_(block * count),
      crew_(threads) {
  src_.randomize(1);
  dst_.randomize(2);
}

Timed CopyLimit::timed(bool stream) {
  return {[] {},
          [this, stream] {
            crew_.run([&](size_t t) {
              for (size_t i = t * per_; i < (t + 1) * per_; ++i) {
                std::byte* d = dst_.base + i * block_;
                const std::byte* s = src_.base + i * block_;
                if (stream)
                  stream_copy(d, s, block_);
                else
                  std::memcpy(d, s, block_);
              }
            });
          },
          [] {}};
}

double CopyLimit::best(const Figure& memcpy, const Figure& stream, std::string* how,
                       double* plain) {
  if (how) *how = stream.gbps > memcpy.gbps ? "stream copy" : "memcpy";
  if (plain) *plain = memcpy.gbps;
  return std::max(memcpy.gbps, stream.gbps);
}

double memcpy_gbps(const Options& o, size_t block, size_t count, size_t threads, std::string* how,
                   double* plain) {
  // One after the other: in turns, the streamed copy would evict a cache-sized batch's
  // destination before each memcpy run.
  CopyLimit copy(block, count, threads);
  const size_t bytes = (count / threads) * threads * block;
  const Figure plain_fig = measure_turns(o, bytes, {copy.timed(false)})[0];
  return CopyLimit::best(plain_fig, measure_turns(o, bytes, {copy.timed(true)})[0], how, plain);
}

void run_limits(const Options& o) {
  for (size_t block : o.blocks)
    for (size_t threads : o.threads) {
      progress("limits: memcpy " + std::to_string(block));
      Row row;
      row.kind = "limit";
      row.tier = "-";
      row.path = "memcpy";
      row.op = "copy";
      row.block = block;
      row.batch = o.transfer_batch;
      row.threads = threads;
      row.limit_gbps = memcpy_gbps(o, block, o.transfer_batch * threads, threads);
      row.fig.gbps = row.limit_gbps;
      row.limit_name = "memcpy";
      g_rows.push_back(row);
    }
}

}  // namespace kvtier_bench
