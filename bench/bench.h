// kvtier-bench's parts, one file per table (compare, transfer, limits, file; p2p and placement
// printed by transfer, shared by file) and the shared ones: options.cpp (the command line), measure.cpp (timed runs,
// buffers, keys), output.cpp (tables, JSON), remote.cpp and file_limits.cpp (machine limits the
// tables stand next to). Every figure a subcommand measures becomes a Row in g_rows.
#pragma once

#include <kvtier/kvtier.h>
#include <sys/mman.h>
#include <sys/types.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace kvtier_bench {

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
  bool huge_pages = false;                    // the file table's pool: MADV_HUGEPAGE
  unsigned queue_depth = 32;
  std::string dir;  // where the file tier and fio work; default a fresh folder in /var/tmp
};

// The command line (throws std::runtime_error on a bad argument; --help prints and exits).
Options parse(int argc, char** argv);
// "4K,64K,1M" -> sizes in bytes.
std::vector<size_t> sizes(const std::string& s);

// ---- measuring (measure.cpp) ----

struct Figure {
  double median_s = 0, min_s = 0, max_s = 0;
  double gbps = 0;        // bytes / median time
  double cpu_per_gb = 0;  // process CPU seconds per GB moved (median run)
};

double now();
double cpu_seconds();  // this process's user + system CPU seconds
// One thing to time: prep (untimed), body (timed), check (untimed).
struct Timed {
  std::function<void()> prep, body, check;
};
// Runs each of `runs` in turns, a run of each per round: a warm-up of at least o.warmup rounds
// and 0.2 s, then o.repeats timed rounds; a Figure per entry. Figures taken in turns come from
// the same seconds: this VM's memory copies drift by 10-20% from one second to the next, so a
// limit timed before or after a figure moves the ratio by as much.
std::vector<Figure> measure_turns(const Options& o, size_t bytes, const std::vector<Timed>& runs);
Figure measure(const Options& o, size_t bytes, const std::function<void()>& prep,
               const std::function<void()>& body, const std::function<void()>& check);
// What a limit's run did: GB/s (0 where it was not measured: its tool missing or failed) and
// its own CPU seconds per GB moved.
struct LimitFigure {
  double gbps = 0;
  double cpu_per_gb = 0;
};
// A figure and its limits in alternating rounds: o.repeats rounds of one run of each `limits`
// entry (each times itself), a warm-up of `run` (untimed, as measure_turns') and one timed run.
// This disk's speed drifts by a third from one run to the next, and the runs of a round see the
// same drift: a ratio is the median of the rounds' own ratios, not a ratio of two medians.
struct Paired {
  Figure fig;                      // run's
  std::vector<LimitFigure> limit;  // per limit: medians over the rounds it was measured in
  std::vector<double> ratio;       // per limit: median of run's GB/s over its, round by round;
                                   // 0 where it was never measured
};
Paired measure_paired(const Options& o, size_t bytes,
                      const std::vector<std::function<LimitFigure()>>& limits, const Timed& run);
// Runs fn(0) .. fn(n - 1) at once, fn(0) on the caller and the others on threads that live as
// long as the Crew: a thread created per batch would be timed with the batch (tens of
// microseconds here, a sixth of a batch of 1 KiB blocks), which an engine's threads never pay.
class Crew {
 public:
  explicit Crew(size_t n);
  ~Crew();
  void run(const std::function<void(size_t)>& fn);

 private:
  void work(size_t t);
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(size_t)>* fn_ = nullptr;
  uint64_t round_ = 0;  // fn_'s round; threads run each round once
  size_t busy_ = 0;     // threads still running this round
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

[[noreturn]] void die(const std::string& what);  // with kvtier's last error; exits 1
void check_rc(int rc, const char* what);         // dies unless KVTIER_OK
bool tty();                                      // stderr is a terminal
void progress(const std::string& line);          // one line on a terminal's stderr

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

std::vector<std::string> make_keys(const std::string& prefix, size_t n);
std::vector<const char*> c_keys(const std::vector<std::string>& keys);
extern std::string g_dir;                 // the folder the file tier and fio work in
extern std::vector<std::string> g_notes;  // printed under the tables: what was skipped and why
// A store config string for one tier ("remote", "remote3" and "rdma" are the remote tier)
// with room for `bytes_needed`.
std::string tier_config(const std::string& tier, size_t bytes_needed);

// ---- results (output.cpp) ----

struct Row {
  std::string kind;  // limit | compare | transfer | file | checksum | ...
  std::string tier, shape, path, op;
  size_t batch = 0, block = 0, threads = 1;
  Figure fig;
  double limit_gbps = 0;
  std::string limit_name;
  double limit_cpu_per_gb = 0;  // file: fio's own CPU seconds per GB
  double limit_ratio = 0;       // file: fig over the limit, round by round (see measure_paired)
  double limit2_gbps = 0;       // file: the raw io_uring loop beside fio; memory: same-block memcpy
  double limit2_ratio = 0;      // file: fig over limit2, round by round
  std::string limit2_name;
  double speedup = 0;  // compare: new / old for the same op
  // What the row's timed runs were checked for: "bytes" (every byte read back was compared
  // with what was written), "codes" (every key's result code; a write's bytes are compared by
  // the read row that follows it), "" (a limit).
  std::string verified;
};

extern std::vector<Row> g_rows;
std::string human(size_t bytes);
void print_tables();
void write_json(const std::string& path);  // '-': stdout

// ---- machine limits ----

// limits.cpp: fills with non-temporal stores, which leave no dirty line of dst in the cache: a
// read's destination is scribbled with it (a memset would leave dirty lines, and the timed
// read's own streaming stores would pay for writing them back; an engine's pool, last written
// by a DMA, holds none).
void stream_fill(std::byte* dst, std::byte value, size_t n);
// limits.cpp: single-pass copies of `count` blocks of `block` bytes, side by side, over
// `threads` threads, between two buffers of its own: with memcpy, or with streaming stores.
class CopyLimit {
 public:
  CopyLimit(size_t block, size_t count, size_t threads);
  Timed timed(bool stream);
  // The better of the two figures, named in *how; *plain (if given) gets memcpy's.
  static double best(const Figure& memcpy, const Figure& stream, std::string* how, double* plain);

