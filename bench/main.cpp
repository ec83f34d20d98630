// kvtier-bench: the main job. Opens stores through the C ABI only, as an engine would, and
// prints every figure next to the machine's limit measured in the same run.
//
//   kvtier-bench [all|compare|transfer|file|limits] [--tiers memory] [--repeats 5] [--json F] ...
//
// Each subcommand is its own file (bench.h lists them); this one runs the chosen ones in order.
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "bench/bench.h"

using namespace kvtier_bench;

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "shared-reader") return shared_reader(argc, argv);
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvtier-bench: %s\n", e.what());
    return 2;
  }
  std::printf(
      "kvtier-bench %s: %d timed runs (medians) after a warm-up of %d+ runs and 0.2 s, host "
      "pool %s\n",
      kvtier_version_string(), o.repeats, o.warmup,
      o.aligned ? "4 KiB-aligned" : "64 B past a 4 KiB boundary");
  std::fflush(stdout);
  g_dir = o.dir;
  if (g_dir.empty()) {
    char tmpl[] = "/var/tmp/kvtier-bench-XXXXXX";  // on disk, where /tmp may be a tmpfs
    if (!mkdtemp(tmpl)) die("cannot make a folder in /var/tmp");
    g_dir = tmpl;
  }
  if (o.mode == "all" || o.mode == "limits") run_limits(o);
  if (o.mode == "all" || o.mode == "compare")
    for (const auto& tier : o.tiers)
      for (const auto& shape : o.layouts) run_compare(o, tier, shape);
  if (o.mode == "all" || o.mode == "transfer")
    for (const auto& tier : o.transfer_tiers)
      tier.rfind("p2p", 0) == 0 ? run_p2p(o, tier) : run_transfer(o, tier);
  if ((o.mode == "all" || o.mode == "transfer") &&
      std::count(o.transfer_tiers.begin(), o.transfer_tiers.end(), "remote3"))
    run_placement();
  if (o.mode == "all" || o.mode == "file") {
    if (const std::string why = file_tier_missing(g_dir); !why.empty()) {
      g_notes.push_back("file: skipped: " + why);
    } else {
      run_file(o, g_dir);
      run_compression(o, g_dir);
      run_reopen(o, g_dir);
      run_shared(o, g_dir);
    }
  }
  if (o.dir.empty()) std::filesystem::remove_all(g_dir);
  print_tables();
  if (!o.json.empty()) write_json(o.json);
  if (!o.plot.empty()) {
    std::string tmp = o.json.empty() || o.json == "-" ? o.plot + ".json" : o.json;
    if (tmp != o.json) write_json(tmp);
    std::string cmd = "/usr/bin/python3 \"" + std::string(KVTIER_BENCH_DIR) + "/plot.py\" \"" +
                      tmp + "\" \"" + o.plot + "\"";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "kvtier-bench: plotting failed\n");
  }
  return 0;
}
