// kvtier-bench: the main job. Opens stores through the C ABI only, as an engine would, and
// prints every figure next to the machine's limit measured in the same run.
//
//   kvtier-bench [all|compare|transfer|limits] [--tiers memory] [--repeats 5] [--json F] ...
#include <arpa/inet.h>
#include <fcntl.h>
#include <kvtier/kvtier.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#if KVTIER_BENCH_URING
#include <liburing.h>
#endif
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// ---- options ------------------------------------------------------------------------------

struct Options {
  std::string mode = "all";
  std::vector<std::string> tiers{"memory"};  // compare
  // transfer; p2p and p2p_rdma: endpoint to endpoint, no store (kvtier_peer_write_pages)
  std::vector<std::string> transfer_tiers{"memory", "file", "remote",  "remote3",
                                          "rdma",   "p2p",  "p2p_rdma"};
  // page_first_direct places each page at the same offsets as page_first (only the order inside
  // a page differs), so the default run leaves it out; --layouts takes it.
  std::vector<std::string> layouts{"mha_layer_first", "mha_page_first", "mla_layer_first",
                                   "mla_page_first"};
  std::vector<size_t> batches{10, 50, 100};
  std::vector<size_t> blocks{1 << 10,  2 << 10,  4 << 10,   8 << 10,  16 << 10,
                             32 << 10, 64 << 10, 128 << 10, 256 << 10};
  size_t transfer_batch = 1538;
  std::vector<size_t> threads{1};
  int repeats = 3;
  int warmup = 1;
  bool aligned = false;
  std::string json;
  std::string plot;
  // file tier table
  std::vector<size_t> pages{64 << 10, 256 << 10, 1 << 20, 8 << 20};
  std::vector<size_t> file_batches{1, 16, 64};
  size_t file_max_bytes = size_t{256} << 20;  // per batch; bigger batches are skipped
  unsigned queue_depth = 32;
  std::string dir;  // where the file tier and fio work; default a fresh folder in /var/tmp
};

const char* kUsage =
    R"(kvtier-bench: old versus zero-copy interface, tier transfer tables, machine limits.

usage: kvtier-bench [all|compare|transfer|file|limits] [options]
  all        (default) limits, compare, transfer and file
  compare    engine-shaped host pools: old path (gather + batch_set, batch_get + scatter)
             against batch_set_v1/batch_get_v1 (fragments and token slots)
  transfer   blocks of 1K..256K, batch of 1538 blocks, 1 and N threads, GB/s per tier
  file       the file tier: v1 write (until durable), cold read (page cache dropped) and
             warm read, aligned and unaligned pools, next to fio and a raw io_uring loop;
             and a second process reading the first one's pages and batch_exists of 128 keys
  limits     memcpy bandwidth of the same sizes (the memory tier's limit)

options:
  --tiers LIST        tiers for compare and transfer, each on its own (default: compare on
                      memory, transfer on memory, file, remote, remote3, rdma, p2p and
                      p2p_rdma; the bench starts kvtier-servers on loopback: "remote" is the
                      remote tier over TCP, "remote3" the same over three servers (with it,
                      the placement table: keys moved by a join and a leave), "rdma" over
                      RDMA, skipped with a note on hosts without a device; "p2p" is endpoint
                      to endpoint with no store, over TCP, and "p2p_rdma" over RDMA)
  --layouts LIST      mha_layer_first,mha_page_first,mha_page_first_direct,
                      mla_layer_first,mla_page_first (default: all but page_first_direct,
                      which places pages at the same offsets as page_first)
  --batches LIST      keys per batch for compare (default 10,50,100; add 512 for the
                      full table, about 4 GB of pool per MHA batch)
  --blocks LIST       block sizes for transfer (default 1K,2K,...,256K)
  --transfer-batch N  blocks per batch for transfer (default 1538)
  --threads LIST      thread counts for transfer (default 1; e.g. 1,2)
  --repeats N         timed runs per figure; the median is reported (default 3)
  --warmup N          untimed runs first (default 1)
  --pages LIST        page sizes for the file table (default 64K,256K,1M,8M)
  --file-batches LIST keys per batch for the file table (default 1,16,64)
  --file-max-bytes N  skip file-table batches larger than this (default 256M)
  --queue-depth N     KVTIER_FILE_QUEUE_DEPTH, also fio's and the raw loop's (default 32)
  --dir DIR           folder for the file tier and fio (default: a new one in /var/tmp)
  --aligned           put the host pool on a 4 KiB boundary (default: 64 bytes past one,
                      as engines' pinned pools often are)
  --json FILE         also write every figure as JSON ('-' for stdout)
  --plot FILE.png     draw GB/s against block size (needs python3-matplotlib)
  --quick             small sizes, for a smoke run
)";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

size_t parse_size(const std::string& s) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  std::string unit(end);
  if (unit == "K" || unit == "k" || unit == "KiB")
    v <<= 10;
  else if (unit == "M" || unit == "MiB")
    v <<= 20;
  else if (unit == "G" || unit == "GiB")
    v <<= 30;
  else if (!unit.empty())
    throw std::runtime_error("bad size: " + s);
  if (v == 0) throw std::runtime_error("bad size: " + s);
  return v;
}

std::vector<size_t> sizes(const std::string& s) {
  std::vector<size_t> out;
  for (const auto& item : split(s)) out.push_back(parse_size(item));
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "all" || a == "compare" || a == "transfer" || a == "limits" || a == "file") {
      o.mode = a;
    } else if (a == "--tiers") {
      o.tiers = o.transfer_tiers = split(next());
    } else if (a == "--layouts") {
      o.layouts = split(next());
    } else if (a == "--batches") {
      o.batches = sizes(next());
    } else if (a == "--blocks") {
      o.blocks = sizes(next());
    } else if (a == "--transfer-batch") {
      o.transfer_batch = parse_size(next());
    } else if (a == "--threads") {
      o.threads = sizes(next());
    } else if (a == "--repeats") {
      o.repeats = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--warmup") {
      o.warmup = std::max(0, std::atoi(next().c_str()));
    } else if (a == "--pages") {
      o.pages = sizes(next());
    } else if (a == "--file-batches") {
      o.file_batches = sizes(next());
    } else if (a == "--file-max-bytes") {
      o.file_max_bytes = parse_size(next());
    } else if (a == "--queue-depth") {
      o.queue_depth = static_cast<unsigned>(parse_size(next()));
    } else if (a == "--dir") {
      o.dir = next();
    } else if (a == "--aligned") {
      o.aligned = true;
    } else if (a == "--json") {
      o.json = next();
    } else if (a == "--plot") {
      o.plot = next();
    } else if (a == "--quick") {
      o.batches = {4, 16};
      o.blocks = {4 << 10, 64 << 10};
      o.transfer_batch = 64;
      o.repeats = 2;
      o.pages = {256 << 10};
      o.file_batches = {1, 16};
    } else {
      throw std::runtime_error("unknown argument '" + a + "' (see --help)");
    }
  }
  return o;
}

// ---- measurement --------------------------------------------------------------------------

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

struct Figure {
  double median_s = 0, min_s = 0, max_s = 0;
  double gbps = 0;        // bytes / median time
  double cpu_per_gb = 0;  // process CPU seconds per GB moved (median run)
};

// Runs prep (untimed), body (timed), check (untimed) warmup + repeats times.
Figure measure(const Options& o, size_t bytes, const std::function<void()>& prep,
               const std::function<void()>& body, const std::function<void()>& check) {
  std::vector<std::pair<double, double>> runs;  // (seconds, cpu seconds)
  for (int r = 0; r < o.warmup + o.repeats; ++r) {
    prep();
    double c0 = cpu_seconds(), t0 = now();
    body();
    double t1 = now(), c1 = cpu_seconds();
    check();
    if (r >= o.warmup) runs.push_back({t1 - t0, c1 - c0});
  }
  std::sort(runs.begin(), runs.end());
  Figure f;
  f.median_s = runs[runs.size() / 2].first;
  f.min_s = runs.front().first;
  f.max_s = runs.back().first;
  f.gbps = bytes / f.median_s / 1e9;
  f.cpu_per_gb = runs[runs.size() / 2].second / (bytes / 1e9);
  return f;
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "kvtier-bench: %s (%s)\n", what.c_str(), kvtier_last_error());
  std::exit(1);
}

