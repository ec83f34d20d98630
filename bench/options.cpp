// kvtier-bench's command line: the options, their defaults and --help.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

const char* kUsage =
    R"(kvtier-bench: old versus zero-copy interface, tier transfer tables, machine limits.

usage: kvtier-bench [all|compare|transfer|file|limits] [options]
  all        (default) limits, compare, transfer and file
  compare    engine-shaped host pools: old path (gather + batch_set, batch_get + scatter)
             against batch_set_v1/batch_get_v1 (fragments and token slots)
  transfer   blocks of 1K..256K, batch of 1538 blocks, 1 and N threads, GB/s per tier
  file       the file tier: v1 write (until durable), cold read (page cache dropped) and
             warm read, aligned and unaligned pools, next to fio and a raw io_uring loop;
             and a second process reading the first one's pages and batch_exists of 128 keys
  limits     memcpy bandwidth of the same sizes (the memory tier's limit)

options:
  --tiers LIST        tiers for compare and transfer, each on its own (default: compare on
                      memory, transfer on memory, file, remote, remote3, rdma, p2p and
                      p2p_rdma; the bench starts kvtier-servers on loopback: "remote" is the
                      remote tier over TCP, "remote3" the same over three servers (with it,
                      the placement table: keys moved by a join and a leave), "rdma" over
                      RDMA, skipped with a note on hosts without a device; "p2p" is endpoint
                      to endpoint with no store, over TCP, and "p2p_rdma" over RDMA)
  --layouts LIST      mha_layer_first,mha_page_first,mha_page_first_direct,
                      mla_layer_first,mla_page_first (default: all but page_first_direct,
                      which places pages at the same offsets as page_first)
  --batches LIST      keys per batch for compare (default 10,50,100; add 512 for the
                      full table, about 4 GB of pool per MHA batch)
  --blocks LIST       block sizes for transfer (default 1K,2K,...,256K)
  --transfer-batch N  blocks per batch for transfer (default 1538)
  --threads LIST      thread counts for transfer (default 1; e.g. 1,2)
  --repeats N         timed runs per figure; the median is reported (default 3)
  --warmup N          untimed runs first (default 1), and more until 0.2 s have passed
                      (none with 0)
  --pages LIST        page sizes for the file table (default 64K,256K,1M,8M)
  --file-batches LIST keys per batch for the file table (default 1,16,64)
  --file-max-bytes N  skip file-table batches larger than this (default 256M)
  --queue-depth N     KVTIER_FILE_QUEUE_DEPTH, also fio's and the raw loop's (default 32)
  --dir DIR           folder for the file tier and fio (default: a new one in /var/tmp)
  --aligned           put the host pool on a 4 KiB boundary (default: 64 bytes past one,
                      as engines' pinned pools often are)
  --huge-pages        back the file table's host pool with transparent huge pages
                      (madvise): pages that are contiguous in physical memory reach the
                      disk in larger requests (a request holds a bounded number of segments)
  --json FILE         also write every figure as JSON ('-' for stdout)
  --plot FILE.png     draw GB/s against block size (needs python3-matplotlib)
  --quick             small sizes, for a smoke run
)";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

size_t parse_size(const std::string& s) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  std::string unit(end);
  if (unit == "K" || unit == "k" || unit == "KiB")
    v <<= 10;
  else if (unit == "M" || unit == "MiB")
    v <<= 20;
  else if (unit == "G" || unit == "GiB")
    v <<= 30;
  else if (!unit.empty())
    throw std::runtime_error("bad size: " + s);
  if (v == 0) throw std::runtime_error("bad size: " + s);
  return v;
}

std::vector<size_t> sizes(const std::string& s) {
  std::vector<size_t> out;
  for (const auto& item : split(s)) out.push_back(parse_size(item));
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "all" || a == "compare" || a == "transfer" || a == "limits" || a == "file") {
      o.mode = a;
    } else if (a == "--tiers") {
      o.tiers = o.transfer_tiers = split(next());
    } else if (a == "--layouts") {
      o.layouts = split(next());
    } else if (a == "--batches") {
      o.batches = sizes(next());
    } else if (a == "--blocks") {
      o.blocks = sizes(next());
    } else if (a == "--transfer-batch") {
      o.transfer_batch = parse_size(next());
    } else if (a == "--threads") {
      o.threads = sizes(next());
    } else if (a == "--repeats") {
      o.repeats = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--warmup") {
      o.warmup = std::max(0, std::atoi(next().c_str()));
    } else if (a == "--pages") {
      o.pages = sizes(next());
    } else if (a == "--file-batches") {
      o.file_batches = sizes(next());
    } else if (a == "--file-max-bytes") {
      o.file_max_bytes = parse_size(next());
    } else if (a == "--queue-depth") {
      o.queue_depth = static_cast<unsigned>(parse_size(next()));
    } else if (a == "--dir") {
      o.dir = next();
    } else if (a == "--aligned") {
      o.aligned = true;
    } else if (a == "--huge-pages") {
      o.huge_pages = true;
    } else if (a == "--json") {
      o.json = next();
    } else if (a == "--plot") {
      o.plot = next();
    } else if (a == "--quick") {
      o.batches = {4, 16};
      o.blocks = {4 << 10, 64 << 10};
      o.transfer_batch = 64;
      o.repeats = 2;
      o.pages = {256 << 10};
      o.file_batches = {1, 16};
    } else {
      throw std::runtime_error("unknown argument '" + a + "' (see --help)");
    }
  }
  return o;
}

}  // namespace kvtier_bench
