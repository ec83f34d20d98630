// A store opened from a config string, for the suites that open many.
#pragma once

#include <gtest/gtest.h>
#include <kvtier/kvtier.h>

#include <string>

namespace kvtier_test {

// The store, or null (and the test has failed) where the open failed.
inline kvtier_store_t* open_store(const std::string& config) {
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open(config.c_str(), &s), KVTIER_OK) << config << ": " << kvtier_last_error();
  return s;
}

}  // namespace kvtier_test
