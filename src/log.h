// The library's one spdlog logger ("kvtier", to stderr). Its level is KVTIER_LOG_LEVEL.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <mutex>
#include <string>

namespace kvtier {

spdlog::logger& log();
bool valid_log_level(const std::string& level);
void set_log_level(const std::string& level);

// Warnings a peer can cause at will (a flood of bad connections): at most 10 lines per 10 s,
// then one line with the count of those not logged. Thread-safe.
class LimitedWarnings {
 public:
  void warn(const std::string& msg);

 private:
  std::mutex mu_;
  std::chrono::steady_clock::time_point window_{};
  int lines_ = 0;
  long suppressed_ = 0;
};

}  // namespace kvtier