void check_rc(int rc, const char* what) {
  if (rc != KVTIER_OK) die(std::string(what) + " failed: " + kvtier_error_name(rc));
}

bool tty() {
  return isatty(STDERR_FILENO);
}

void progress(const std::string& line) {
  if (tty()) std::fprintf(stderr, "\r\033[K%s", line.c_str());
}

// Memory that is mapped once, filled with random bytes (which touches every page) and reused.
struct Buffer {
  std::byte* base = nullptr;
  size_t len = 0;
  explicit Buffer(size_t n) : len(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap of " + std::to_string(n) + " bytes failed");
    base = static_cast<std::byte*>(p);
  }
  ~Buffer() { munmap(base, len); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void randomize(uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    auto* w = reinterpret_cast<uint64_t*>(base);
    for (size_t i = 0; i < len / 8; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      w[i] = x;
    }
  }
};

std::vector<std::string> make_keys(const std::string& prefix, size_t n) {
  std::vector<std::string> k;
  char buf[32];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof buf, "%016zx", i * 2654435761u);
    k.push_back(prefix + "-" + buf);
  }
  return k;
}

std::vector<const char*> c_keys(const std::vector<std::string>& keys) {
  std::vector<const char*> out;
  for (const auto& k : keys) out.push_back(k.c_str());
  return out;
}

std::string g_dir;                 // the folder the file tier and fio work in
std::vector<std::string> g_notes;  // printed under the tables: what was skipped and why

std::string tier_config(const std::string& tier, size_t bytes_needed) {
  // Room for everything a figure writes, so nothing is evicted while it is timed.
  size_t cap = std::max<size_t>(bytes_needed * 2, size_t{256} << 20);
  // "remote" and "rdma" are the remote tier with its two data planes; "remote3" is TCP over
  // three servers.
  const std::string chain = tier == "remote" || tier == "remote3" ? "remote;remote_transport=tcp"
                            : tier == "rdma" ? "remote;remote_transport=rdma;log_level=off"
                                             : tier;
  return "tiers=" + chain + ";memory_capacity=" + std::to_string(cap) +
         ";file_capacity=" + std::to_string(cap) + ";file_dir=" + g_dir + "/" + tier;
}

// ---- results ------------------------------------------------------------------------------

struct Row {
  std::string kind;  // limit | compare | transfer
  std::string tier, shape, path, op;
  size_t batch = 0, block = 0, threads = 1;
  Figure fig;
  double limit_gbps = 0;
  std::string limit_name;
  double limit_cpu_per_gb = 0;  // file: fio's own CPU seconds per GB
  double limit2_gbps = 0;  // file: the raw io_uring loop beside fio; memory: same-block memcpy
  std::string limit2_name;
  double speedup = 0;  // compare: new / old for the same op
  // What the row's timed runs were checked for: "bytes" (every byte read back was compared
  // with what was written), "codes" (every key's result code; a write's bytes are compared by
  // the read row that follows it), "" (a limit).
  std::string verified;
};

std::vector<Row> g_rows;

std::string human(size_t bytes);
std::string fixed2(double v);

// ---- limits -------------------------------------------------------------------------------

// memcpy of `count` blocks of `block` bytes, spread over `threads` threads.
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

