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

#include "bench.h"

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

// The best single-pass copy of `count` blocks of `block` bytes over `threads` threads: the
// better of memcpy and the streaming copy (which one is named by *how).
// *plain, when given, gets memcpy's own figure.
double memcpy_gbps(const Options& o, size_t block, size_t count, size_t threads, std::string* how,
                   double* plain) {
  Buffer src(block * count), dst(block * count);
  src.randomize(1);
  dst.randomize(2);
  const size_t per = count / threads;
  double best = 0;
  Crew crew(threads);
  for (bool stream : {false, true}) {
    auto body = [&] {
      crew.run([&](size_t t) {
        for (size_t i = t * per; i < (t + 1) * per; ++i)
          (stream ? stream_copy : [](std::byte* d, const std::byte* s, size_t n) {
            std::memcpy(d, s, n);
          })(dst.base + i * block, src.base + i * block, block);
      });
    };
    const double gbps = measure(
                            o, per * threads * block, [] {}, body, [] {})
                            .gbps;
    if (gbps > best && how) *how = stream ? "stream copy" : "memcpy";
    if (!stream && plain) *plain = gbps;
    best = std::max(best, gbps);
  }
  return best;
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
