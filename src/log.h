// The library's one spdlog logger ("kvtier", to stderr). Its level is KVTIER_LOG_LEVEL.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace kvtier {

spdlog::logger& log();
bool valid_log_level(const std::string& level);
void set_log_level(const std::string& level);

}  // namespace kvtier