// The best single-pass copy of `count` blocks of `block` bytes over `threads` threads: the
// better of memcpy and the streaming copy (which one is named by *how).
// *plain, when given, gets memcpy's own figure.
double memcpy_gbps(const Options& o, size_t block, size_t count, size_t threads,
                   std::string* how = nullptr, double* plain = nullptr) {
  Buffer src(block * count), dst(block * count);
  src.randomize(1);
  dst.randomize(2);
  const size_t per = count / threads;
  double best = 0;
  for (bool stream : {false, true}) {
    auto body = [&] {
      std::vector<std::thread> ts;
      for (size_t t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
          for (size_t i = t * per; i < (t + 1) * per; ++i)
            (stream ? stream_copy : [](std::byte* d, const std::byte* s, size_t n) {
              std::memcpy(d, s, n);
            })(dst.base + i * block, src.base + i * block, block);
        });
      for (auto& th : ts) th.join();
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

// ---- compare ------------------------------------------------------------------------------

struct Shape {
  std::string name;
  kvtier_pool_layout_t layout{};
  size_t page_bytes = 0;
  size_t pool_bytes = 0;
};

Shape make_shape(const std::string& name, size_t pages) {
  Shape s;
  s.name = name;
  kvtier_pool_layout_t& l = s.layout;
  l.struct_size = sizeof l;
  const bool mla = name.rfind("mla_", 0) == 0;
  const std::string order = name.substr(4);
  l.pool_kind = mla ? KVTIER_POOL_MLA : KVTIER_POOL_MHA;
  if (order == "layer_first")
    l.layout = KVTIER_LAYOUT_LAYER_FIRST;
  else if (order == "page_first")
    l.layout = KVTIER_LAYOUT_PAGE_FIRST;
  else if (order == "page_first_direct")
    l.layout = KVTIER_LAYOUT_PAGE_FIRST_DIRECT;
  else
    die("unknown layout " + name);
  l.page_size = 64;
  l.dtype_size = 2;  // bf16
  if (mla) {         // DeepSeek-V3-like: 61 layers, kv_lora_rank 512 + rope 64
    l.layer_num = 61;
    l.kv_cache_dim = 576;
  } else {  // Llama-3-8B-like: 28 layers, 8 KV heads, head_dim 128
    l.layer_num = 28;
    l.head_num = 8;
    l.head_dim = 128;
  }
  l.pool_tokens = pages * l.page_size;
  const size_t token = mla ? size_t{l.kv_cache_dim} * 2 : size_t{l.head_num} * l.head_dim * 2;
  s.page_bytes = (mla ? 1 : 2) * size_t{l.layer_num} * l.page_size * token;
  s.pool_bytes = s.page_bytes / l.page_size * l.pool_tokens;
  return s;
}

std::vector<int64_t> page_slots(size_t first_page, size_t pages, size_t page_size) {
  std::vector<int64_t> slots;
  for (size_t p = first_page; p < first_page + pages; ++p)
    for (size_t t = 0; t < page_size; ++t) slots.push_back(static_cast<int64_t>(p * page_size + t));
  return slots;
}

void run_compare(const Options& o, const std::string& tier, const std::string& shape_name) {
  const size_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  Shape sh = make_shape(shape_name, 2 * max_batch);  // pages [0, B) are sources, [B, 2B) targets
  Buffer pool_mem(sh.pool_bytes + 8192);
  std::byte* base = pool_mem.base + (o.aligned ? 0 : 64);
  sh.layout.base = base;
  Buffer staging(max_batch * sh.page_bytes);  // the old path's flat pages
  progress("compare " + tier + " " + shape_name + ": filling a " +
           std::to_string(sh.pool_bytes >> 20) + " MiB pool with random bytes");
  pool_mem.randomize(3);
  staging.randomize(4);

  kvtier_store_t* store = nullptr;
  check_rc(kvtier_open(tier_config(tier, max_batch * sh.page_bytes).c_str(), &store), "open");
  check_rc(kvtier_register_buffer(store, base, sh.pool_bytes), "register_buffer");
  check_rc(kvtier_register_layout(store, &sh.layout), "register_layout");
  size_t per_page = 0;
  check_rc(kvtier_page_fragments(store, &per_page), "page_fragments");

  for (size_t batch : o.batches) {
    const auto keys = make_keys(shape_name, batch);
    const auto ck = c_keys(keys);
    const auto src_slots = page_slots(0, batch, sh.layout.page_size);
    const auto dst_slots = page_slots(max_batch, batch, sh.layout.page_size);
    std::vector<void*> src_ptrs(batch * per_page), dst_ptrs(batch * per_page);
    std::vector<size_t> src_sizes(batch * per_page), dst_sizes(batch * per_page);
    check_rc(kvtier_get_page_buffer_meta(store, src_slots.data(), src_slots.size(), src_ptrs.data(),
                                         src_sizes.data(), src_ptrs.size()),
             "get_page_buffer_meta");
    check_rc(kvtier_get_page_buffer_meta(store, dst_slots.data(), dst_slots.size(), dst_ptrs.data(),
                                         dst_sizes.data(), dst_ptrs.size()),
             "get_page_buffer_meta");
    std::vector<void*> flat(batch);
    std::vector<size_t> flat_sizes(batch, sh.page_bytes);
    for (size_t i = 0; i < batch; ++i) flat[i] = staging.base + i * sh.page_bytes;
    std::vector<int> res(batch);
    std::vector<int64_t> gres(batch);
    const size_t bytes = batch * sh.page_bytes;
    auto all_ok = [&](const char* what) {
      for (int r : res)
        if (r != KVTIER_OK) die(std::string(what) + ": a key failed with " + kvtier_error_name(r));
    };

    // Engine-side helpers of the old path: its per-page copies into and out of staging.
    auto gather = [&] {
      for (size_t i = 0; i < batch; ++i) {
        std::byte* dst = static_cast<std::byte*>(flat[i]);
        for (size_t f = 0; f < per_page; ++f) {
          std::memcpy(dst, src_ptrs[i * per_page + f], src_sizes[i * per_page + f]);
          dst += src_sizes[i * per_page + f];
        }
      }
    };
    auto scatter = [&] {
      for (size_t i = 0; i < batch; ++i) {
        const std::byte* src = static_cast<std::byte*>(flat[i]);
        for (size_t f = 0; f < per_page; ++f) {
          std::memcpy(dst_ptrs[i * per_page + f], src, dst_sizes[i * per_page + f]);
          src += dst_sizes[i * per_page + f];
        }
      }
    };
    auto clear = [&] { check_rc(kvtier_clear(store), "clear"); };
    // Target pages get a fresh pattern before each read so a read that does nothing fails.
    auto scribble = [&] {
      for (size_t i = 0; i < dst_ptrs.size(); ++i) std::memset(dst_ptrs[i], 0xA5, dst_sizes[i]);
    };
    auto verify = [&] {
      for (size_t i = 0; i < src_ptrs.size(); ++i)
        if (std::memcmp(src_ptrs[i], dst_ptrs[i], src_sizes[i]) != 0)
          die("read-back differs from what was written (" + shape_name + ", batch " +
              std::to_string(batch) + ")");
    };
    auto populate = [&] {
      clear();
      check_rc(kvtier_batch_set_v1_slots(store, ck.data(), batch, src_slots.data(),
                                         src_slots.size(), res.data()),
               "batch_set_v1_slots");
      all_ok("populate");
    };

    struct Path {
      const char* name;
      std::function<void()> write, read;
    };
    std::vector<Path> paths = {
        {"old (gather+batch_set)",
         [&] {
           gather();
           check_rc(kvtier_batch_set(store, ck.data(), batch,
                                     const_cast<const void* const*>(flat.data()), flat_sizes.data(),
                                     res.data()),
                    "batch_set");
           all_ok("batch_set");
         },
         [&] {
           check_rc(kvtier_batch_get(store, ck.data(), batch, flat.data(), flat_sizes.data(),
                                     gres.data()),
                    "batch_get");
           for (int64_t r : gres)
             if (r != static_cast<int64_t>(sh.page_bytes)) die("batch_get: a key missed");
           scatter();
         }},
        {"v1 fragments",
         [&] {
           check_rc(kvtier_get_page_buffer_meta(store, src_slots.data(), src_slots.size(),
                                                src_ptrs.data(), src_sizes.data(), src_ptrs.size()),
                    "meta");
           check_rc(kvtier_batch_set_v1(store, ck.data(), batch, src_ptrs.data(), src_sizes.data(),
                                        src_ptrs.size(), res.data()),
                    "batch_set_v1");
           all_ok("batch_set_v1");
         },
         [&] {
           check_rc(kvtier_get_page_buffer_meta(store, dst_slots.data(), dst_slots.size(),
                                                dst_ptrs.data(), dst_sizes.data(), dst_ptrs.size()),
                    "meta");
           check_rc(kvtier_batch_get_v1(store, ck.data(), batch, dst_ptrs.data(), dst_sizes.data(),
                                        dst_ptrs.size(), res.data()),
                    "batch_get_v1");
           all_ok("batch_get_v1");
         }},
        {"v1 token slots",
         [&] {
           check_rc(kvtier_batch_set_v1_slots(store, ck.data(), batch, src_slots.data(),
                                              src_slots.size(), res.data()),
                    "batch_set_v1_slots");
           all_ok("batch_set_v1_slots");
         },
         [&] {
           check_rc(kvtier_batch_get_v1_slots(store, ck.data(), batch, dst_slots.data(),
                                              dst_slots.size(), res.data()),
                    "batch_get_v1_slots");
           all_ok("batch_get_v1_slots");
         }},
    };
    const double limit = memcpy_gbps(o, sh.page_bytes, std::min<size_t>(batch, 64), 1);
    double old_w = 0, old_r = 0;
    for (const Path& p : paths) {
      progress("compare " + tier + " " + shape_name + " batch " + std::to_string(batch) + ": " +
               p.name);
      // Writes: the store is emptied first, so nothing is skipped as already present.
      Figure w = measure(o, bytes, clear, p.write, [&] {
        size_t hits = 0;
        check_rc(kvtier_batch_exists(store, ck.data(), batch, &hits), "exists");
        if (hits != batch) die("write did not store every key");
      });
      populate();
      Figure r = measure(o, bytes, scribble, p.read, verify);
      if (old_w == 0) {
        old_w = w.gbps;
        old_r = r.gbps;
      }
      for (auto [op, fig, base_gbps] :
           {std::tuple{"write", w, old_w}, std::tuple{"read", r, old_r}}) {
        Row row;
        row.kind = "compare";
        row.tier = tier;
        row.shape = shape_name;
        row.path = p.name;
        row.op = op;
        row.batch = batch;
        row.block = sh.page_bytes;
        row.fig = fig;
        row.limit_gbps = limit;
        row.limit_name = "memcpy";
        row.speedup = fig.gbps / base_gbps;
        row.verified = std::string(op) == "read" ? "bytes" : "codes";
        g_rows.push_back(row);
      }
    }
  }
  kvtier_close(store);
}

double raw_uring_gbps(const Options& o, const std::string& dir, size_t block, size_t count,
                      bool write);

// ---- remote tier: a kvtier-server child and the loopback TCP limit ------------------------

struct ServerChild {
  pid_t pid = -1;
  std::string address;
  explicit ServerChild(size_t capacity) {
    int fds[2];
    if (pipe(fds) != 0) die("pipe");
    pid = fork();
    if (pid == 0) {
      dup2(fds[1], 1);
      ::close(fds[0]);
      std::string cap = std::to_string(capacity);
      // RDMA cannot be served on loopback: KVTIER_TEST_RDMA_ADDR names this host's NIC.
      const char* host = std::getenv("KVTIER_TEST_RDMA_ADDR");
      const std::string listen = std::string(host && *host ? host : "127.0.0.1") + ":0";
      const char* built = KVTIER_SERVER_PATH;
      execl(built, built, "--listen", listen.c_str(), "--capacity", cap.c_str(), "--log-level",
            "warn", (char*)nullptr);
      execlp("kvtier-server", "kvtier-server", "--listen", listen.c_str(), "--capacity",
             cap.c_str(), "--log-level", "warn", (char*)nullptr);
      _exit(127);
    }
    ::close(fds[1]);
    char line[256] = {};
    size_t got = 0;
    while (got < sizeof line - 1 && ::read(fds[0], line + got, 1) == 1 && line[got] != '\n') ++got;
    ::close(fds[0]);
    const char* at = std::strstr(line, "listening on ");
    if (!at) die("could not start kvtier-server");
    address = std::string(at + 13, std::strcspn(at + 13, " \n"));
  }
  ~ServerChild() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  }
};

// iperf3's single stream over loopback carrying `total` bytes in 128 KiB writes (median of the
// runs); 0 when iperf3 is not installed.
double iperf3_gbps(const Options& o, size_t total, size_t write_size) {
  if (std::system("command -v iperf3 >/dev/null 2>&1") != 0) return 0;
  int probe = ::socket(AF_INET, SOCK_STREAM, 0);  // a free port for the iperf3 server
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(probe, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return 0;
  const std::string port = std::to_string(ntohs(a.sin_port));
  ::close(probe);
  pid_t server = fork();
  if (server == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execlp("iperf3", "iperf3", "-s", "-B", "127.0.0.1", "-p", port.c_str(), (char*)nullptr);
    _exit(127);
  }
  std::vector<double> runs;
  const std::string cmd =
      "iperf3 -c 127.0.0.1 -p " + port +  " -n " + std::to_string(total) +
                          " -l " + std::to_string(write_size) + " -J 2>/dev/null";
  for (int i = 0; i < o.warmup + o.repeats; ++i) {
    std::string out;
    for (int attempt = 0; attempt < 20 && out.find("sum_received") == std::string::npos;
         ++attempt) {  // the server may still be starting
      if (attempt) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      out.clear();
      if (FILE* f = popen(cmd.c_str(), "r")) {
        char buf[4096];
        for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
        pclose(f);
      }
    }
    const size_t at = out.find("\"bits_per_second\":", out.find("\"sum_received\""));
    if (at == std::string::npos) break;
    if (i >= o.warmup) runs.push_back(std::strtod(out.c_str() + at + 18, nullptr) / 8e9);
  }
  kill(server, SIGTERM);
  waitpid(server, nullptr, 0);
  if (runs.empty()) return 0;
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

// One TCP stream over loopback carrying `total` bytes in writes of `block` bytes.
double loopback_tcp_gbps(const Options& o, size_t total, size_t block) {
  block = std::min(total, block);
  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(ls, 1) != 0 ||
      getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return 0;
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;  // as the remote tier's sockets: no Nagle stalls on small blocks
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 0;
  int srv = ::accept(ls, nullptr, nullptr);
  Buffer out(block), in(std::max<size_t>(block, 1 << 20));
  out.randomize(3);
  in.randomize(4);
  Figure f = measure(
      o, total, [] {},
      [&] {
        std::thread rx([&] {
          size_t got = 0;
          while (got < total) {
            ssize_t r = ::recv(srv, in.base, std::min(in.len, total - got), 0);
            if (r <= 0) break;
            got += static_cast<size_t>(r);
          }
        });
        for (size_t left = total; left > 0;) {
          ssize_t w = ::send(c, out.base, std::min(block, left), MSG_NOSIGNAL);
          if (w <= 0) break;
          left -= static_cast<size_t>(w);
        }
        rx.join();
      },
      [] {});
  ::close(c);
  ::close(srv);
  ::close(ls);
  return f.gbps;
}

// The best one loopback TCP stream does with `total` bytes: iperf3 with 128 KiB and 1 MiB
// writes, and the bench's own send/recv loop with 1 MiB writes (which can beat iperf3 here);
// *how names the winner.
double best_stream_gbps(const Options& o, size_t total, std::string* how) {
  double best = 0;
  for (size_t w : {size_t{128} << 10, size_t{1} << 20}) {
    const double g = iperf3_gbps(o, total, w);
    if (g > best) best = g, *how = "iperf3 -l " + human(w);
  }
  const double own = loopback_tcp_gbps(o, total, size_t{1} << 20);
  if (own > best) best = own, *how = "tcp loop 1M";
  return best;
}

// ---- transfer -----------------------------------------------------------------------------

void push_transfer(const std::string& tier, const char* path, const char* op, size_t batch,
                   size_t block, size_t threads, const Figure& fig, double limit,
                   const std::string& limit_name, const char* verified, double memcpy = 0) {
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
        for (size_t i = 0; i < n; ++i) {
          w.src.push_back(base + (t * n + i) * max_block);
          w.dst.push_back(base + ((max_threads + t) * n + i) * max_block);
        }
      }
      auto parallel = [&](auto fn) {
        std::vector<std::thread> ts;
        for (size_t t = 0; t < threads; ++t) ts.emplace_back([&, t] { fn(ws[t]); });
        for (auto& th : ts) th.join();
      };
      auto check_all = [&](const char* what) {
        for (auto& w : ws)
          for (int r : w.res)
            if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
      };
      const size_t bytes = threads * n * block;
      Figure wr = measure(
          o, bytes,
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
          [&] { check_all("batch_set_v1"); });
      Figure rd = measure(
          o, bytes,
          [&] {
            for (auto& w : ws)
              for (void* d : w.dst) std::memset(d, 0x5A, block);
          },
          [&] {
            parallel([&](Worker& w) {
              kvtier_batch_get_v1(store, w.ck.data(), n, w.dst.data(), w.sizes.data(), n,
                                  w.res.data());
            });
          },
          [&] {
            check_all("batch_get_v1");
            for (auto& w : ws)
              for (size_t i = 0; i < n; ++i)
                if (std::memcmp(w.src[i], w.dst[i], block) != 0) die("transfer read-back differs");
          });
      // The limit: memcpy for memory; for the file tier, the raw io_uring loop at the same
      // block size on the same folder (one thread: the device, not the CPU, is the limit).
      // For the remote tier, one loopback TCP stream of the same blocks.
      const bool file = tier == "file";
      std::string limit_name;
      double lim_w = 0, lim_r = 0, plain = 0;
      if (file) {
        lim_w = raw_uring_gbps(o, g_dir, block, n * threads, true);
        lim_r = raw_uring_gbps(o, g_dir, block, n * threads, false);
      } else if (remote) {
        lim_w = lim_r = best_stream_gbps(o, block * n * threads, &limit_name);
      } else {
        lim_w = lim_r = memcpy_gbps(o, block, n * threads, threads, &limit_name, &plain);
      }
      for (auto [op, fig, lim, checked] : {std::tuple{"write", wr, lim_w, "codes"},
                                           std::tuple{"read", rd, lim_r, "bytes"}})
        push_transfer(tier, "v1", op, n, block, threads, fig, lim,
                      file ? "raw io_uring" : limit_name, checked, plain);
    }
  }
  kvtier_close(store);
}

