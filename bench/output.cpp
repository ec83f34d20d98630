// The rows every subcommand adds, printed as tables and written as JSON.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

std::vector<Row> g_rows;

// ---- output -------------------------------------------------------------------------------

namespace {

// A limit's figure, or "-" where the limit was not measured (its tool missing or failed).
std::string or_dash(double v, const char* format = "%.2f") {
  if (v <= 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, format, v);
  return b;
}

// a / b, or 0 (printed "-") where the limit b is missing.
double ratio(double a, double b) {
  return b > 0 ? a / b : 0.0;
}

// A figure in JSON: null where it was not measured.
std::string json_or_null(double v) {
  if (v <= 0) return "null";
  std::ostringstream o;
  o << v;
  return o.str();
}

// A note as a JSON string (notes quote kvtier's messages).
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string human(size_t bytes) {
  char b[32];
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
    std::snprintf(b, sizeof b, "%zuM", bytes >> 20);
  else if (bytes >= (1u << 20))
    std::snprintf(b, sizeof b, "%.1fM", bytes / 1048576.0);
  else
    std::snprintf(b, sizeof b, "%zuK", bytes >> 10);
  return b;
}

namespace {

void print_compare_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "compare") continue;
    if (!header) {
      std::printf(
          "\ncompare: old interface (gather + batch_set / batch_get + scatter) versus "
          "zero-copy v1; page = one key; median of the timed runs\n");
      std::printf("%-7s %-22s %5s %-22s %-5s %9s %7s %7s %8s %7s %7s %7s %-5s\n", "tier", "pool",
                  "batch", "path", "op", "ms/batch", "GB/s", "min", "CPUs/GB", "x old", "memcpy",
                  "ratio", "check");
      header = true;
    }
    std::printf("%-7s %-22s %5zu %-22s %-5s %9.2f %7.2f %7.2f %8.3f %7.2f %7.2f %7.2f %-5s\n",
                r.tier.c_str(), r.shape.c_str(), r.batch, r.path.c_str(), r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.gbps * r.fig.median_s / r.fig.max_s,
                r.fig.cpu_per_gb, r.speedup, r.limit_gbps, r.fig.gbps / r.limit_gbps,
                r.verified.c_str());
  }
}

void print_transfer_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "transfer") continue;
    if (!header) {
      std::printf(
          "\ntransfer: v1 batches of %zu blocks, one key per block; limit: the best the machine "
          "does with the same bytes (memory: memcpy or a streaming copy; remote, p2p: one "
          "loopback TCP stream); memcpy: the same blocks copied with memcpy\n",
          r.batch);
      std::printf("%-8s %6s %7s %-5s %9s %7s %8s %-15s %7s %7s %7s %-5s\n", "tier", "block",
                  "threads", "op", "ms/batch", "GB/s", "CPUs/GB", "limit", "GB/s", "ratio",
                  "memcpy", "check");
      header = true;
    }
    std::printf("%-8s %6s %7zu %-5s %9.2f %7.2f %8.3f %-15s %7s %7s %7s %-5s\n", r.tier.c_str(),
                human(r.block).c_str(), r.threads, r.op.c_str(), r.fig.median_s * 1e3, r.fig.gbps,
                r.fig.cpu_per_gb, r.limit_name.c_str(), or_dash(r.limit_gbps).c_str(),
                or_dash(ratio(r.fig.gbps, r.limit_gbps)).c_str(), or_dash(r.limit2_gbps).c_str(),
                r.verified.c_str());
  }
}

void print_placement_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "placement") continue;
    if (!header) {
      std::printf(
          "\nplacement: %zu keys on real servers, rendezvous hashing; moved = keys whose "
          "server changed, needless = moved between servers that both stayed\n",
          r.batch);
      std::printf("%-11s %7s %7s %8s\n", "change", "moved", "target", "needless");
      header = true;
    }
    std::printf("%-11s %7.4f %7.4f %8.4f\n", r.op.c_str(), r.fig.gbps, r.limit_gbps, r.speedup);
  }
}

