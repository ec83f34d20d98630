// file: the file tier's write, cold and warm read; compression; reopening a namespace.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <xxhash.h>

#include "bench/bench.h"

namespace kvtier_bench {

// The checksum's share of the file tier's CPU: XXH3-64 of `page`-byte pages from a warm buffer,
// CPU seconds per GB. libxxhash's build (kvtier's own picks AVX2 where the CPU has it), so at
// most what the file tier pays for it.
double checksum_cpu_per_gb(const Options& o, size_t page) {
  const size_t count = std::max<size_t>(1, (size_t{64} << 20) / page);
  Buffer b(page * count);
  b.randomize(13);
  volatile uint64_t sink = 0;  // the hashes are used: the loop is not optimised away
  const Figure f = measure(
      o, page * count, [] {},
      [&] {
        for (size_t i = 0; i < count; ++i) sink = sink ^ XXH3_64bits(b.base + i * page, page);
      },
      [] {});
  return f.cpu_per_gb;
}

// Why this build of the library cannot open the file tier ("" when it can).
std::string file_tier_missing(const std::string& dir) {
  kvtier_store_t* store = nullptr;
  const std::string probe = dir + "/probe";
  const int rc = kvtier_open(("tiers=file;file_dir=" + probe).c_str(), &store);
  const std::string why = rc == KVTIER_ERR_UNSUPPORTED ? kvtier_last_error() : "";
  kvtier_close(store);
  std::filesystem::remove_all(probe);
  return why;
}

namespace {

// The checksum's CPU row for one page size.
void checksum_row(const Options& o, size_t page) {
  progress("file: checksum of " + human(page) + " pages");
  Row sum;
  sum.kind = "checksum";
  sum.tier = "file";
  sum.op = "xxh3";
  sum.block = page;
  sum.fig.cpu_per_gb = checksum_cpu_per_gb(o, page);
  g_rows.push_back(sum);
}

// Limits: [0] fio, [1] the raw io_uring loop over the pool's own pages.
Row file_row(const std::string& pool, size_t batch, size_t page, const char* op, const Paired& p) {
  Row row;
  row.kind = "file";
  row.tier = "file";
  row.shape = pool;
  row.path = "v1";
  row.op = op;
  row.batch = batch;
  row.block = page;
  row.fig = p.fig;
  row.limit_gbps = p.limit[0].gbps;
  row.limit_cpu_per_gb = p.limit[0].cpu_per_gb;
  row.limit_name = "fio";
  row.limit_ratio = p.ratio[0];
  row.verified = std::string(op).rfind("read", 0) == 0 ? "bytes" : "codes";
  row.limit2_gbps = p.limit[1].gbps;
  row.limit2_ratio = p.ratio[1];
  row.limit2_name = "raw io_uring, same memory";
  return row;
}

std::byte* align_down(std::byte* p) {
  return p - reinterpret_cast<uintptr_t>(p) % 4096;
}
std::byte* align_up(std::byte* p) {
  return align_down(p + 4095);
}

// Two fragments per page, the K and V halves of a page_first pool: the batch's pages from the
// pool's start (src), the pages they are read back into from page max_batch on (dst).
struct KvHalves {
  std::vector<void*> src, dst;
  std::vector<size_t> sizes;
};

KvHalves kv_halves(std::byte* base, size_t page, size_t batch, size_t max_batch) {
  KvHalves h;
  h.sizes.assign(2 * batch, page / 2);
  for (size_t i = 0; i < batch; ++i) {
    h.src.push_back(base + i * page);
    h.src.push_back(base + i * page + page / 2);
    h.dst.push_back(base + (max_batch + i) * page);
    h.dst.push_back(base + (max_batch + i) * page + page / 2);
  }
  return h;
}

// Removes the batch's keys (`rm` takes the codes) and checks that none is left.
void remove_batch(kvtier_store_t* store, const std::vector<const char*>& ck, std::vector<int>& rm) {
  const size_t batch = ck.size();
  check_rc(kvtier_batch_remove(store, ck.data(), batch, rm.data()), "remove");
  size_t hits = 1;
  check_rc(kvtier_batch_exists(store, ck.data(), batch, &hits), "exists");
  if (hits) die("the store was not empty before a timed write");
}

// One batch size on an open store: write (overwrite), write new, cold and warm read, each
// read checked byte for byte. The pool's first half holds the pages, the second the reads.
void file_batch(const Options& o, const std::string& dir, kvtier_store_t* store, std::byte* base,
                const std::string& pool, size_t page, size_t batch, size_t max_batch) {
  progress("file: " + human(page) + " pages, batch " + std::to_string(batch) + ", " + pool +
           " pool");
  const auto keys = make_keys("file-" + std::to_string(page), batch);
  const auto ck = c_keys(keys);
  const KvHalves f = kv_halves(base, page, batch, max_batch);
  std::vector<int> res(batch);
  auto all_ok = [&](const char* what) {
    for (int r : res)
      if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
  };
  auto write = [&] {
    check_rc(kvtier_batch_set_v1(store, ck.data(), batch, f.src.data(), f.sizes.data(),
                                 f.src.size(), res.data()),
             "batch_set_v1");
  };
  auto read = [&] {
    check_rc(kvtier_batch_get_v1(store, ck.data(), batch, f.dst.data(), f.sizes.data(),
                                 f.dst.size(), res.data()),
             "batch_get_v1");
  };
  auto scribble = [&] { stream_fill(base + max_batch * page, std::byte{0xA5}, batch * page); };
  auto verify = [&] {
    all_ok("batch_get_v1");
    if (std::memcmp(base, base + max_batch * page, batch * page) != 0)
      die("file read-back differs");
  };
  const size_t bytes = batch * page;
  // Emptied by removing the batch's keys: their slots are then overwritten, the steady
  // state of a full cache (what fio's `write` and the raw loop do). "write new" starts
  // from cleared, truncated files, so its blocks are fresh extents the filesystem must
  // allocate: its fio limit writes a new file each time.
  std::vector<int> rm(batch);
  auto empty = [&] { remove_batch(store, ck, rm); };
  // Each row against fio and the raw loop in alternating rounds (a fio job, a raw pass, then
  // kvtier's run of the same batches): see measure_paired. The raw loop moves the pool's own
  // pages (a page's 4 KiB blocks: the one it starts in for a write's source, the next for a
  // read's destination, which must not touch the source pages).
  Fio fio(o, dir, page, batch);
  RawUring raw(o, dir, page, batch);
  std::vector<std::byte*> raw_src, raw_dst;
  for (size_t i = 0; i < batch; ++i) {
    raw_src.push_back(align_down(base + i * page));
    raw_dst.push_back(align_up(base + (max_batch + i) * page));
  }
  auto paired = [&](FioMode mode, const Timed& run) {
    const bool write = mode != FioMode::kRead, fresh = mode == FioMode::kWriteFresh;
    const auto raw_pass = [&] {
      // Warmed up as kvtier's run is: fio's job leaves the disk busy for a while.
      raw.pass(write, write ? raw_src : raw_dst, fresh);
      return raw.pass(write, write ? raw_src : raw_dst, fresh);
    };
    return measure_paired(o, bytes, {[&] { return fio.run(mode); }, raw_pass}, run);
  };
  const auto stored = [&] { all_ok("batch_set_v1"); };
  const Paired wnew =
      paired(FioMode::kWriteFresh, {[&] { check_rc(kvtier_clear(store), "clear"); }, write, stored});
  const Paired w = paired(FioMode::kWrite, {empty, write, stored});
  const Paired cold = paired(FioMode::kRead, {[&] {
                                               scribble();
                                               drop_page_cache();
                                             },
                                             read, verify});
  // A warm read against the cold rounds' limits (a page cache read has no limit of its own).
  Paired warm{measure(o, bytes, scribble, read, verify), cold.limit, {}};
  for (const LimitFigure& l : warm.limit) warm.ratio.push_back(l.gbps > 0 ? warm.fig.gbps / l.gbps : 0);
  const char* cold_op = geteuid() == 0 ? "read cold" : "read (warm: not root)";
  g_rows.push_back(file_row(pool, batch, page, "write", w));
  g_rows.push_back(file_row(pool, batch, page, "write new", wnew));
  g_rows.push_back(file_row(pool, batch, page, cold_op, cold));
  g_rows.push_back(file_row(pool, batch, page, "read warm", warm));
}

}  // namespace

void run_file(const Options& o, const std::string& dir) {
  for (size_t page : o.pages) {
    std::vector<size_t> fit;
    for (size_t b : o.file_batches)
      if (b * page <= o.file_max_bytes) fit.push_back(b);
    if (fit.empty()) continue;
    const size_t max_batch = fit.back();
    checksum_row(o, page);
    for (bool aligned : {true, false}) {
      Buffer mem(2 * max_batch * page + 8192);
      if (o.huge_pages && madvise(mem.base, mem.len, MADV_HUGEPAGE) != 0)
        die("madvise(MADV_HUGEPAGE) failed: transparent huge pages are off");
      mem.randomize(11);
      std::byte* base = mem.base + (aligned ? 0 : 64);
      const std::string cfg =
          "tiers=file;file_dir=" + dir +
          "/store;file_queue_depth=" + std::to_string(o.queue_depth) +
          ";file_capacity=" + std::to_string(4 * max_batch * page + (size_t{64} << 20));
      kvtier_store_t* store = nullptr;
      check_rc(kvtier_open(cfg.c_str(), &store), "open file tier");
      check_rc(kvtier_register_buffer(store, base, 2 * max_batch * page), "register_buffer");
      for (size_t batch : fit)
        file_batch(o, dir, store, base, aligned ? "aligned" : "unaligned", page, batch, max_batch);
      kvtier_close(store);
    }
  }
}

namespace {

// KV-like bf16 values: random mantissas, exponents in a narrow band.
void fill_kv_like(Buffer& mem) {
  std::mt19937_64 g(5);
  auto* p = reinterpret_cast<unsigned char*>(mem.base);
  for (size_t i = 0; i + 1 < mem.len; i += 2) {
    const uint64_t r = g();
    p[i] = static_cast<unsigned char>(r);
    p[i + 1] = static_cast<unsigned char>(0x3C + (r >> 8) % 3) | ((r >> 16) & 0x80);
  }
}

// The bytes the store holds on disk, as its stats report them.
double disk_bytes(kvtier_store_t* store) {
  char* js = nullptr;
  check_rc(kvtier_stats_json(store, &js), "stats");
  const std::string stats(js);
  kvtier_free(js);
  const size_t at = stats.find("\"bytes\":");
  return std::strtod(stats.c_str() + at + 8, nullptr);
}

// The compression runs' batch: sources in the pool's first half, reads into its second.
struct ZstdBatch {
  size_t page = 0, batch = 0;
  std::byte* base = nullptr;
  std::vector<const char*> ck;
  std::vector<void*> src, dst;
  std::vector<size_t> sizes;
  std::vector<int> res;