 private:
  size_t block_, per_;
  Buffer src_, dst_;
  Crew crew_;
};
// limits.cpp: the best single-pass copy of `count` blocks of `block` bytes over `threads`
// threads (memcpy or a streaming copy, named by *how); *plain gets memcpy's own figure.
double memcpy_gbps(const Options& o, size_t block, size_t count, size_t threads,
                   std::string* how = nullptr, double* plain = nullptr);
// file_limits.cpp: the device without kvtier: `count` blocks of `block` bytes, each one O_DIRECT
// read or write through io_uring at the queue depth, at sequential offsets of a file of its own
// in `dir` (laid down at construction, removed with it); a write pass ends with fdatasync
// (durable, as the tier's writes are), a read pass drops the page cache first (untimed). Every
// pass names the memory of each block (4 KiB-aligned): a limit for an engine's pool moves that
// pool's own pages, because how they lie in physical memory sets how many requests the disk
// gets (a request holds at most the device's max_segments pieces), and a fresh buffer moved a
// cold read by a third from one process to the next. A LimitFigure of 0 where it cannot run
// (built without liburing, the file or ring failed).
class RawUring {
 public:
  RawUring(const Options& o, const std::string& dir, size_t block, size_t count);
  ~RawUring();
  RawUring(const RawUring&) = delete;
  RawUring& operator=(const RawUring&) = delete;
  // One timed pass over the file's blocks; `fresh` (a write) truncates the file first (untimed),
  // so the filesystem allocates its blocks as they are written, as a cleared store's are.
  LimitFigure pass(bool write, const std::vector<std::byte*>& blocks, bool fresh = false);

 private:
  struct Ring;
  std::string path_;
  size_t block_, count_;
  int fd_ = -1;
  std::unique_ptr<Ring> ring_;
};
// RawUring's passes over buffers of its own: the median GB/s after a warm-up.
double raw_uring_gbps(const Options& o, const std::string& dir, size_t block, size_t count,
                      bool write);
bool drop_page_cache();
// fio with ioengine=io_uring, direct=1, the same block size and queue depth, on files of its own
// in `dir` (removed with it), in batches of `batch` blocks as kvtier's (each written batch ended
// by an fdatasync that waits for it); one fio process per run(): overwriting a file it laid down
// at its first such run (kWrite), writing a new file whose blocks the filesystem allocates as
// they come (kWriteFresh), or reading the laid-down file after drop_caches (kRead). Without
// fio on PATH every run() is {} and a note says so.
enum class FioMode { kWrite, kWriteFresh, kRead };
class Fio {
 public:
  Fio(const Options& o, const std::string& dir, size_t block, size_t batch);
  ~Fio();
  Fio(const Fio&) = delete;
  Fio& operator=(const Fio&) = delete;
  LimitFigure run(FioMode mode);

 private:
  const Options& o_;
  std::string file_, fresh_;  // the laid-down file; the one kWriteFresh writes anew
  size_t block_, batch_, batches_;
  bool laid_ = false;
};
// remote.cpp: the best single TCP stream over loopback carrying `total` bytes (named by *how).
double best_stream_gbps(const Options& o, size_t total, std::string* how);

// A kvtier-server started for the bench (on loopback, or KVTIER_TEST_RDMA_ADDR), stopped with it.
struct ServerChild {
  pid_t pid = -1;
  std::string address;  // host:port, from the server's "listening on" line
  explicit ServerChild(size_t capacity);
  ~ServerChild();  // SIGTERM, then waits for it
  ServerChild(const ServerChild&) = delete;
  ServerChild& operator=(const ServerChild&) = delete;
};

// ---- subcommands ----

void run_limits(const Options& o);
void run_compare(const Options& o, const std::string& tier, const std::string& shape_name);
void run_transfer(const Options& o, const std::string& tier);
// A transfer row (also p2p's).
void push_transfer(const std::string& tier, const char* path, const char* op, size_t batch,
                   size_t block, size_t threads, const Figure& fig, double limit,
                   const std::string& limit_name, const char* verified, double memcpy = 0);
void run_placement();
void run_p2p(const Options& o, const std::string& tier);
// Why this build has no file tier ("" when it has one): file mode then skips with a note.
std::string file_tier_missing(const std::string& dir);
void run_file(const Options& o, const std::string& dir);
void run_compression(const Options& o, const std::string& dir);
void run_reopen(const Options& o, const std::string& dir);
// shared: the batch sizes its rows are of (output.cpp prints them).
constexpr size_t kSharedBatch = 16, kExistsKeys = 128;
void run_shared(Options o, const std::string& dir);
int shared_reader(int argc, char** argv);  // kvtier-bench shared-reader DIR PAGE QD REP WARM

}  // namespace kvtier_bench