void print_file_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "file") continue;
    if (!header) {
      std::printf(
          "\nfile tier: v1, two fragments per page, O_DIRECT, writes durable "
          "(fdatasync) before they count; limits: fio (io_uring, direct=1, same block "
          "size, queue depth and batches, each written batch fdatasynced) in rounds with "
          "kvtier's (a fio job, then a kvtier run; read warm: the cold rounds' fio), ratio: the "
          "median of the rounds' ratios; raw: a raw io_uring loop over the pool's own pages "
          "(one O_DIRECT I/O a page, same folder), in the same rounds; fio CPU: "
          "fio's own CPU seconds per GB, xCPU: kvtier's over it (kvtier's includes the "
          "XXH3 checksum of every page)\n");
      std::printf("%5s %-9s %5s %-9s %9s %7s %8s %7s %6s %8s %6s %7s %6s %-5s\n", "page", "pool",
                  "batch", "op", "ms/batch", "GB/s", "CPUs/GB", "fio", "ratio", "fio CPU", "xCPU",
                  "raw", "ratio", "check");
      header = true;
    }
    std::printf("%5s %-9s %5zu %-9s %9.2f %7.2f %8.3f %7s %6s %8s %6s %7s %6s %-5s\n",
                human(r.block).c_str(), r.shape.c_str(), r.batch, r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.cpu_per_gb, or_dash(r.limit_gbps).c_str(),
                or_dash(r.limit_ratio).c_str(), or_dash(r.limit_cpu_per_gb, "%.3f").c_str(),
                or_dash(ratio(r.fig.cpu_per_gb, r.limit_cpu_per_gb)).c_str(),
                or_dash(r.limit2_gbps).c_str(), or_dash(r.limit2_ratio).c_str(), r.verified.c_str());
  }
}

// The same rows side by side: the engine's unaligned pool against the aligned one, each with
// its fio and raw loop from alternating rounds.
void print_pools_side_by_side() {
  bool header = false;
  for (const Row& u : g_rows) {
    if (u.kind != "file" || u.shape != "unaligned") continue;
    const Row* a = nullptr;
    for (const Row& r : g_rows)
      if (r.kind == "file" && r.shape == "aligned" && r.block == u.block && r.batch == u.batch &&
          r.op == u.op)
        a = &r;
    if (!a) continue;
    if (!header) {
      std::printf(
          "\nfile tier, unaligned pool (64 B past 4 KiB) beside the aligned one, each against "
          "fio and against a raw io_uring loop over the same pool's pages, in alternating rounds "
          "(a fio job, a raw pass, then a kvtier run); GB/s: medians, ratios: the median of the "
          "rounds' ratios\n");
      std::printf("%5s %5s %-9s %9s %7s %6s %6s %9s %7s %6s %6s %9s\n", "page", "batch", "op",
                  "unaligned", "fio", "ratio", "/raw", "aligned", "fio", "ratio", "/raw",
                  "unal/al");
      header = true;
    }
    std::printf("%5s %5zu %-9s %9.2f %7s %6s %6s %9.2f %7s %6s %6s %9s\n", human(u.block).c_str(),
                u.batch, u.op.c_str(), u.fig.gbps, or_dash(u.limit_gbps).c_str(),
                or_dash(u.limit_ratio).c_str(), or_dash(u.limit2_ratio).c_str(), a->fig.gbps,
                or_dash(a->limit_gbps).c_str(), or_dash(a->limit_ratio).c_str(),
                or_dash(a->limit2_ratio).c_str(), or_dash(ratio(u.fig.gbps, a->fig.gbps)).c_str());
  }
}

// One line under the file table, ended only if it was started.
void print_checksum_line() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "checksum") continue;
    if (!header) {
      std::printf(
          "checksum: XXH3-64 of the same pages from warm memory, CPU seconds per GB (part of "
          "kvtier's CPUs/GB above; libxxhash's build, kvtier's own uses AVX2 where present):");
      header = true;
    }
    std::printf(" %s %.3f", human(r.block).c_str(), r.fig.cpu_per_gb);
  }
  if (header) std::printf("\n");
}

void print_compression_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "compression") continue;
    if (!header) {
      std::printf(
          "\nfile tier compression: 1 MiB KV-like bf16 pages, batch of 16, aligned "
          "pool; disk = bytes on disk per page byte (slots included)\n");
      std::printf("%-7s %-9s %9s %7s %8s %6s\n", "zstd", "op", "ms/batch", "GB/s", "CPUs/GB",
                  "disk");
      header = true;
    }
    std::printf("%-7s %-9s %9.2f %7.2f %8.3f %6.2f\n", r.path.c_str(), r.op.c_str(),
                r.fig.median_s * 1e3, r.fig.gbps, r.fig.cpu_per_gb, r.speedup);
  }
}

