#include "src/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <memory>

namespace kvtier {

spdlog::logger& log() {
  // Not registered in spdlog's global registry, so an engine's own spdlog use is untouched.
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>("kvtier",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [kvtier] [%l] %v");
    l->set_level(spdlog::level::warn);
    return l;
  }();
  return *logger;
}

bool valid_log_level(const std::string& level) {
  return level == "off" || spdlog::level::from_str(level) != spdlog::level::off;
}

void set_log_level(const std::string& level) {
  log().set_level(spdlog::level::from_str(level));
}

void LimitedWarnings::warn(const std::string& msg) {
  std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now >= window_) {
    if (suppressed_) log().warn("{} more such lines in the last 10 s were not logged", suppressed_);
    window_ = now + std::chrono::seconds(10);
    lines_ = 0;
    suppressed_ = 0;
  }
  if (lines_ < 10) {
    ++lines_;
    log().warn("{}", msg);
  } else {
    ++suppressed_;
  }
}

}  // namespace kvtier