// ---- placement: the keys a join or a leave moves --------------------------------------------

// Which of `servers` holds each key, asked of each server alone; -1 for none.
std::vector<int> owners(const std::vector<std::string>& servers,
                        const std::vector<const char*>& ck) {
  std::vector<int> owner(ck.size(), -1);
  for (size_t s = 0; s < servers.size(); ++s) {
    kvtier_store_t* one = nullptr;
    check_rc(kvtier_open(("tiers=remote;remote_transport=tcp;remote_servers=" + servers[s]).c_str(),
                         &one),
             "open");
    std::vector<int> present(ck.size());
    check_rc(kvtier_batch_exists_each(one, ck.data(), ck.size(), present.data()), "exists");
    for (size_t i = 0; i < ck.size(); ++i)
      if (present[i] == KVTIER_OK) owner[i] = static_cast<int>(s);
    kvtier_close(one);
  }
  return owner;
}

// Keys written over three servers, then over four (a join) and over two (a leave), each time
// on real servers, and where each key landed: the fraction that moved, against rendezvous
// hashing's 1/N (the keys the joining server takes, or the leaving one held).
void run_placement() {
  constexpr size_t kKeys = 20000, kValue = 256;
  progress("placement: 20000 keys over 2, 3 and 4 servers");
  std::vector<std::unique_ptr<ServerChild>> children;
  std::vector<std::string> all;
  for (int i = 0; i < 4; ++i) {
    children.push_back(std::make_unique<ServerChild>(size_t{64} << 20));
    all.push_back(children.back()->address);
  }
  const auto keys = make_keys("placement", kKeys);
  const auto ck = c_keys(keys);
  std::vector<unsigned char> value(kValue, 0x5A);
  std::vector<const void*> ptrs(kKeys, value.data());
  std::vector<size_t> sizes(kKeys, kValue);
  std::vector<int> res(kKeys);
  auto place = [&](size_t n) {  // written over the first n servers; where each key is
    const std::vector<std::string> set(all.begin(), all.begin() + static_cast<ptrdiff_t>(n));
    std::string list;
    for (const auto& a : set) list += (list.empty() ? "" : ",") + a;
    kvtier_store_t* s = nullptr;
    check_rc(kvtier_open(("tiers=remote;remote_transport=tcp;remote_servers=" + list).c_str(), &s),
             "open");
    check_rc(kvtier_batch_set(s, ck.data(), kKeys, ptrs.data(), sizes.data(), res.data()), "set");
    for (int r : res)
      if (r != KVTIER_OK) die(std::string("placement set: ") + kvtier_error_name(r));
    auto owner = owners(all, ck);
    check_rc(kvtier_clear(s), "clear");
    kvtier_close(s);
    return owner;
  };
  const auto two = place(2), three = place(3), four = place(4);
  auto push = [&](const char* op, const std::vector<int>& before, const std::vector<int>& after,
                  int changed, double target) {
    size_t moved = 0, needless = 0;  // needless: moved between two servers that both stayed
    for (size_t i = 0; i < kKeys; ++i) {
      if (before[i] < 0 || after[i] < 0) die("placement: a key on no server");
      if (before[i] == after[i]) continue;
      ++moved;
      needless += before[i] != changed && after[i] != changed;
    }
    Row row;
    row.kind = "placement";
    row.op = op;
    row.batch = kKeys;
    row.fig.gbps = static_cast<double>(moved) / kKeys;
    row.speedup = static_cast<double>(needless) / kKeys;
    row.limit_gbps = target;
    row.limit_name = "1/N";
    g_rows.push_back(row);
  };
  push("join 3->4", three, four, 3, 1.0 / 4);
  push("leave 3->2", three, two, 2, 1.0 / 3);
}

