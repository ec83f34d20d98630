// What the soaks and the resource checks measure: calls' latencies (their p99 and slowest), and a
// process's RSS, threads and open fds, sampled at their highest over the phases of a run.
#pragma once

#include <dirent.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace kvtier_test {

// A number of /proc/PID/status ("VmRSS" in KiB, "Threads"); 0 if it is not there.
inline uint64_t proc_status(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
  return 0;
}

// The open fds of a process.
inline size_t fd_count(pid_t pid) {
  size_t n = 0;
  if (DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n >= 2 ? n - 2 : 0;  // . and ..
}

// Latencies of calls, in ms, in the order they were taken.
struct Latencies {
  using Clock = std::chrono::steady_clock;
  std::vector<double> ms;

  // The time from t0 to now.
  void since(Clock::time_point t0) {
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  void add(const Latencies& other) { ms.insert(ms.end(), other.ms.begin(), other.ms.end()); }
  double p99() const {
    if (ms.empty()) return 0;
    std::vector<double> v = ms;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, v.size() * 99 / 100)];
  }
  double slowest() const { return ms.empty() ? 0 : *std::max_element(ms.begin(), ms.end()); }
};

// RSS (KiB) and open fds of one process at their highest.
struct Peak {
  uint64_t rss = 0;
  size_t fds = 0;
  void sample(pid_t pid) {
    rss = std::max(rss, proc_status(pid, "VmRSS"));
    fds = std::max(fds, fd_count(pid));
  }
};

// A thread that samples `pids` every `every` into peak(phase, i), in the phase it is told
// (phase() moves it on; stop() or a phase past the last ends it). The peaks are read after stop().
class PeakSampler {
 public:
  PeakSampler(std::vector<pid_t> pids, int phases, std::chrono::milliseconds every)
      : pids_(std::move(pids)),
        peaks_(static_cast<size_t>(phases), std::vector<Peak>(pids_.size())),
        thread_([this, every] {
          for (int ph; (ph = phase_.load()) < static_cast<int>(peaks_.size());) {
            for (size_t i = 0; i < pids_.size(); ++i) peaks_[ph][i].sample(pids_[i]);
            std::this_thread::sleep_for(every);
          }
        }) {}
  ~PeakSampler() { stop(); }
  PeakSampler(const PeakSampler&) = delete;
  PeakSampler& operator=(const PeakSampler&) = delete;

  void phase(int p) { phase_ = p; }
  void stop() {
    phase_ = static_cast<int>(peaks_.size());
    if (thread_.joinable()) thread_.join();
  }
  const Peak& peak(int phase, size_t i) const { return peaks_[phase][i]; }

 private:
  std::vector<pid_t> pids_;
  std::vector<std::vector<Peak>> peaks_;  // [phase][process]
  std::atomic<int> phase_{0};
  std::thread thread_;  // last: it starts once the rest is made
};

}  // namespace kvtier_test
