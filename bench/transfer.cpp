// transfer: blocks of 1K..256K through each tier, next to the machine's limit.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"

namespace kvtier_bench {

// ---- transfer -----------------------------------------------------------------------------

void push_transfer(const std::string& tier, const char* path, const char* op, size_t batch,
                   size_t block, size_t threads, const Figure& fig, double limit,
                   const std::string& limit_name, const char* verified, double memcpy) {
  Row row;
  row.kind = "transfer";
  row.tier = tier;
  row.path = path;
  row.op = op;
  row.batch = batch;
  row.block = block;
  row.threads = threads;
  row.fig = fig;
  row.limit_gbps = limit;
  row.limit_name = limit_name;
  row.limit2_gbps = memcpy;
  row.limit2_name = memcpy > 0 ? "memcpy" : "";
  row.verified = verified;
  g_rows.push_back(row);
}

void run_transfer(const Options& o, const std::string& tier) {
  const size_t max_threads = *std::max_element(o.threads.begin(), o.threads.end());
  const size_t max_block = *std::max_element(o.blocks.begin(), o.blocks.end());
  const size_t n = o.transfer_batch;
  Buffer mem(2 * max_threads * n * max_block + 4096);
  progress("transfer " + tier + ": filling buffers");
  mem.randomize(5);
  std::byte* base = mem.base + (o.aligned ? 0 : 64);
  const size_t region = 2 * max_threads * n * max_block;
  std::vector<std::unique_ptr<ServerChild>> servers;
  std::string cfg = tier_config(tier, max_threads * n * max_block);
  const bool remote = tier == "remote" || tier == "rdma" || tier == "remote3";
  if (remote) {
    std::string list;
    for (int i = 0; i < (tier == "remote3" ? 3 : 1); ++i) {
      servers.push_back(
          std::make_unique<ServerChild>(4 * max_threads * n * max_block + (size_t{64} << 20)));
      list += (list.empty() ? "" : ",") + servers.back()->address;
    }
    cfg += ";remote_servers=" + list;
  }
  kvtier_store_t* store = nullptr;
  const int rc = kvtier_open(cfg.c_str(), &store);
  if (rc == KVTIER_ERR_UNSUPPORTED) {
    g_notes.push_back("transfer " + tier + ": skipped: " + kvtier_last_error());
    return;
  }
  check_rc(rc, "open");
  check_rc(kvtier_register_buffer(store, base, region), "register_buffer");
  for (size_t block : o.blocks) {
    for (size_t threads : o.threads) {
      progress("transfer " + tier + " block " + std::to_string(block) + " threads " +
               std::to_string(threads));
      struct Worker {
        std::vector<std::string> keys;
        std::vector<const char*> ck;
        std::vector<void*> src, dst;
        std::vector<size_t> sizes;
        std::vector<int> res;
      };
      std::vector<Worker> ws(threads);
      for (size_t t = 0; t < threads; ++t) {
        Worker& w = ws[t];
        w.keys = make_keys("xfer-" + std::to_string(block) + "-" + std::to_string(t), n);
        w.ck = c_keys(w.keys);
        w.sizes.assign(n, block);
        w.res.resize(n);
        // Blocks side by side, as in an engine's pool of pages this size (and as the limit
        // copies them): blocks a large stride apart would all fall in the same cache sets.
        for (size_t i = 0; i < n; ++i) {
          w.src.push_back(base + (t * n + i) * block);
          w.dst.push_back(base + max_threads * n * max_block + (t * n + i) * block);
        }
      }
      Crew crew(threads);
      auto parallel = [&](auto fn) { crew.run([&](size_t t) { fn(ws[t]); }); };
      auto check_all = [&](const char* what) {
        for (auto& w : ws)
          for (int r : w.res)
            if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
      };
      const size_t bytes = threads * n * block;
      const Timed write{
          [&] {  // emptied key by key: slots are overwritten, as in a full cache's steady state
            for (auto& w : ws)
              check_rc(kvtier_batch_remove(store, w.ck.data(), n, w.res.data()), "remove");
          },
          [&] {
            parallel([&](Worker& w) {
              kvtier_batch_set_v1(store, w.ck.data(), n, w.src.data(), w.sizes.data(), n,
                                  w.res.data());
            });
          },
          [&] { check_all("batch_set_v1"); }};
      const Timed read{[&] {
                         for (auto& w : ws)
                           for (void* d : w.dst)
                             stream_fill(static_cast<std::byte*>(d), std::byte{0x5A}, block);
                       },
                       [&] {
                         parallel([&](Worker& w) {
                           kvtier_batch_get_v1(store, w.ck.data(), n, w.dst.data(), w.sizes.data(),
                                               n, w.res.data());
                         });
                       },
                       [&] {
                         check_all("batch_get_v1");
                         for (auto& w : ws)
                           for (size_t i = 0; i < n; ++i)
                             if (std::memcmp(w.src[i], w.dst[i], block) != 0)
                               die("transfer read-back differs");
                       }};
      // The limit: for memory, the best copy of the same blocks (from 64 KiB, a batch far larger
      // than the cache, timed in turns with the tier's runs; smaller ones after them: a batch
      // that fits in the cache would be evicted by the other's turn); for the file tier, the raw
      // io_uring loop at the same block size on the same folder (one thread: the device, not the
      // CPU, is the limit); for the remote tier, one loopback TCP stream of the same blocks.
      const bool file = tier == "file";
      Figure wr, rd;
      double lim_w = 0, lim_r = 0, plain = 0;
      std::string name_w = file ? "raw io_uring" : "", name_r = name_w;
      if (!file && !remote && block >= (size_t{64} << 10)) {
        CopyLimit copy(block, n * threads, threads);
        auto w = measure_turns(o, bytes, {write, copy.timed(false), copy.timed(true)});
        auto r = measure_turns(o, bytes, {read, copy.timed(false), copy.timed(true)});
        wr = w[0];
        rd = r[0];
        lim_w = CopyLimit::best(w[1], w[2], &name_w, &plain);
        lim_r = CopyLimit::best(r[1], r[2], &name_r, nullptr);
      } else {
        wr = measure_turns(o, bytes, {write})[0];
        rd = measure_turns(o, bytes, {read})[0];
        if (file) {
          lim_w = raw_uring_gbps(o, g_dir, block, n * threads, true);
          lim_r = raw_uring_gbps(o, g_dir, block, n * threads, false);
        } else {
          lim_w = lim_r = remote ? best_stream_gbps(o, bytes, &name_w)
                                 : memcpy_gbps(o, block, n * threads, threads, &name_w, &plain);
          name_r = name_w;
        }
      }
      push_transfer(tier, "v1", "write", n, block, threads, wr, lim_w, name_w, "codes", plain);
      push_transfer(tier, "v1", "read", n, block, threads, rd, lim_r, name_r, "bytes", plain);
    }
  }
  kvtier_close(store);
}

}  // namespace kvtier_bench
