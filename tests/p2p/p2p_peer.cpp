// The other side of the transfer tests: a process with its own pool behind an endpoint.
// usage: kvtier_p2p_peer KIND ORDER P L H D C E S SEED CONFIG
// Prints "ADDR host:port", then answers stdin commands: "dump PATH" (writes the pool's bytes to
// PATH, answers "OK"), "quit".
#include <kvtier/kvtier.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/p2p/p2p_pool.h"

// The pool's bytes as they are now. The test asks for them only after it has seen the reply to
// its last transfer, so the serving thread's writes came first; but that order runs through
// the test process (socket, then pipe), which ThreadSanitizer cannot see, hence a copy it does
// not instrument (byte by byte: a memcpy would be intercepted).
__attribute__((no_sanitize("thread"), noinline)) static void snapshot(const unsigned char* pool,
                                                                      unsigned char* out,
                                                                      size_t n) {
  const volatile unsigned char* src = pool;
  for (size_t i = 0; i < n; ++i) out[i] = src[i];
}

int main(int argc, char** argv) {
  kvtier_test::P2pShape shape{};
  if (argc != 12 || !kvtier_test::P2pShape::parse(argv + 1, &shape)) {
    fprintf(stderr, "usage: kvtier_p2p_peer KIND ORDER P L H D C E S SEED CONFIG\n");
    return 2;
  }
  const uint64_t seed = strtoull(argv[10], nullptr, 10);
  std::vector<unsigned char> raw(shape.pool_bytes());
  unsigned char* pool = raw.data();
  kvtier_test::fill_pattern(pool, shape.pool_bytes(), seed);
  kvtier_pool_layout_t layout = shape.layout(pool);
  kvtier_endpoint_t* ep = nullptr;
  if (kvtier_endpoint_open(argv[11], &layout, &ep) != KVTIER_OK) {
    fprintf(stderr, "endpoint: %s\n", kvtier_last_error());
    return 1;
  }
  char addr[128];
  kvtier_endpoint_address(ep, addr, sizeof addr);
  printf("ADDR %s\n", addr);
  fflush(stdout);
  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = 0;
    if (strncmp(line, "dump ", 5) == 0) {
      std::vector<unsigned char> copy(shape.pool_bytes());
      snapshot(pool, copy.data(), copy.size());
      FILE* f = fopen(line + 5, "wb");
      bool ok = f && fwrite(copy.data(), 1, copy.size(), f) == copy.size();
      if (f) fclose(f);
      printf(ok ? "OK\n" : "ERR\n");
      fflush(stdout);
    } else if (strcmp(line, "quit") == 0) {
      break;
    }
  }
  kvtier_endpoint_close(ep);
  return 0;
}
