// The file tier's limits: the device through a raw io_uring loop, and fio.
#include <fcntl.h>
#include <unistd.h>
#if KVTIER_BENCH_URING
#include <liburing.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

// ---- file tier ----------------------------------------------------------------------------

bool drop_page_cache() {
  sync();
  FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w");
  if (!f) return false;
  bool ok = std::fputs("3\n", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

#if KVTIER_BENCH_URING
struct RawUring::Ring {
  io_uring ring;
};
#else
struct RawUring::Ring {};
#endif

RawUring::RawUring(const Options& o, const std::string& dir, size_t block, size_t count)
    : path_(dir + "/raw-uring.dat"), block_(block), count_(count) {
#if KVTIER_BENCH_URING
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd_ < 0) return;
  const unsigned depth = static_cast<unsigned>(std::min<size_t>(o.queue_depth, count));
  auto ring = std::make_unique<Ring>();
  if (fallocate(fd_, 0, 0, static_cast<off_t>(block * count)) != 0 ||
      io_uring_queue_init(depth, &ring->ring, 0) != 0)
    return;
  ring_ = std::move(ring);
  Buffer lay(block);
  lay.randomize(9);
  pass(true, std::vector<std::byte*>(count, lay.base));  // the blocks exist before any timing
#else
  (void)o;
#endif
}

RawUring::~RawUring() {
#if KVTIER_BENCH_URING
  if (ring_) io_uring_queue_exit(&ring_->ring);
#endif
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
}

LimitFigure RawUring::pass(bool write, const std::vector<std::byte*>& blocks, bool fresh) {
#if !KVTIER_BENCH_URING
  (void)write, (void)blocks, (void)fresh;
  return {};
#else
  if (!ring_ || blocks.size() != count_) return {};
  if (!write) drop_page_cache();
  if (write && fresh && ftruncate(fd_, 0) != 0) return {};
  io_uring& ring = ring_->ring;
  const unsigned depth = ring.sq.ring_entries;
  const double c0 = cpu_seconds(), t0 = now();
  size_t next = 0, done = 0, inflight = 0;
  bool failed = false;
  while (done < count_) {
    while (inflight < depth && next < count_) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      if (write)
        io_uring_prep_write(sqe, fd_, blocks[next], block_, next * block_);
      else
        io_uring_prep_read(sqe, fd_, blocks[next], block_, next * block_);
      ++next;
      ++inflight;
    }
    io_uring_submit_and_wait(&ring, 1);
    io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      failed |= cqe->res != static_cast<int>(block_);
      ++n;
    }
    io_uring_cq_advance(&ring, n);
    done += n;
    inflight -= n;
  }
  if (write) failed |= fdatasync(fd_) != 0;
  const double s = now() - t0, cpu = cpu_seconds() - c0;
  if (failed) return {};
  const double gb = block_ * count_ / 1e9;
  return {gb / s, cpu / gb};
#endif
}

double raw_uring_gbps(const Options& o, const std::string& dir, size_t block, size_t count,
                      bool write) {
  RawUring raw(o, dir, block, count);
  const size_t depth = std::min<size_t>(o.queue_depth, count);
  Buffer buf(block * depth);
  buf.randomize(9);
  std::vector<std::byte*> blocks;
  for (size_t i = 0; i < count; ++i) blocks.push_back(buf.base + (i % depth) * block);
  std::vector<double> gbps;
  for (int r = 0; r < o.warmup + o.repeats; ++r)
    if (const double g = raw.pass(write, blocks).gbps; r >= o.warmup) gbps.push_back(g);
  std::sort(gbps.begin(), gbps.end());
  return gbps[(gbps.size() - 1) / 2];
}

// The number after "key": in fio's JSON output, from position `from`; 0 if absent.
double fio_number(const std::string& text, const char* key, size_t from) {
  size_t at = text.find(std::string("\"") + key + "\"", from);
  if (at == std::string::npos) return 0;
  at = text.find(':', at);
  return std::strtod(text.c_str() + at + 1, nullptr);
}

namespace {

// One fio job on `file`: `batches` batches of `batch` blocks, each written batch ended by an
// fdatasync that waits for its writes (as a put's does); its figure from fio's JSON.
LimitFigure fio_job(const Options& o, const std::string& file, size_t block, size_t batch,
                    const char* rw, size_t batches) {
  const std::string out = file + ".json";
  const std::string cmd = "fio --name=kvtier --filename=" + file +
                          " --ioengine=io_uring --direct=1 --bs=" + std::to_string(block) +
                          " --iodepth=" + std::to_string(o.queue_depth) + " --rw=" + rw +
                          " --size=" + std::to_string(block * batch * batches) +
                          " --fdatasync=" + std::to_string(batch) + " --end_fsync=1" +
                          " --output-format=json --output=" + out + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return {};
  std::FILE* f = std::fopen(out.c_str(), "r");
  if (!f) return {};
  std::string text;
  char chunk[4096];
  for (size_t n; (n = std::fread(chunk, 1, sizeof chunk, f)) > 0;) text.append(chunk, n);
  std::fclose(f);
  std::filesystem::remove(out);
  const bool write = std::string(rw) == "write";
  const size_t dir_at = text.find(write ? "\"write\" : {" : "\"read\" : {");
  if (dir_at == std::string::npos) return {};
  LimitFigure fig;
  fig.gbps = fio_number(text, "bw_bytes", dir_at) / 1e9;
  // usr_cpu and sys_cpu are percentages of the job's runtime (ms).
  const double io_bytes = fio_number(text, "io_bytes", dir_at);
  const double cpu_s = (fio_number(text, "usr_cpu", 0) + fio_number(text, "sys_cpu", 0)) / 100 *
                       fio_number(text, "job_runtime", 0) / 1e3;
  if (io_bytes > 0) fig.cpu_per_gb = cpu_s / (io_bytes / 1e9);
  return fig;
}

}  // namespace

Fio::Fio(const Options& o, const std::string& dir, size_t block, size_t batch)
    : o_(o),
      file_(dir + "/fio.dat"),
      fresh_(dir + "/fio-new.dat"),
      block_(block),
      batch_(batch),
      // At least 64 MiB (fio times its job in milliseconds), at most 1024 batches.
      batches_(
          std::clamp<size_t>((size_t{64} << 20) / (block * batch), std::max(4, o.repeats), 1024)) {}

Fio::~Fio() {
  std::filesystem::remove(file_);
  std::filesystem::remove(fresh_);
}

LimitFigure Fio::run(FioMode mode) {
  static const bool have_fio = [] {
    const bool found = std::system("fio --version >/dev/null 2>&1") == 0;
    if (!found) g_notes.push_back("file: fio is not on PATH: no fio limit (its columns show '-')");
    return found;
  }();
  if (!have_fio) return {};
  if (mode == FioMode::kWriteFresh) {  // blocks the filesystem allocates as they are written
    std::filesystem::remove(fresh_);
    return fio_job(o_, fresh_, block_, batch_, "write", batches_);
  }
  if (!laid_) laid_ = fio_job(o_, file_, block_, batch_, "write", batches_).gbps > 0;
  if (!laid_) return {};
  if (mode == FioMode::kRead) drop_page_cache();
  return fio_job(o_, file_, block_, batch_, mode == FioMode::kRead ? "read" : "write", batches_);
}

}  // namespace kvtier_bench