// ---- prefill -> decode, endpoint to endpoint -----------------------------------------------

// Two endpoints in this process, each with a pool of n pages of `block` bytes (MLA page_first,
// one layer, one token per page), one peer connection between them over loopback: write_pages
// moves the prefill pool's pages into the decode pool, read_pages pulls them back. The limit is
// one loopback TCP stream carrying the same bytes, as for the remote tier.
void run_p2p(const Options& o, const std::string& tier) {
  const size_t max_block = *std::max_element(o.blocks.begin(), o.blocks.end());
  const size_t n = o.transfer_batch;
  Buffer prefill(n * max_block + 4096), decode(n * max_block + 4096);
  progress("transfer " + tier + ": filling buffers");
  prefill.randomize(7);
  decode.randomize(8);
  std::string cfg =
      std::string("p2p_token=bench;p2p_transport=") + (tier == "p2p_rdma" ? "rdma" : "tcp");
  // RDMA cannot be served on loopback: KVTIER_TEST_RDMA_ADDR names this host's NIC.
  if (const char* host = std::getenv("KVTIER_TEST_RDMA_ADDR"); host && *host)
    cfg += std::string(";p2p_listen=") + host + ":0";
  std::vector<int64_t> pages(n);
  for (size_t i = 0; i < n; ++i) pages[i] = static_cast<int64_t>(i);
  std::vector<int> res(n);
  for (size_t block : o.blocks) {
    progress("transfer " + tier + " block " + std::to_string(block));
    std::byte* bases[2] = {prefill.base + (o.aligned ? 0 : 64), decode.base + (o.aligned ? 0 : 64)};
    kvtier_endpoint_t* ep[2] = {nullptr, nullptr};
    for (int side = 0; side < 2; ++side) {
      kvtier_pool_layout_t l = {};
      l.struct_size = sizeof l;
      l.base = bases[side];
      l.pool_kind = KVTIER_POOL_MLA;
      l.layout = KVTIER_LAYOUT_PAGE_FIRST;
      l.page_size = 1;
      l.layer_num = 1;
      l.kv_cache_dim = static_cast<uint32_t>(block / 2);
      l.dtype_size = 2;
      l.pool_tokens = n;
      l.dtype_name = "bfloat16";
      const int rc = kvtier_endpoint_open(cfg.c_str(), &l, &ep[side]);
      if (rc == KVTIER_ERR_UNSUPPORTED) {
        g_notes.push_back("transfer " + tier + ": skipped: " + kvtier_last_error());
        kvtier_endpoint_close(ep[0]);
        return;
      }
      check_rc(rc, "endpoint_open");
    }
    char addr[128];
    check_rc(kvtier_endpoint_address(ep[1], addr, sizeof addr), "endpoint_address");
    kvtier_peer_t* peer = nullptr;
    check_rc(kvtier_endpoint_connect(ep[0], addr, &peer), "endpoint_connect");
    auto all_ok = [&](const char* what) {
      for (int r : res)
        if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
    };
    const size_t bytes = n * block;
    Figure wr = measure(
        o, bytes, [&] { std::memset(bases[1], 0x5A, bytes); },
        [&] { kvtier_peer_write_pages(peer, pages.data(), pages.data(), n, -1, res.data()); },
        [&] {
          all_ok("write_pages");
          if (std::memcmp(bases[0], bases[1], bytes) != 0) die("p2p write: bytes differ");
        });
    Figure rd = measure(
        o, bytes, [&] { std::memset(bases[0], 0xA5, bytes); },
        [&] { kvtier_peer_read_pages(peer, pages.data(), pages.data(), n, -1, res.data()); },
        [&] {
          all_ok("read_pages");
          if (std::memcmp(bases[0], bases[1], bytes) != 0) die("p2p read: bytes differ");
        });
    kvtier_peer_close(peer);
    kvtier_endpoint_close(ep[0]);
    kvtier_endpoint_close(ep[1]);
    std::string limit_name;
    const double lim = best_stream_gbps(o, bytes, &limit_name);
    for (auto [op, fig] : {std::pair{"write", wr}, std::pair{"read", rd}})
      push_transfer(tier, "p2p", op, n, block, 1, fig, lim, limit_name, "bytes");
  }
}

// ---- file tier ----------------------------------------------------------------------------

bool drop_page_cache() {
  sync();
  FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w");
  if (!f) return false;
  bool ok = std::fputs("3\n", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// The device's limit without kvtier: O_DIRECT blocks through io_uring at a fixed queue depth,
// sequential offsets, one file; writes end with fdatasync (durable, as the tier's are).
double raw_uring_gbps(const Options& o, const std::string& dir, size_t block, size_t count,
                      bool write) {
#if !KVTIER_BENCH_URING
  (void)o, (void)dir, (void)block, (void)count, (void)write;
  return 0;  // built without liburing
#else
  const std::string path = dir + "/raw-uring.dat";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
  if (fd < 0) return 0;
  const unsigned depth = static_cast<unsigned>(std::min<size_t>(o.queue_depth, count));
  if (fallocate(fd, 0, 0, static_cast<off_t>(block * count)) != 0) {
    ::close(fd);
    return 0;
  }
  Buffer buf(block * depth);
  buf.randomize(9);
  io_uring ring;
  if (io_uring_queue_init(depth, &ring, 0) != 0) {
    ::close(fd);
    return 0;
  }
  auto pass = [&](bool w) {
    size_t next = 0, done = 0, inflight = 0;
    while (done < count) {
      while (inflight < depth && next < count) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        std::byte* b = buf.base + (next % depth) * block;
        if (w)
          io_uring_prep_write(sqe, fd, b, block, next * block);
        else
          io_uring_prep_read(sqe, fd, b, block, next * block);
        ++next;
        ++inflight;
      }
      io_uring_submit_and_wait(&ring, 1);
      io_uring_cqe* cqe;
      unsigned head, n = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        ++n;
      }
      io_uring_cq_advance(&ring, n);
      done += n;
      inflight -= n;
    }
    if (w) fdatasync(fd);
  };
  pass(true);  // the file's blocks exist before anything is timed
  Figure f = measure(
      o, block * count,
      [&] {
        if (!write) drop_page_cache();
      },
      [&] { pass(write); }, [] {});
  io_uring_queue_exit(&ring);
  ::close(fd);
  ::unlink(path.c_str());
  return f.gbps;
#endif
}

// What fio did: GB/s (0 when fio is missing or fails) and its own CPU seconds per GB moved.
struct FioFigure {
  double gbps = 0;
  double cpu_per_gb = 0;
};

