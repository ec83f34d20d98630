// What every subcommand measures with: timed runs, random buffers, keys, the stores' configs.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

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

namespace {

using Took = std::vector<std::pair<double, double>>;  // (s, cpu s) per timed run, in order

// measure_turns' rounds, each run's times in order; `round` (if set) runs before each timed
// round, untimed, and a warm-up follows it.
std::vector<Took> time_rounds(const Options& o, const std::vector<Timed>& runs,
                              const std::function<void()>& round) {
  std::vector<Took> took(runs.size());
  auto turn = [&](bool timed) {
    for (size_t k = 0; k < runs.size(); ++k) {
      runs[k].prep();
      const double c0 = cpu_seconds(), t0 = now();
      runs[k].body();
      const double t1 = now(), c1 = cpu_seconds();
      runs[k].check();
      if (timed) took[k].push_back({t1 - t0, c1 - c0});
    }
  };
  // A warm-up is at least o.warmup rounds and at least kWarmup seconds: one run of a fraction
  // of a millisecond leaves caches, branch predictors and this VM's idle vCPU cold, and the
  // first timed runs of a 1 KiB batch then took 1.5-2x the steady state's time per key.
  constexpr double kWarmup = 0.2;
  auto warm_up = [&] {
    const double start = now();
    for (int warm = 0; warm < o.warmup || (o.warmup > 0 && now() - start < kWarmup); ++warm)
      turn(false);
  };
  warm_up();
  for (int r = 0; r < o.repeats; ++r) {
    if (round) {
      round();
      // The limit left this process idle and the disk busy with its last writes: warm up
      // again, or a batch of one page ran at 0.3-0.6x its figure without a limit between.
      warm_up();
    }
    turn(true);
  }
  return took;
}

Figure figure(size_t bytes, Took t) {
  std::sort(t.begin(), t.end());
  Figure f;
  f.median_s = t[t.size() / 2].first;
  f.min_s = t.front().first;
  f.max_s = t.back().first;
  f.gbps = bytes / f.median_s / 1e9;
  f.cpu_per_gb = t[t.size() / 2].second / (bytes / 1e9);
  return f;
}

// The median of GB/s-like figures, the lower one of an even count (as Figure takes the slower
// of two middle times); 0 of none.
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2];
}

}  // namespace

std::vector<Figure> measure_turns(const Options& o, size_t bytes, const std::vector<Timed>& runs) {
  std::vector<Figure> figs;
  for (const Took& t : time_rounds(o, runs, nullptr)) figs.push_back(figure(bytes, t));
  return figs;
}

Figure measure(const Options& o, size_t bytes, const std::function<void()>& prep,
               const std::function<void()>& body, const std::function<void()>& check) {
  return measure_turns(o, bytes, {{prep, body, check}})[0];
}

Paired measure_paired(const Options& o, size_t bytes,
                      const std::vector<std::function<LimitFigure()>>& limits, const Timed& run) {
  std::vector<std::vector<LimitFigure>> lim(limits.size());  // [limit][round]
  const Took took = time_rounds(o, {run}, [&] {
    for (size_t l = 0; l < limits.size(); ++l) lim[l].push_back(limits[l]());
  })[0];
  Paired p;
  p.fig = figure(bytes, took);
  for (const std::vector<LimitFigure>& rounds : lim) {
    std::vector<double> gbps, cpu, ratios;
    for (size_t r = 0; r < took.size(); ++r) {
      if (rounds[r].gbps <= 0) continue;  // not measured (its tool missing or failed): no ratio
      gbps.push_back(rounds[r].gbps);
      cpu.push_back(rounds[r].cpu_per_gb);
      ratios.push_back(bytes / took[r].first / 1e9 / rounds[r].gbps);
    }
    p.limit.push_back({median(gbps), median(cpu)});
    p.ratio.push_back(median(ratios));
  }
  return p;
}

Crew::Crew(size_t n) {
  for (size_t t = 1; t < n; ++t) threads_.emplace_back([this, t] { work(t); });
}

Crew::~Crew() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& th : threads_) th.join();
}

void Crew::run(const std::function<void(size_t)>& fn) {
  {
    std::lock_guard lock(mu_);
    fn_ = &fn;
    busy_ = threads_.size();
    ++round_;
  }
  cv_.notify_all();
  fn(0);
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return busy_ == 0; });
}

void Crew::work(size_t t) {
  uint64_t done = 0;
  for (;;) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return stop_ || round_ != done; });
    if (stop_) return;
    done = round_;
    const auto* fn = fn_;
    lock.unlock();
    (*fn)(t);
    lock.lock();
    if (--busy_ == 0) cv_.notify_all();
  }
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

}  // namespace kvtier_bench
