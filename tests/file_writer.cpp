// Helper process for the file-tier tests (a real second process, as a TP rank or a crashing
// engine would be):
//   file_writer write DIR SEED   writes, re-writes and removes pages forever (killed by the test)
//   file_writer hold DIR         opens the namespace and sleeps until killed
#include <kvtier/kvtier.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "file_pages.h"

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1];
  const std::string config = "tiers=file;file_dir=" + std::string(argv[2]);
  kvtier_store_t* s = nullptr;
  int rc = kvtier_open(config.c_str(), &s);
  if (rc != KVTIER_OK) {
    std::fprintf(stderr, "file_writer: open: %s\n", kvtier_last_error());
    return 3;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  if (mode == "hold") {
    for (;;) pause();
  }
  std::mt19937_64 g(std::strtoull(argv[3], nullptr, 10));
  std::vector<std::vector<unsigned char>> values(16);
  for (;;) {
    const size_t n = 1 + g() % 16;
    std::vector<std::string> keys;
    std::vector<const char*> ck;
    std::vector<const void*> ptrs;
    std::vector<size_t> sizes;
    for (size_t i = 0; i < n; ++i) {
      const size_t k = g() % kvtier_test::kUniverse;
      keys.push_back(kvtier_test::page_key(k));
      values[i] = kvtier_test::page_value(k);
    }
    for (size_t i = 0; i < n; ++i) {
      ck.push_back(keys[i].c_str());
      ptrs.push_back(values[i].data());
      sizes.push_back(values[i].size());
    }
    std::vector<int> res(n);
    if (g() % 8 == 0) {
      kvtier_batch_remove(s, ck.data(), n, res.data());
    } else {
      kvtier_batch_set(s, ck.data(), n, ptrs.data(), sizes.data(), res.data());
    }
  }
}