// The number after "key": in fio's JSON output, from position `from`; 0 if absent.
double fio_number(const std::string& text, const char* key, size_t from) {
  size_t at = text.find(std::string("\"") + key + "\"", from);
  if (at == std::string::npos) return 0;
  at = text.find(':', at);
  return std::strtod(text.c_str() + at + 1, nullptr);
}

// fio with ioengine=io_uring, direct=1, the same block size and queue depth, on the same folder.
FioFigure fio_run(const Options& o, const std::string& dir, size_t block, size_t bytes,
                  bool write) {
  static const bool have_fio = std::system("fio --version >/dev/null 2>&1") == 0;
  if (!have_fio) return {};
  const std::string file = dir + "/fio.dat";
  const std::string out = dir + "/fio.json";
  const size_t size = std::max(bytes, block * o.queue_depth * 4);
  auto job = [&](const char* rw) {
    std::string cmd = "fio --name=kvtier --filename=" + file +
                      " --ioengine=io_uring --direct=1 --bs=" + std::to_string(block) +
                      " --iodepth=" + std::to_string(o.queue_depth) + " --rw=" + rw +
                      " --size=" + std::to_string(size) +
                      " --end_fsync=1 --loops=" + std::to_string(o.repeats) +
                      " --output-format=json --output=" + out + " >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
  };
  if (!job("write")) return {};  // lays the file down
  if (!write) drop_page_cache();
  if (!job(write ? "write" : "read")) return {};
  std::FILE* f = std::fopen(out.c_str(), "r");
  if (!f) return {};
  std::string text;
  char chunk[4096];
  for (size_t n; (n = std::fread(chunk, 1, sizeof chunk, f)) > 0;) text.append(chunk, n);
  std::fclose(f);
  std::filesystem::remove(file);
  std::filesystem::remove(out);
  const size_t dir_at = text.find(write ? "\"write\" : {" : "\"read\" : {");
  if (dir_at == std::string::npos) return {};
  FioFigure fig;
  fig.gbps = fio_number(text, "bw_bytes", dir_at) / 1e9;
  // usr_cpu and sys_cpu are percentages of the job's runtime (ms), over all its loops.
  const double io_bytes = fio_number(text, "io_bytes", dir_at);
  const double cpu_s = (fio_number(text, "usr_cpu", 0) + fio_number(text, "sys_cpu", 0)) / 100 *
                       fio_number(text, "job_runtime", 0) / 1e3;
  if (io_bytes > 0) fig.cpu_per_gb = cpu_s / (io_bytes / 1e9);
  return fig;
}

void run_file(const Options& o, const std::string& dir) {
  const bool root = geteuid() == 0;
  std::vector<size_t> batches;
  for (size_t page : o.pages) {
    std::vector<size_t> fit;
    for (size_t b : o.file_batches)
      if (b * page <= o.file_max_bytes) fit.push_back(b);
    if (fit.empty()) continue;
    const size_t max_batch = fit.back();
    progress("file: limits for " + human(page) + " pages");
    const size_t limit_bytes = std::max(max_batch * page, size_t{64} << 20);
    const FioFigure fio_w = fio_run(o, dir, page, limit_bytes, true);
    const FioFigure fio_r = fio_run(o, dir, page, limit_bytes, false);
    const double raw_w = raw_uring_gbps(o, dir, page, limit_bytes / page, true);
    const double raw_r = raw_uring_gbps(o, dir, page, limit_bytes / page, false);
    for (bool aligned : {true, false}) {
      Buffer mem(2 * max_batch * page + 8192);
      mem.randomize(11);
      std::byte* base = mem.base + (aligned ? 0 : 64);
      const std::string cfg =
          "tiers=file;file_dir=" + dir +
          "/store;file_queue_depth=" + std::to_string(o.queue_depth) +
          ";file_capacity=" + std::to_string(4 * max_batch * page + (size_t{64} << 20));
      kvtier_store_t* store = nullptr;
      check_rc(kvtier_open(cfg.c_str(), &store), "open file tier");
      check_rc(kvtier_register_buffer(store, base, 2 * max_batch * page), "register_buffer");
      for (size_t batch : fit) {
        progress("file: " + human(page) + " pages, batch " + std::to_string(batch) +
                 (aligned ? ", aligned pool" : ", unaligned pool"));
        const auto keys = make_keys("file-" + std::to_string(page), batch);
        const auto ck = c_keys(keys);
        // Two fragments per page, the K and V halves of a page_first pool.
        std::vector<void*> src, dst;
        std::vector<size_t> sizes(2 * batch, page / 2);
        for (size_t i = 0; i < batch; ++i) {
          src.push_back(base + i * page);
          src.push_back(base + i * page + page / 2);
          dst.push_back(base + (max_batch + i) * page);
          dst.push_back(base + (max_batch + i) * page + page / 2);
        }
        std::vector<int> res(batch);
        auto all_ok = [&](const char* what) {
          for (int r : res)
            if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
        };
        auto write = [&] {
          check_rc(kvtier_batch_set_v1(store, ck.data(), batch, src.data(), sizes.data(),
                                       src.size(), res.data()),
                   "batch_set_v1");
        };
        auto read = [&] {
          check_rc(kvtier_batch_get_v1(store, ck.data(), batch, dst.data(), sizes.data(),
                                       dst.size(), res.data()),
                   "batch_get_v1");
        };
        auto scribble = [&] { std::memset(base + max_batch * page, 0xA5, batch * page); };
        auto verify = [&] {
          all_ok("batch_get_v1");
          if (std::memcmp(base, base + max_batch * page, batch * page) != 0)
            die("file read-back differs");
        };
        const size_t bytes = batch * page;
        // Emptied by removing the batch's keys: their slots are then overwritten, the steady
        // state of a full cache (and what fio and the raw loop do). "write new" starts from
        // cleared, truncated files, so its blocks are fresh extents the filesystem must convert.
        std::vector<int> rm(batch);
        auto empty = [&] {
          check_rc(kvtier_batch_remove(store, ck.data(), batch, rm.data()), "remove");
          size_t hits = 1;
          check_rc(kvtier_batch_exists(store, ck.data(), batch, &hits), "exists");
          if (hits) die("the store was not empty before a timed write");
        };
        Figure wnew = measure(
            o, bytes, [&] { check_rc(kvtier_clear(store), "clear"); }, write,
            [&] { all_ok("batch_set_v1"); });
        Figure w = measure(o, bytes, empty, write, [&] { all_ok("batch_set_v1"); });
        Figure cold = measure(
            o, bytes,
            [&] {
              scribble();
              drop_page_cache();
            },
            read, verify);
        Figure warm = measure(o, bytes, scribble, read, verify);
        for (auto [op, fig, fio, raw] :
             {std::tuple{"write", w, fio_w, raw_w}, std::tuple{"write new", wnew, fio_w, raw_w},
              std::tuple{root ? "read cold" : "read (warm: not root)", cold, fio_r, raw_r},
              std::tuple{"read warm", warm, fio_r, raw_r}}) {
          Row row;
          row.kind = "file";
          row.tier = "file";
          row.shape = aligned ? "aligned" : "unaligned";
          row.path = "v1";
          row.op = op;
          row.batch = batch;
          row.block = page;
          row.fig = fig;
          row.limit_gbps = fio.gbps;
          row.limit_cpu_per_gb = fio.cpu_per_gb;
          row.limit_name = "fio";
          row.verified = std::string(op).rfind("read", 0) == 0 ? "bytes" : "codes";
          row.limit2_gbps = raw;
          row.limit2_name = "raw io_uring";
          g_rows.push_back(row);
        }
      }
      kvtier_close(store);
    }
  }
}

