// p2p: prefill -> decode, endpoint to endpoint, no store.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

// ---- prefill -> decode, endpoint to endpoint -----------------------------------------------

namespace {

// MLA page_first, one layer, one token per page: each of the n pages is one block.
kvtier_pool_layout_t block_pool(std::byte* base, size_t block, size_t n) {
  kvtier_pool_layout_t l = {};
  l.struct_size = sizeof l;
  l.base = base;
  l.pool_kind = KVTIER_POOL_MLA;
  l.layout = KVTIER_LAYOUT_PAGE_FIRST;
  l.page_size = 1;
  l.layer_num = 1;
  l.kv_cache_dim = static_cast<uint32_t>(block / 2);
  l.dtype_size = 2;
  l.pool_tokens = n;
  l.dtype_name = "bfloat16";
  return l;
}

std::string endpoint_config(const std::string& tier) {
  std::string cfg =
      std::string("p2p_token=bench;p2p_transport=") + (tier == "p2p_rdma" ? "rdma" : "tcp");
  // RDMA cannot be served on loopback: KVTIER_TEST_RDMA_ADDR names this host's NIC.
  if (const char* host = std::getenv("KVTIER_TEST_RDMA_ADDR"); host && *host)
    cfg += std::string(";p2p_listen=") + host + ":0";
  return cfg;
}

// The prefill endpoint (ep[0]) and the decode one (ep[1]); false, with a note, where the
// transport is unsupported here (no RDMA device or no RDMA in this build).
bool open_endpoints(const std::string& tier, const std::string& cfg, std::byte* const bases[2],
                    size_t block, size_t n, kvtier_endpoint_t* ep[2]) {
  for (int side = 0; side < 2; ++side) {
    const kvtier_pool_layout_t l = block_pool(bases[side], block, n);
    const int rc = kvtier_endpoint_open(cfg.c_str(), &l, &ep[side]);
    if (rc == KVTIER_ERR_UNSUPPORTED) {
      g_notes.push_back("transfer " + tier + ": skipped: " + kvtier_last_error());
      kvtier_endpoint_close(ep[0]);
      return false;
    }
    check_rc(rc, "endpoint_open");
  }
  return true;
}

// n blocks written to the decode pool and read back over one peer connection (the endpoints
// are closed after), each figure a row next to the stream limit.
void p2p_block(const Options& o, const std::string& tier, kvtier_endpoint_t* ep[2],
               std::byte* const bases[2], size_t block, size_t n) {
  std::vector<int64_t> pages(n);
  for (size_t i = 0; i < n; ++i) pages[i] = static_cast<int64_t>(i);
  std::vector<int> res(n);
  char addr[128];
  check_rc(kvtier_endpoint_address(ep[1], addr, sizeof addr), "endpoint_address");
  kvtier_peer_t* peer = nullptr;
  check_rc(kvtier_endpoint_connect(ep[0], addr, &peer), "endpoint_connect");
  auto all_ok = [&](const char* what) {
    for (int r : res)
      if (r != KVTIER_OK) die(std::string(what) + ": " + kvtier_error_name(r));
  };
  const size_t bytes = n * block;
  Figure wr = measure(
      o, bytes, [&] { stream_fill(bases[1], std::byte{0x5A}, bytes); },
      [&] { kvtier_peer_write_pages(peer, pages.data(), pages.data(), n, -1, res.data()); },
      [&] {
        all_ok("write_pages");
        if (std::memcmp(bases[0], bases[1], bytes) != 0) die("p2p write: bytes differ");
      });
  Figure rd = measure(
      o, bytes, [&] { stream_fill(bases[0], std::byte{0xA5}, bytes); },
      [&] { kvtier_peer_read_pages(peer, pages.data(), pages.data(), n, -1, res.data()); },
      [&] {
        all_ok("read_pages");
        if (std::memcmp(bases[0], bases[1], bytes) != 0) die("p2p read: bytes differ");
      });
  kvtier_peer_close(peer);
  kvtier_endpoint_close(ep[0]);
  kvtier_endpoint_close(ep[1]);
  std::string limit_name;
  const double lim = best_stream_gbps(o, bytes, &limit_name);
  for (auto [op, fig] : {std::pair{"write", wr}, std::pair{"read", rd}})
    push_transfer(tier, "p2p", op, n, block, 1, fig, lim, limit_name, "bytes");
}

}  // namespace

// Two endpoints in this process, each with a pool of n pages of `block` bytes (MLA page_first,
// one layer, one token per page), one peer connection between them over loopback: write_pages
// moves the prefill pool's pages into the decode pool, read_pages pulls them back. The limit is
// one loopback TCP stream carrying the same bytes, as for the remote tier.
void run_p2p(const Options& o, const std::string& tier) {
  const size_t max_block = *std::max_element(o.blocks.begin(), o.blocks.end());
  const size_t n = o.transfer_batch;
  Buffer prefill(n * max_block + 4096), decode(n * max_block + 4096);
  progress("transfer " + tier + ": filling buffers");
  prefill.randomize(7);
  decode.randomize(8);
  const std::string cfg = endpoint_config(tier);
  for (size_t block : o.blocks) {
    progress("transfer " + tier + " block " + std::to_string(block));
    std::byte* bases[2] = {prefill.base + (o.aligned ? 0 : 64), decode.base + (o.aligned ? 0 : 64)};
    kvtier_endpoint_t* ep[2] = {nullptr, nullptr};
    if (!open_endpoints(tier, cfg, bases, block, n, ep)) return;
    p2p_block(o, tier, ep, bases, block, n);
  }
}

}  // namespace kvtier_bench
