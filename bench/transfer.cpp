// transfer: blocks of 1K..256K through each tier, next to the machine's limit.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"

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

namespace {

bool is_remote(const std::string& tier) {
  return tier == "remote" || tier == "rdma" || tier == "remote3";
}

// Starts the remote tier's servers (three for remote3), each with room for `capacity` bytes;
// returns their addresses as remote_servers lists them.
std::string start_servers(const std::string& tier, size_t capacity,
                          std::vector<std::unique_ptr<ServerChild>>& servers) {
  std::string list;
  for (int i = 0; i < (tier == "remote3" ? 3 : 1); ++i) {
    servers.push_back(std::make_unique<ServerChild>(capacity));
    list += (list.empty() ? "" : ",") + servers.back()->address;
  }
  return list;
}

// One thread's share of a batch: its keys, the blocks it writes and those it reads into.
struct Worker {
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  std::vector<void*> src, dst;
  std::vector<size_t> sizes;
  std::vector<int> res;
};

// Sources from `base`, reads into `base + dst_offset`, n blocks per thread.
std::vector<Worker> make_workers(std::byte* base, size_t dst_offset, size_t block, size_t threads,
                                 size_t n) {
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
      w.dst.push_back(base + dst_offset + (t * n + i) * block);
    }
  }
  return ws;
}

// A batch of n blocks per thread on an open store, written and read by all threads at once.
class TransferBatch {
 public:
  TransferBatch(kvtier_store_t* store, std::byte* base, size_t dst_offset, size_t block,
                size_t threads, size_t n)
      : store_(store),
        block_(block),
        n_(n),
        ws_(make_workers(base, dst_offset, block, threads, n)),
        crew_(threads) {}
  TransferBatch(const TransferBatch&) = delete;  // the runs point into it
  TransferBatch& operator=(const TransferBatch&) = delete;
  Timed write();
  Timed read();

 private:
  template <class Fn>
  void parallel(Fn fn) {
    crew_.run([&](size_t t) { fn(ws_[t]); });
  }
  void check_all(const char* what) const;

  kvtier_store_t* store_;
  size_t block_, n_;
  std::vector<Worker> ws_;
  Crew crew_;
};

void TransferBatch::check_all(const char* what) const {
  for (auto& w : ws_)
    for (int r : w.res)
      if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
}

Timed TransferBatch::write() {
  return {[this] {  // emptied key by key: slots are overwritten, as in a full cache's steady state
            for (auto& w : ws_)
              check_rc(kvtier_batch_remove(store_, w.ck.data(), n_, w.res.data()), "remove");
          },
          [this] {
            parallel([&](Worker& w) {
              kvtier_batch_set_v1(store_, w.ck.data(), n_, w.src.data(), w.sizes.data(), n_,
                                  w.res.data());
            });
          },
          [this] { check_all("batch_set_v1"); }};
}

Timed TransferBatch::read() {
  return {[this] {
            for (auto& w : ws_)
              for (void* d : w.dst)
                stream_fill(static_cast<std::byte*>(d), std::byte{0x5A}, block_);
          },
          [this] {
            parallel([&](Worker& w) {
              kvtier_batch_get_v1(store_, w.ck.data(), n_, w.dst.data(), w.sizes.data(), n_,
                                  w.res.data());
            });
          },
          [this] {
            check_all("batch_get_v1");
            for (auto& w : ws_)
              for (size_t i = 0; i < n_; ++i)
                if (std::memcmp(w.src[i], w.dst[i], block_) != 0) die("transfer read-back differs");
          }};
}

// One block size at one thread count: the tier's write and read rows, each next to its limit.
void transfer_block(const Options& o, const std::string& tier, kvtier_store_t* store,
                    std::byte* base, size_t dst_offset, size_t block, size_t threads) {
  const size_t n = o.transfer_batch;
  const bool remote = is_remote(tier);
  progress("transfer " + tier + " block " + std::to_string(block) + " threads " +
           std::to_string(threads));
  TransferBatch batch(store, base, dst_offset, block, threads, n);
  const size_t bytes = threads * n * block;
  const Timed write = batch.write();
  const Timed read = batch.read();
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

}  // namespace

void run_transfer(const Options& o, const std::string& tier) {
  const size_t max_threads = *std::max_element(o.threads.begin(), o.threads.end());
  const size_t max_block = *std::max_element(o.blocks.begin(), o.blocks.end());
  const size_t n = o.transfer_batch;
  Buffer mem(2 * max_threads * n * max_block + 4096);
  progress("transfer " + tier + ": filling buffers");
  mem.randomize(5);
  std::byte* base = mem.base + (o.aligned ? 0 : 64);
  const size_t region = 2 * max_threads * n * max_block;  // sources, then the reads' blocks
  std::vector<std::unique_ptr<ServerChild>> servers;
  std::string cfg = tier_config(tier, max_threads * n * max_block);
  if (is_remote(tier))
    cfg += ";remote_servers=" +
           start_servers(tier, 4 * max_threads * n * max_block + (size_t{64} << 20), servers);
  kvtier_store_t* store = nullptr;
  const int rc = kvtier_open(cfg.c_str(), &store);
  if (rc == KVTIER_ERR_UNSUPPORTED) {
    g_notes.push_back("transfer " + tier + ": skipped: " + kvtier_last_error());
    return;
  }
  check_rc(rc, "open");
  check_rc(kvtier_register_buffer(store, base, region), "register_buffer");
  for (size_t block : o.blocks)
    for (size_t threads : o.threads)
      transfer_block(o, tier, store, base, region / 2, block, threads);
  kvtier_close(store);
}

}  // namespace kvtier_bench