// zstd on KV-like bf16 pages (random mantissas, exponents in a narrow band): what it saves on
// disk and what it costs, against the same pages stored plain.
void run_compression(const Options& o, const std::string& dir) {
  const size_t page = size_t{1} << 20, batch = 16;
  Buffer mem(2 * batch * page + 4096);
  std::mt19937_64 g(5);
  auto* p = reinterpret_cast<unsigned char*>(mem.base);
  for (size_t i = 0; i + 1 < mem.len; i += 2) {
    const uint64_t r = g();
    p[i] = static_cast<unsigned char>(r);
    p[i + 1] = static_cast<unsigned char>(0x3C + (r >> 8) % 3) | ((r >> 16) & 0x80);
  }
  std::byte* base = mem.base;
  const auto keys = make_keys("zstd", batch);
  const auto ck = c_keys(keys);
  std::vector<void*> src, dst;
  std::vector<size_t> sizes(batch, page);
  for (size_t i = 0; i < batch; ++i) {
    src.push_back(base + i * page);
    dst.push_back(base + (batch + i) * page);
  }
  std::vector<int> res(batch);
  for (const char* mode : {"none", "zstd:1", "zstd:3"}) {
    progress(std::string("file: compression ") + mode);
    kvtier_store_t* store = nullptr;
    const std::string cfg = "tiers=file;file_compression=" + std::string(mode) +
                            ";file_dir=" + dir + "/zstd-" + mode +
                            ";file_queue_depth=" + std::to_string(o.queue_depth);
    check_rc(kvtier_open(cfg.c_str(), &store), "open");
    check_rc(kvtier_register_buffer(store, base, 2 * batch * page), "register_buffer");
    auto ok = [&] {
      for (int r : res)
        if (r != KVTIER_OK) die(std::string("compression run: ") + kvtier_error_name(r));
    };
    Figure w = measure(
        o, batch * page,
        [&] { check_rc(kvtier_batch_remove(store, ck.data(), batch, res.data()), "remove"); },
        [&] {
          check_rc(kvtier_batch_set_v1(store, ck.data(), batch, src.data(), sizes.data(), batch,
                                       res.data()),
                   "set");
        },
        ok);
    char* js = nullptr;
    check_rc(kvtier_stats_json(store, &js), "stats");
    const std::string stats(js);
    kvtier_free(js);
    const size_t at = stats.find("\"bytes\":");
    const double disk = std::strtod(stats.c_str() + at + 8, nullptr);
    Figure r = measure(
        o, batch * page,
        [&] {
          std::memset(dst[0], 0xA5, batch * page);
          drop_page_cache();
        },
        [&] {
          check_rc(kvtier_batch_get_v1(store, ck.data(), batch, dst.data(), sizes.data(), batch,
                                       res.data()),
                   "get");
        },
        [&] {
          ok();
          if (std::memcmp(src[0], dst[0], batch * page) != 0) die("zstd read-back differs");
        });
    kvtier_close(store);
    for (auto [op, fig] : {std::pair{"write", w}, std::pair{"read cold", r}}) {
      Row row;
      row.kind = "compression";
      row.tier = "file";
      row.path = mode;
      row.op = op;
      row.batch = batch;
      row.block = page;
      row.fig = fig;
      row.speedup = disk / (batch * page);  // disk bytes per page byte
      row.verified = std::string(op) == "write" ? "codes" : "bytes";
      g_rows.push_back(row);
    }
  }
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

// ---- one namespace, two processes ----------------------------------------------------------
// The same pages read cold by the process that wrote them and by a second process (this binary
// again, "shared-reader"), and batch_exists of 128 keys the first process wrote, timed in both.

constexpr size_t kSharedBatch = 16, kExistsKeys = 128, kExistsCalls = 20000;
constexpr int kSharedRepeats = 9;  // at least: small cold reads on a virtual disk scatter widely

std::string shared_config(const std::string& dir, const Options& o) {
  return "tiers=file;file_dir=" + dir + "/shared;file_queue_depth=" +
         std::to_string(o.queue_depth) + ";file_capacity=1GiB";
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
        std::memset(base, 0xA5, kSharedBatch * page);
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
  std::printf("%.9f %.9f %.9f %.9f %.9f %.6f\n", cold.median_s, cold.min_s, cold.max_s,
              cold.gbps, cold.cpu_per_gb, us);
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
    check_rc(kvtier_batch_set(store, ck.data(), kSharedBatch, ptrs.data(), sizes.data(),
                              res.data()),
             "batch_set");
    const auto ekeys = make_keys("exists", kExistsKeys);
    const auto eck = c_keys(ekeys);
    std::vector<const void*> eptrs(kExistsKeys, src.base);
    std::vector<size_t> esizes(kExistsKeys, 4096);
    std::vector<int> eres(kExistsKeys);
    check_rc(kvtier_batch_set(store, eck.data(), kExistsKeys, eptrs.data(), esizes.data(),
                              eres.data()),
             "batch_set");
    auto [own, own_us] = shared_reads(o, store, page);
    // The second process joins the namespace while this one holds it open.
    const std::string cmd = "\"/proc/" + std::to_string(getpid()) + "/exe\" shared-reader \"" +
                            dir + "\" " + std::to_string(page) + " " +
                            std::to_string(o.queue_depth) + " " + std::to_string(o.repeats) +
                            " " + std::to_string(o.warmup);
    FILE* child = popen(cmd.c_str(), "r");
    Figure other;
    double other_us = 0;
    if (!child || std::fscanf(child, "%lf %lf %lf %lf %lf %lf", &other.median_s, &other.min_s,
                              &other.max_s, &other.gbps, &other.cpu_per_gb, &other_us) != 6)
      die("the second process gave no figures");
    if (pclose(child) != 0) die("the second process failed");
    for (auto [who, fig, us] : {std::tuple{"this", own, own_us}, std::tuple{"other", other, other_us}}) {
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
      row.speedup = us;        // µs per batch_exists of 128 keys
      row.threads = o.repeats;  // the timed runs the medians are of
      g_rows.push_back(row);
    }
  }
  kvtier_close(store);
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

// ---- output -------------------------------------------------------------------------------

std::string fixed2(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

std::string human(size_t bytes) {
  char b[32];
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
    std::snprintf(b, sizeof b, "%zuM", bytes >> 20);
  else if (bytes >= (1u << 20))
    std::snprintf(b, sizeof b, "%.1fM", bytes / 1048576.0);
  else
    std::snprintf(b, sizeof b, "%zuK", bytes >> 10);
  return b;
}

void print_tables() {
  if (tty()) std::fprintf(stderr, "\r\033[K");
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "compare") continue;
    if (!header) {
      std::printf(
          "\ncompare: old interface (gather + batch_set / batch_get + scatter) versus "
          "zero-copy v1; page = one key; median of the timed runs\n");
      std::printf("%-7s %-22s %5s %-22s %-5s %9s %7s %7s %8s %7s %7s %7s %-5s\n", "tier",
                  "pool", "batch", "path", "op", "ms/batch", "GB/s", "min", "CPUs/GB", "x old",
                  "memcpy", "ratio", "check");
      header = true;
    }
    std::printf("%-7s %-22s %5zu %-22s %-5s %9.2f %7.2f %7.2f %8.3f %7.2f %7.2f %7.2f %-5s\n",
                r.tier.c_str(), r.shape.c_str(), r.batch, r.path.c_str(), r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.gbps * r.fig.median_s / r.fig.max_s,
                r.fig.cpu_per_gb, r.speedup, r.limit_gbps, r.fig.gbps / r.limit_gbps,
                r.verified.c_str());
  }
  header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "transfer") continue;
    if (!header) {
      std::printf(
          "\ntransfer: v1 batches of %zu blocks, one key per block; limit: the best the machine "
          "does with the same bytes (memory: memcpy or a streaming copy; remote, p2p: one "
          "loopback TCP stream); memcpy: the same blocks copied with memcpy\n",
          r.batch);
      std::printf("%-8s %6s %7s %-5s %9s %7s %8s %-15s %7s %7s %7s %-5s\n", "tier", "block",
                  "threads", "op", "ms/batch", "GB/s", "CPUs/GB", "limit", "GB/s", "ratio",
                  "memcpy", "check");
      header = true;
    }
    std::printf("%-8s %6s %7zu %-5s %9.2f %7.2f %8.3f %-15s %7.2f %7.2f %7s %-5s\n",
                r.tier.c_str(), human(r.block).c_str(), r.threads, r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.cpu_per_gb, r.limit_name.c_str(),
                r.limit_gbps, r.limit_gbps > 0 ? r.fig.gbps / r.limit_gbps : 0.0,
                r.limit2_gbps > 0 ? fixed2(r.limit2_gbps).c_str() : "-", r.verified.c_str());
  }
  for (const std::string& note : g_notes) std::printf("%s\n", note.c_str());
  header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "placement") continue;
    if (!header) {
      std::printf(
          "\nplacement: %zu keys on real servers, rendezvous hashing; moved = keys whose "
          "server changed, needless = moved between servers that both stayed\n",
          r.batch);
      std::printf("%-11s %7s %7s %8s\n", "change", "moved", "target", "needless");
      header = true;
    }
    std::printf("%-11s %7.4f %7.4f %8.4f\n", r.op.c_str(), r.fig.gbps, r.limit_gbps, r.speedup);
  }
  header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "file") continue;
    if (!header) {
      std::printf(
          "\nfile tier: v1, two fragments per page, O_DIRECT, writes durable "
          "(fdatasync) before they count; limits: fio (io_uring, direct=1, same block "
          "size and queue depth) and a raw io_uring loop, same folder, same run; fio CPU: "
          "fio's own CPU seconds per GB, xCPU: kvtier's over it (kvtier's includes the "
          "XXH3 checksum of every page)\n");
      std::printf("%5s %-9s %5s %-9s %9s %7s %8s %7s %6s %8s %6s %7s %6s %-5s\n", "page", "pool",
                  "batch", "op", "ms/batch", "GB/s", "CPUs/GB", "fio", "ratio", "fio CPU", "xCPU",
                  "raw", "ratio", "check");
      header = true;
    }
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    std::printf("%5s %-9s %5zu %-9s %9.2f %7.2f %8.3f %7.2f %6.2f %8.3f %6.2f %7.2f %6.2f %-5s\n",
                human(r.block).c_str(), r.shape.c_str(), r.batch, r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.cpu_per_gb, r.limit_gbps,
                ratio(r.fig.gbps, r.limit_gbps), r.limit_cpu_per_gb,
                ratio(r.fig.cpu_per_gb, r.limit_cpu_per_gb), r.limit2_gbps,
                ratio(r.fig.gbps, r.limit2_gbps), r.verified.c_str());
  }
  header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "compression") continue;
    if (!header) {
      std::printf(
          "\nfile tier compression: 1 MiB KV-like bf16 pages, batch of 16, aligned "
          "pool; disk = bytes on disk per page byte (slots included)\n");
      std::printf("%-7s %-9s %9s %7s %8s %6s\n", "zstd", "op", "ms/batch", "GB/s", "CPUs/GB",
                  "disk");
      header = true;
    }
    std::printf("%-7s %-9s %9.2f %7.2f %8.3f %6.2f\n", r.path.c_str(), r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.cpu_per_gb, r.speedup);
  }
  header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "shared") continue;
    if (!header) {
      std::printf(
          "\nfile tier shared by two processes: v1, batch of %zu pages, pool 64 B past 4 KiB; "
          "the same pages read by the process that wrote them and by a second one, same run, "
          "median of %d; exists = batch_exists of %zu keys the first process wrote\n",
          kSharedBatch, static_cast<int>(r.threads), kExistsKeys);
      std::printf("%5s %-7s %-9s %9s %7s %8s %9s %6s %10s\n", "page", "reader", "op",
                  "ms/batch", "GB/s", "CPUs/GB", "own GB/s", "ratio", "exists us");
      header = true;
    }
    std::printf("%5s %-7s %-9s %9.2f %7.2f %8.3f %9.2f %6.2f %10.2f\n", human(r.block).c_str(),
                r.path.c_str(), r.op.c_str(), r.fig.median_s * 1e3, r.fig.gbps,
                r.fig.cpu_per_gb, r.limit_gbps, r.fig.gbps / r.limit_gbps, r.speedup);
  }
  for (const Row& r : g_rows)
    if (r.kind == "reopen")
      std::printf(
          "\nfile tier reopen: %zu pages of %s, page cache dropped: index rebuilt in "
          "%.3f s = %.0f pages/s (median)\n",
          r.batch, human(r.block).c_str(), r.fig.median_s, r.fig.gbps);
  header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "limit") continue;
    if (!header) {
      std::printf("\nlimits: the better of memcpy and a streaming copy of the same blocks, "
                  "warm buffers\n");
      std::printf("%6s %7s %7s\n", "block", "threads", "GB/s");
      header = true;
    }
    std::printf("%6s %7zu %7.2f\n", human(r.block).c_str(), r.threads, r.limit_gbps);
  }
}

