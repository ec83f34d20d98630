// kvtier-server's metrics in Prometheus' text format (version 0.0.4), served over HTTP by
// cpp-httplib on --metrics-port: counters and gauges of the arena and its connections, and a
// latency histogram per request type.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "src/status.h"

namespace httplib {
class Server;
}

namespace kvtier {

// Request latency, from a request's header in to its reply's last byte out. Buckets are
// cumulative when rendered; observe() is lock-free (the event loops call it).
class LatencyHistogram {
 public:
  static constexpr std::array<double, 12> kBounds = {  // seconds
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0, 10.0};
  void observe(uint64_t ns);
  // Appends this histogram's _bucket, _sum and _count lines with label op="<op>".
  void render(const std::string& name, const char* op, std::string* out) const;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};  // the last one: +Inf
  std::atomic<uint64_t> count_{0}, sum_ns_{0};
};

// What the server reports at a scrape, read under its lock in one go.
struct ServerCounters {
  uint64_t pages = 0, bytes = 0, capacity = 0;  // now
  uint64_t hits = 0, misses = 0;                // GET and LOOKUP, per key, since start
  uint64_t evictions = 0, errors = 0, expired_leases = 0;
  uint64_t leases = 0;       // ALLOC and LOOKUP leases held now
  uint64_t connections = 0;  // authenticated connections now
};

// Appends the counters in text format (kvtier_server_* metrics, with HELP and TYPE lines).
void render_counters(const ServerCounters& c, std::string* out);

// A small HTTP server answering GET /metrics with render()'s text, on its own threads. Scrapes
// are small and rare, and the endpoint is a neighbour of the data path, so it costs little
// whatever a client does: a request with a body is refused unread, a connection serves one
// request and is cut after a second of silence, and at most kThreads connections are served
// while one more waits; the rest wait in the kernel's listen queue, holding none of the
// server's fds.
class MetricsEndpoint {
 public:
  static constexpr unsigned kThreads = 2;
  // fds it may hold at once: the listener, the connections served and the one waiting.
  static constexpr unsigned kMaxFds = kThreads + 2;
  MetricsEndpoint();
  ~MetricsEndpoint();
  // Binds host:port and serves until the destructor. UNAVAILABLE when it cannot bind.
  Status start(const std::string& host, uint16_t port, std::function<std::string()> render);

 private:
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
};

}  // namespace kvtier
