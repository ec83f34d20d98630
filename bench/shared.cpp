// shared: one namespace, two processes (the second is this binary again, "shared-reader").
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

// ---- one namespace, two processes ----------------------------------------------------------
// The same pages read cold by the process that wrote them and by a second process (this binary
// again, "shared-reader"), and batch_exists of 128 keys the first process wrote, timed in both.

constexpr size_t kExistsCalls = 20000;
constexpr int kSharedRepeats = 9;  // at least: small cold reads on a virtual disk scatter widely

std::string shared_config(const std::string& dir, const Options& o) {
  return "tiers=file;file_dir=" + dir +
         "/shared;file_queue_depth=" + std::to_string(o.queue_depth) + ";file_capacity=1GiB";
}

// Reads the batch cold and times batch_exists; the pool holds the bytes randomize(11) makes.
std::pair<Figure, double> shared_reads(const Options& o, kvtier_store_t* store, size_t page) {
  Buffer want(kSharedBatch * page), got(kSharedBatch * page + 4096);
  want.randomize(11);
  std::byte* base = got.base + 64;  // an engine pool's usual misalignment
  check_rc(kvtier_register_buffer(store, base, kSharedBatch * page), "register_buffer");
  const auto keys = make_keys("shared-" + std::to_string(page), kSharedBatch);
  const auto ck = c_keys(keys);
  std::vector<void*> dst;
  for (size_t i = 0; i < kSharedBatch; ++i) dst.push_back(base + i * page);
  std::vector<size_t> sizes(kSharedBatch, page);
  std::vector<int> res(kSharedBatch);
  Figure cold = measure(
      o, kSharedBatch * page,
      [&] {
        stream_fill(base, std::byte{0xA5}, kSharedBatch * page);
        drop_page_cache();
      },
      [&] {
        check_rc(kvtier_batch_get_v1(store, ck.data(), kSharedBatch, dst.data(), sizes.data(),
                                     dst.size(), res.data()),
                 "batch_get_v1");
      },
      [&] {
        for (int r : res)
          if (r != KVTIER_OK) die(std::string("shared read: ") + kvtier_error_name(r));
        if (std::memcmp(base, want.base, kSharedBatch * page) != 0) die("shared read differs");
      });
  const auto ekeys = make_keys("exists", kExistsKeys);
  const auto eck = c_keys(ekeys);
  size_t hits = 0;
  const double t0 = now();
  for (size_t i = 0; i < kExistsCalls; ++i)
    check_rc(kvtier_batch_exists(store, eck.data(), kExistsKeys, &hits), "batch_exists");
  const double us = (now() - t0) / kExistsCalls * 1e6;
  if (hits != kExistsKeys) die("batch_exists found " + std::to_string(hits) + " of 128");
  kvtier_unregister_buffer(store, base);
  return {cold, us};
}

int shared_reader(int argc, char** argv) {  // kvtier-bench shared-reader DIR PAGE QD REP WARM
  if (argc < 7) return 2;
  Options o;  // the caller's repeats, already raised to kSharedRepeats
  o.queue_depth = static_cast<unsigned>(std::atoi(argv[4]));
  o.repeats = std::atoi(argv[5]);
  o.warmup = std::atoi(argv[6]);
  kvtier_store_t* store = nullptr;
  check_rc(kvtier_open(shared_config(argv[2], o).c_str(), &store), "open (second process)");
  auto [cold, us] = shared_reads(o, store, std::strtoull(argv[3], nullptr, 10));
  std::printf("%.9f %.9f %.9f %.9f %.9f %.6f\n", cold.median_s, cold.min_s, cold.max_s, cold.gbps,
              cold.cpu_per_gb, us);
  kvtier_close(store);
  return 0;
}

void run_shared(Options o, const std::string& dir) {
  o.repeats = std::max(o.repeats, kSharedRepeats);
  kvtier_store_t* store = nullptr;
  check_rc(kvtier_open(shared_config(dir, o).c_str(), &store), "open");
  for (size_t page : o.pages) {
    if (kSharedBatch * page > o.file_max_bytes) continue;
    progress("file: " + human(page) + " pages read by a second process");
    Buffer src(kSharedBatch * page);
    src.randomize(11);
    const auto keys = make_keys("shared-" + std::to_string(page), kSharedBatch);
    const auto ck = c_keys(keys);
    std::vector<const void*> ptrs;
    for (size_t i = 0; i < kSharedBatch; ++i) ptrs.push_back(src.base + i * page);
    std::vector<size_t> sizes(kSharedBatch, page);
    std::vector<int> res(kSharedBatch);
    check_rc(
        kvtier_batch_set(store, ck.data(), kSharedBatch, ptrs.data(), sizes.data(), res.data()),
        "batch_set");
    const auto ekeys = make_keys("exists", kExistsKeys);
    const auto eck = c_keys(ekeys);
    std::vector<const void*> eptrs(kExistsKeys, src.base);
    std::vector<size_t> esizes(kExistsKeys, 4096);
    std::vector<int> eres(kExistsKeys);
    check_rc(
        kvtier_batch_set(store, eck.data(), kExistsKeys, eptrs.data(), esizes.data(), eres.data()),
        "batch_set");
    auto [own, own_us] = shared_reads(o, store, page);
    // The second process joins the namespace while this one holds it open.
    const std::string cmd = "\"/proc/" + std::to_string(getpid()) + "/exe\" shared-reader \"" +
                            dir + "\" " + std::to_string(page) + " " +
                            std::to_string(o.queue_depth) + " " + std::to_string(o.repeats) + " " +
                            std::to_string(o.warmup);
    FILE* child = popen(cmd.c_str(), "r");
    Figure other;
    double other_us = 0;
    if (!child || std::fscanf(child, "%lf %lf %lf %lf %lf %lf", &other.median_s, &other.min_s,
                              &other.max_s, &other.gbps, &other.cpu_per_gb, &other_us) != 6)
      die("the second process gave no figures");
    if (pclose(child) != 0) die("the second process failed");
    for (auto [who, fig, us] :
         {std::tuple{"this", own, own_us}, std::tuple{"other", other, other_us}}) {
      Row row;
      row.kind = "shared";
      row.tier = "file";
      row.shape = "unaligned";
      row.path = who;
      row.op = geteuid() == 0 ? "read cold" : "read (warm: not root)";
      row.batch = kSharedBatch;
      row.block = page;
      row.fig = fig;
      row.limit_gbps = own.gbps;  // the first process's own figure, same run
      row.limit_name = "own read";
      row.verified = "bytes";   // both processes compare every byte they read (above)
      row.speedup = us;         // µs per batch_exists of 128 keys
      row.threads = o.repeats;  // the timed runs the medians are of
      g_rows.push_back(row);
    }
  }
  kvtier_close(store);
}

}  // namespace kvtier_bench