void write_json(const std::string& path) {
  std::ostringstream o;
  o << "{\"kvtier\":\"" << kvtier_version_string() << "\",\"rows\":[";
  for (size_t i = 0; i < g_rows.size(); ++i) {
    const Row& r = g_rows[i];
    o << (i ? "," : "") << "{\"kind\":\"" << r.kind << "\",\"tier\":\"" << r.tier
      << "\",\"pool\":\"" << r.shape << "\",\"path\":\"" << r.path << "\",\"op\":\"" << r.op
      << "\",\"batch\":" << r.batch << ",\"block\":" << r.block << ",\"threads\":" << r.threads
      << ",\"median_ms\":" << r.fig.median_s * 1e3 << ",\"min_ms\":" << r.fig.min_s * 1e3
      << ",\"max_ms\":" << r.fig.max_s * 1e3 << ",\"gbps\":" << r.fig.gbps
      << ",\"cpu_s_per_gb\":" << r.fig.cpu_per_gb << ",\"speedup_vs_old\":" << r.speedup
      << ",\"limit\":\"" << r.limit_name << "\",\"limit_gbps\":" << r.limit_gbps
      << ",\"limit_cpu_s_per_gb\":" << r.limit_cpu_per_gb << ",\"limit2\":\"" << r.limit2_name
      << "\",\"limit2_gbps\":" << r.limit2_gbps << ",\"verified\":\"" << r.verified << "\"}";
  }
  o << "]}\n";
  if (path == "-") {
    std::fputs(o.str().c_str(), stdout);
    return;
  }
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) die("cannot write " + path);
  std::fputs(o.str().c_str(), f);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "shared-reader") return shared_reader(argc, argv);
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvtier-bench: %s\n", e.what());
    return 2;
  }
  std::printf("kvtier-bench %s: %d timed runs after %d warm-up (medians), host pool %s\n",
              kvtier_version_string(), o.repeats, o.warmup,
              o.aligned ? "4 KiB-aligned" : "64 B past a 4 KiB boundary");
  std::fflush(stdout);
  g_dir = o.dir;
  if (g_dir.empty()) {
    char tmpl[] = "/var/tmp/kvtier-bench-XXXXXX";  // on disk, where /tmp may be a tmpfs
    if (!mkdtemp(tmpl)) die("cannot make a folder in /var/tmp");
    g_dir = tmpl;
  }
  if (o.mode == "all" || o.mode == "limits") run_limits(o);
  if (o.mode == "all" || o.mode == "compare")
    for (const auto& tier : o.tiers)
      for (const auto& shape : o.layouts) run_compare(o, tier, shape);
  if (o.mode == "all" || o.mode == "transfer")
    for (const auto& tier : o.transfer_tiers)
      tier.rfind("p2p", 0) == 0 ? run_p2p(o, tier) : run_transfer(o, tier);
  if ((o.mode == "all" || o.mode == "transfer") &&
      std::count(o.transfer_tiers.begin(), o.transfer_tiers.end(), "remote3"))
    run_placement();
  if (o.mode == "all" || o.mode == "file") {
    run_file(o, g_dir);
    run_compression(o, g_dir);
    run_reopen(o, g_dir);
    run_shared(o, g_dir);
  }
  if (o.dir.empty()) std::filesystem::remove_all(g_dir);
  print_tables();
  if (!o.json.empty()) write_json(o.json);
  if (!o.plot.empty()) {
    std::string tmp = o.json.empty() || o.json == "-" ? o.plot + ".json" : o.json;
    if (tmp != o.json) write_json(tmp);
    std::string cmd = "/usr/bin/python3 \"" + std::string(KVTIER_BENCH_DIR) + "/plot.py\" \"" +
                      tmp + "\" \"" + o.plot + "\"";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "kvtier-bench: plotting failed\n");
  }
  return 0;
}
