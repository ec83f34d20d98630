#include "backends/remote/server/metrics.h"

#include <httplib.h>

#include <cinttypes>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace kvtier {

void LatencyHistogram::observe(uint64_t ns) {
  size_t b = 0;
  const double s = static_cast<double>(ns) * 1e-9;
  while (b < kBounds.size() && s > kBounds[b]) ++b;
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
}

void LatencyHistogram::render(const std::string& name, const char* op, std::string* out) const {
  char line[256];
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= kBounds.size(); ++b) {
    cumulative += buckets_[b].load(std::memory_order_relaxed);
    if (b < kBounds.size())
      std::snprintf(line, sizeof line, "%s_bucket{op=\"%s\",le=\"%g\"} %" PRIu64 "\n", name.c_str(),
                    op, kBounds[b], cumulative);
    else
      std::snprintf(line, sizeof line, "%s_bucket{op=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                    name.c_str(), op, cumulative);
    *out += line;
  }
  std::snprintf(line, sizeof line, "%s_sum{op=\"%s\"} %.9f\n%s_count{op=\"%s\"} %" PRIu64 "\n",
                name.c_str(), op, static_cast<double>(sum_ns_.load()) * 1e-9, name.c_str(), op,
                cumulative);
  *out += line;
}

void render_counters(const ServerCounters& c, std::string* out) {
  struct Metric {
    const char *name, *type, *help;
    uint64_t value;
  } const metrics[] = {
      {"pages", "gauge", "pages stored", c.pages},
      {"bytes", "gauge", "bytes of slots the stored pages take", c.bytes},
      {"capacity_bytes", "gauge", "bytes of the arena", c.capacity},
      {"hits_total", "counter", "keys found by GET and LOOKUP", c.hits},
      {"misses_total", "counter", "keys not found by GET and LOOKUP", c.misses},
      {"evictions_total", "counter", "pages evicted to make room", c.evictions},
      {"errors_total", "counter", "requests refused and commits that failed", c.errors},
      {"expired_leases_total", "counter", "ALLOC and LOOKUP leases that ran out", c.expired_leases},
      {"leases", "gauge", "ALLOC and LOOKUP leases held", c.leases},
      {"connections", "gauge", "authenticated client connections", c.connections},
  };
  char line[256];
  for (const Metric& m : metrics) {
    std::snprintf(
        line, sizeof line,
        "# HELP kvtier_server_%s %s\n# TYPE kvtier_server_%s %s\nkvtier_server_%s %" PRIu64 "\n",
        m.name, m.help, m.name, m.type, m.name, m.value);
    *out += line;
  }
}

namespace {

// cpp-httplib hands each accepted connection to its task queue. This one runs it on an idle
// worker, else on the accepting thread itself: while that thread is busy, newer connections
// wait in the kernel's listen queue instead of taking fds (and memory) here.
class BoundedQueue final : public httplib::TaskQueue {
 public:
  explicit BoundedQueue(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      if (idle_ > 0 && !job_) {
        --idle_;
        job_ = std::move(fn);
        cv_.notify_one();
        return;
      }
    }
    fn();
  }
  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work() {
    std::unique_lock lock(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(lock, [&] { return stop_ || job_; });
      if (!job_) return;
      std::function<void()> fn = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;  // handed to the next worker that wakes
  unsigned idle_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

MetricsEndpoint::MetricsEndpoint() = default;

MetricsEndpoint::~MetricsEndpoint() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

Status MetricsEndpoint::start(const std::string& host, uint16_t port,
                              std::function<std::string()> render) {
  http_ = std::make_unique<httplib::Server>();
  http_->new_task_queue = [] { return new BoundedQueue(kThreads); };
  // One request per connection, each read and written within a second of silence, no body.
  http_->set_keep_alive_max_count(1);
  http_->set_keep_alive_timeout(1);
  http_->set_read_timeout(1, 0);
  http_->set_write_timeout(1, 0);
  http_->set_payload_max_length(0);
  http_->set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" && req.body.empty() && !req.has_header("Content-Length") &&
        !req.has_header("Transfer-Encoding"))
      return httplib::Server::HandlerResponse::Unhandled;
    res.status = 405;
    res.set_header("Connection", "close");
    return httplib::Server::HandlerResponse::Handled;
  });
  http_->Get("/metrics",
             [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
               res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
             });
  if (!http_->bind_to_port(host, port))
    return {KVTIER_ERR_UNAVAILABLE,
            "metrics: cannot listen on " + host + ":" + std::to_string(port)};
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return {};
}

}  // namespace kvtier