void print_shared_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "shared") continue;
    if (!header) {
      std::printf(
          "\nfile tier shared by two processes: v1, batch of %zu pages, pool 64 B past 4 KiB; "
          "the same pages read by the process that wrote them and by a second one, same run, "
          "median of %d; exists = batch_exists of %zu keys the first process wrote\n",
          kSharedBatch, static_cast<int>(r.threads), kExistsKeys);
      std::printf("%5s %-7s %-9s %9s %7s %8s %9s %6s %10s\n", "page", "reader", "op", "ms/batch",
                  "GB/s", "CPUs/GB", "own GB/s", "ratio", "exists us");
      header = true;
    }
    std::printf("%5s %-7s %-9s %9.2f %7.2f %8.3f %9.2f %6.2f %10.2f\n", human(r.block).c_str(),
                r.path.c_str(), r.op.c_str(), r.fig.median_s * 1e3, r.fig.gbps, r.fig.cpu_per_gb,
                r.limit_gbps, r.fig.gbps / r.limit_gbps, r.speedup);
  }
}

void print_reopen_lines() {
  for (const Row& r : g_rows)
    if (r.kind == "reopen")
      std::printf(
          "\nfile tier reopen: %zu pages of %s, page cache dropped: index rebuilt in "
          "%.3f s = %.0f pages/s (median)\n",
          r.batch, human(r.block).c_str(), r.fig.median_s, r.fig.gbps);
}

void print_limit_table() {
  bool header = false;
  for (const Row& r : g_rows) {
    if (r.kind != "limit") continue;
    if (!header) {
      std::printf(
          "\nlimits: the better of memcpy and a streaming copy of the same blocks, "
          "warm buffers\n");
      std::printf("%6s %7s %7s\n", "block", "threads", "GB/s");
      header = true;
    }
    std::printf("%6s %7zu %7.2f\n", human(r.block).c_str(), r.threads, r.limit_gbps);
  }
}

}  // namespace

// The notes (what was skipped and why) print under the transfer table.
void print_tables() {
  if (tty()) std::fprintf(stderr, "\r\033[K");
  print_compare_table();
  print_transfer_table();
  for (const std::string& note : g_notes) std::printf("%s\n", note.c_str());
  print_placement_table();
  print_file_table();
  print_checksum_line();
  print_pools_side_by_side();
  print_compression_table();
  print_shared_table();
  print_reopen_lines();
  print_limit_table();
}

void write_json(const std::string& path) {
  std::ostringstream o;
  o << "{\"kvtier\":\"" << kvtier_version_string() << "\",\"rows\":[";
  for (size_t i = 0; i < g_rows.size(); ++i) {
    const Row& r = g_rows[i];
    o << (i ? "," : "") << "{\"kind\":\"" << r.kind << "\",\"tier\":\"" << r.tier
      << "\",\"pool\":\"" << r.shape << "\",\"path\":\"" << r.path << "\",\"op\":\"" << r.op
      << "\",\"batch\":" << r.batch << ",\"block\":" << r.block << ",\"threads\":" << r.threads
      << ",\"median_ms\":" << r.fig.median_s * 1e3 << ",\"min_ms\":" << r.fig.min_s * 1e3
      << ",\"max_ms\":" << r.fig.max_s * 1e3 << ",\"gbps\":" << r.fig.gbps
      << ",\"cpu_s_per_gb\":" << r.fig.cpu_per_gb << ",\"speedup_vs_old\":" << r.speedup
      << ",\"limit\":\"" << r.limit_name << "\",\"limit_gbps\":" << json_or_null(r.limit_gbps)
      << ",\"limit_cpu_s_per_gb\":" << json_or_null(r.limit_cpu_per_gb)
      << ",\"limit_ratio\":" << json_or_null(r.limit_ratio) << ",\"limit2\":\"" << r.limit2_name
      << "\",\"limit2_gbps\":" << json_or_null(r.limit2_gbps)
      << ",\"limit2_ratio\":" << json_or_null(r.limit2_ratio) << ",\"verified\":\"" << r.verified
      << "\"}";
  }
  o << "],\"notes\":[";
  for (size_t i = 0; i < g_notes.size(); ++i) o << (i ? "," : "") << json_string(g_notes[i]);
  o << "]}\n";
  if (path == "-") {
    std::fputs(o.str().c_str(), stdout);
    return;
  }
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) die("cannot write " + path);
  std::fputs(o.str().c_str(), f);
  std::fclose(f);
}

}  // namespace kvtier_bench