  void all_ok() const {
    for (int r : res)
      if (r != KVTIER_OK) die(std::string("compression run: ") + kvtier_error_name(r));
  }
};

void push_compression(const char* mode, const ZstdBatch& b, const Figure& w, const Figure& r,
                      double disk) {
  for (auto [op, fig] : {std::pair{"write", w}, std::pair{"read cold", r}}) {
    Row row;
    row.kind = "compression";
    row.tier = "file";
    row.path = mode;
    row.op = op;
    row.batch = b.batch;
    row.block = b.page;
    row.fig = fig;
    row.speedup = disk / (b.batch * b.page);  // disk bytes per page byte
    row.verified = std::string(op) == "write" ? "codes" : "bytes";
    g_rows.push_back(row);
  }
}

// One mode on a store of its own: the write, the bytes it left on disk, the cold read.
void compression_mode(const Options& o, const std::string& dir, const char* mode, ZstdBatch& b) {
  progress(std::string("file: compression ") + mode);
  kvtier_store_t* store = nullptr;
  const std::string cfg = "tiers=file;file_compression=" + std::string(mode) + ";file_dir=" + dir +
                          "/zstd-" + mode + ";file_queue_depth=" + std::to_string(o.queue_depth);
  check_rc(kvtier_open(cfg.c_str(), &store), "open");
  check_rc(kvtier_register_buffer(store, b.base, 2 * b.batch * b.page), "register_buffer");
  Figure w = measure(
      o, b.batch * b.page,
      [&] { check_rc(kvtier_batch_remove(store, b.ck.data(), b.batch, b.res.data()), "remove"); },
      [&] {
        check_rc(kvtier_batch_set_v1(store, b.ck.data(), b.batch, b.src.data(), b.sizes.data(),
                                     b.batch, b.res.data()),
                 "set");
      },
      [&] { b.all_ok(); });
  const double disk = disk_bytes(store);
  Figure r = measure(
      o, b.batch * b.page,
      [&] {
        stream_fill(static_cast<std::byte*>(b.dst[0]), std::byte{0xA5}, b.batch * b.page);
        drop_page_cache();
      },
      [&] {
        check_rc(kvtier_batch_get_v1(store, b.ck.data(), b.batch, b.dst.data(), b.sizes.data(),
                                     b.batch, b.res.data()),
                 "get");
      },
      [&] {
        b.all_ok();
        if (std::memcmp(b.src[0], b.dst[0], b.batch * b.page) != 0) die("zstd read-back differs");
      });
  kvtier_close(store);
  push_compression(mode, b, w, r, disk);
}

}  // namespace

// zstd on KV-like bf16 pages (random mantissas, exponents in a narrow band): what it saves on
// disk and what it costs, against the same pages stored plain.
void run_compression(const Options& o, const std::string& dir) {
  ZstdBatch b;
  b.page = size_t{1} << 20;
  b.batch = 16;
  Buffer mem(2 * b.batch * b.page + 4096);
  fill_kv_like(mem);
  b.base = mem.base;
  const auto keys = make_keys("zstd", b.batch);
  b.ck = c_keys(keys);
  b.sizes.assign(b.batch, b.page);
  for (size_t i = 0; i < b.batch; ++i) {
    b.src.push_back(b.base + i * b.page);
    b.dst.push_back(b.base + (b.batch + i) * b.page);
  }
  b.res.resize(b.batch);
  for (const char* mode : {"none", "zstd:1", "zstd:3"}) compression_mode(o, dir, mode, b);
}

// How fast the file tier's index comes back after a restart: the pages are written, the store
// closed, the page cache dropped, and the open timed (it reads every slot header).
void run_reopen(const Options& o, const std::string& dir) {
  const size_t pages = 50000, batch = 512, page = 4096;
  const std::string cfg =
      "tiers=file;file_dir=" + dir + "/reopen;file_capacity=" + std::to_string(pages * 3 * page);
  Buffer value(page);
  value.randomize(12);
  kvtier_store_t* store = nullptr;
  check_rc(kvtier_open(cfg.c_str(), &store), "open");
  progress("file: writing " + std::to_string(pages) + " pages for the reopen test");
  std::vector<std::string> keys;
  std::vector<const void*> ptrs(batch, value.base);
  std::vector<size_t> sizes(batch, page);
  std::vector<int> res(batch);
  for (size_t first = 0; first < pages; first += batch) {
    const size_t n = std::min(batch, pages - first);
    keys = make_keys("reopen-" + std::to_string(first), n);
    const auto ck = c_keys(keys);
    check_rc(kvtier_batch_set(store, ck.data(), n, ptrs.data(), sizes.data(), res.data()), "set");
  }
  kvtier_close(store);
  std::vector<double> secs;
  for (int r = 0; r < std::max(1, o.repeats); ++r) {
    drop_page_cache();
    const double t0 = now();
    check_rc(kvtier_open(cfg.c_str(), &store), "reopen");
    secs.push_back(now() - t0);
    char* js = nullptr;
    check_rc(kvtier_stats_json(store, &js), "stats");
    const bool all = std::string(js).find("\"keys\":" + std::to_string(pages)) != std::string::npos;
    kvtier_free(js);
    kvtier_close(store);
    if (!all) die("the reopened index lost pages");
  }
  std::sort(secs.begin(), secs.end());
  Row row;
  row.kind = "reopen";
  row.tier = "file";
  row.op = "open";
  row.batch = pages;
  row.block = page;
  row.fig.median_s = secs[secs.size() / 2];
  row.fig.gbps = pages / row.fig.median_s;  // pages per second
  g_rows.push_back(row);
}

}  // namespace kvtier_bench
