// kvtier-server's Prometheus endpoint: scraped over HTTP and parsed after a known workload, and
// the library's per-tier stats that carry the same counters.
#include <gtest/gtest.h>
#include <httplib.h>
#include <kvtier/kvtier.h>

#include <fcntl.h>
#include <sys/socket.h>

#include <chrono>
#include <map>
#include <sstream>
#include <thread>

#include "tests/cluster/etcd_process.h"
#include "tests/common/loopback.h"
#include "tests/common/sampling.h"
#include "tests/common/server_process.h"
#include "tests/common/test_util.h"

namespace {

using kvtier_test::connect_nowait;
using kvtier_test::proc_status;
using kvtier_test::ServerProcess;

// Prometheus text format: "name{labels} value" per sample; # lines are HELP and TYPE.
std::map<std::string, double> parse_samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << line;
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

TEST(ServerMetrics, ScrapedCountersMatchTheWorkload) {
  const uint16_t port = kvtier_test::free_port();
  ServerProcess srv("64MiB", "", 0, {"--metrics-port", std::to_string(port)});
  kvtier_store_t* s = nullptr;
  ASSERT_EQ(kvtier_open(("tiers=remote;remote_servers=" + srv.address()).c_str(), &s), KVTIER_OK)
      << kvtier_last_error();
  constexpr size_t kN = 20, kSize = 8192;
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> vals;
  for (size_t i = 0; i < kN + 5; ++i) {
    keys.push_back(kvtier_test::make_key("m", i));
    vals.push_back(kvtier_test::random_bytes(kSize));
  }
  auto ck = kvtier_test::c_keys(keys);
  std::vector<const void*> ptrs;
  for (auto& v : vals) ptrs.push_back(v.data());
  std::vector<size_t> sizes(kN + 5, kSize);
  std::vector<int> res(kN);
  ASSERT_EQ(kvtier_batch_set(s, ck.data(), kN, ptrs.data(), sizes.data(), res.data()), KVTIER_OK);
  for (int r : res) ASSERT_EQ(r, KVTIER_OK);
  // kN hits and 5 misses, read back byte for byte.
  std::vector<std::vector<unsigned char>> out(kN + 5, std::vector<unsigned char>(kSize));
  std::vector<void*> bufs;
  for (auto& o : out) bufs.push_back(o.data());
  std::vector<int64_t> got(kN + 5);
  ASSERT_EQ(kvtier_batch_get(s, ck.data(), kN + 5, bufs.data(), sizes.data(), got.data()),
            KVTIER_OK);
  for (size_t i = 0; i < kN; ++i) {
    ASSERT_EQ(got[i], static_cast<int64_t>(kSize));
    EXPECT_TRUE(out[i] == vals[i]) << "key " << i;
  }
  for (size_t i = kN; i < kN + 5; ++i) EXPECT_EQ(got[i], KVTIER_ERR_NOT_FOUND);

  // A request's latency is recorded once its reply is out, which can be a moment after the
  // client has read it (and the PUT and GET may have gone over connections that other event
  // loops serve): scrape until both show there (at most 10 s), then check it all.
  httplib::Client http("127.0.0.1", port);  // the endpoint binds loopback
  std::map<std::string, double> m;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto seen = [&](const char* op) {
    return m[std::string("kvtier_server_request_seconds_count{op=\"") + op + "\"}"] >= 1;
  };
  auto scrape = [&] {
    auto r = http.Get("/metrics");
    m = r ? parse_samples(r->body) : std::map<std::string, double>{};
    return r;
  };
  auto reply = scrape();
  while (!(seen("put") && seen("get")) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    reply = scrape();
  }
  ASSERT_TRUE(reply) << "no answer from the metrics endpoint";
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(reply->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0), 0u);
  EXPECT_EQ(m["kvtier_server_pages"], kN);
  EXPECT_GE(m["kvtier_server_bytes"], kN * kSize);
  EXPECT_EQ(m["kvtier_server_capacity_bytes"], 64 << 20);
  EXPECT_EQ(m["kvtier_server_hits_total"], kN);
  EXPECT_EQ(m["kvtier_server_misses_total"], 5);
  EXPECT_EQ(m["kvtier_server_evictions_total"], 0);
  EXPECT_EQ(m["kvtier_server_errors_total"], 0);
  EXPECT_GE(m["kvtier_server_connections"], 1);
  EXPECT_EQ(m.count("kvtier_server_leases"), 1u);
  for (const char* op : {"put", "get"}) {
    const std::string h = std::string("kvtier_server_request_seconds");
    const std::string label = std::string("op=\"") + op + "\"";
    const double count = m[h + "_count{" + label + "}"];
    EXPECT_GE(count, 1) << op;
    EXPECT_EQ(m[h + "_bucket{" + label + ",le=\"+Inf\"}"], count) << op;
    EXPECT_GT(m[h + "_sum{" + label + "}"], 0) << op;
    double prev = 0;  // buckets are cumulative
    for (double le : {50e-6, 1e-3, 10e-3, 1.0, 10.0}) {
      std::ostringstream key;
      key << h << "_bucket{" << label << ",le=\"" << le << "\"}";
      ASSERT_TRUE(m.count(key.str())) << key.str();
      EXPECT_GE(m[key.str()], prev) << key.str();
      prev = m[key.str()];
    }
  }
  // The library reports the same counters for its remote tier.
  char* json = nullptr;
  ASSERT_EQ(kvtier_stats_json(s, &json), KVTIER_OK);
  const std::string js = json;
  kvtier_free(json);
  for (const char* field : {"\"keys\":20", "\"capacity\":67108864", "\"servers\":1",
                            "\"server_hits\":20", "\"server_misses\":5", "\"leases\":0"})
    EXPECT_NE(js.find(field), std::string::npos) << field << " not in " << js;
  EXPECT_EQ(js.find("\"connections\":0"), std::string::npos) << js;
  kvtier_close(s);
}

// Finding 26.5: the metrics port cost the data path memory, time and fds. Now a body is refused
// unread, silent connections delay a scrape by about a second, and a flood of connections to it
// leaves the data path its fds (the server runs with 256).
TEST(ServerMetrics, EndpointCostsTheDataPathNothing) {
  const uint16_t port = kvtier_test::free_port();
  ServerProcess srv("64MiB", "", 0, {"--metrics-port", std::to_string(port)}, "", 256);
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(40, 0);
  // The endpoint starts just after the server says it listens.
  const auto up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!http.Get("/metrics") && std::chrono::steady_clock::now() < up)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(http.Get("/metrics"));

  // One POST of 256 MiB.
  const uint64_t hwm = proc_status(srv.pid(), "VmHWM");
  {
    const int fd = connect_nowait(port);
    fcntl(fd, F_SETFL, 0);
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const std::string head =
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    send(fd, head.data(), head.size(), MSG_NOSIGNAL);
    const std::vector<char> chunk(1 << 20, 'x');
    for (int i = 0; i < 256; ++i)
      if (send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) break;
    close(fd);
  }
  EXPECT_LT(proc_status(srv.pid(), "VmHWM"), hwm + (32 << 10)) << "KiB: a body was kept";

  // Six silent connections, then a scrape.
  std::vector<int> silent;
  for (int i = 0; i < 6; ++i) silent.push_back(connect_nowait(port));
  auto t0 = std::chrono::steady_clock::now();
  auto r = http.Get("/metrics");
  EXPECT_TRUE(r && r->status == 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  for (int fd : silent) close(fd);

  // Connections to the metrics port past the server's fd limit: data clients still served.
  std::vector<int> flood;
  for (int i = 0; i < 300; ++i) flood.push_back(connect_nowait(port));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  kvtier_store_t* s = nullptr;
  ASSERT_EQ(kvtier_open(("tiers=remote;remote_servers=" + srv.address()).c_str(), &s), KVTIER_OK)
      << kvtier_last_error();
  constexpr size_t kN = 8, kSize = 8192;
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> vals, out(kN, std::vector<unsigned char>(kSize));
  std::vector<const void*> ptrs;
  std::vector<void*> bufs;
  for (size_t i = 0; i < kN; ++i) {
    keys.push_back(kvtier_test::make_key("flood", i));
    vals.push_back(kvtier_test::random_bytes(kSize));
    ptrs.push_back(vals[i].data());
    bufs.push_back(out[i].data());
  }
  auto ck = kvtier_test::c_keys(keys);
  std::vector<size_t> sizes(kN, kSize);
  std::vector<int> res(kN);
  std::vector<int64_t> got(kN);
  EXPECT_EQ(kvtier_batch_set(s, ck.data(), kN, ptrs.data(), sizes.data(), res.data()), KVTIER_OK);
  EXPECT_EQ(kvtier_batch_get(s, ck.data(), kN, bufs.data(), sizes.data(), got.data()), KVTIER_OK);
  for (size_t i = 0; i < kN; ++i) {
    EXPECT_EQ(res[i], KVTIER_OK) << "key " << i;
    EXPECT_EQ(got[i], static_cast<int64_t>(kSize)) << "key " << i;
    EXPECT_TRUE(out[i] == vals[i]) << "key " << i;
  }
  kvtier_close(s);
  for (int fd : flood) close(fd);
  t0 = std::chrono::steady_clock::now();
  r = http.Get("/metrics");  // and the endpoint is back once they are gone
  EXPECT_TRUE(r && r->status == 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(ServerMetrics, BadPortIsAUsageError) {
  for (const char* bad : {"0", "65536", "x"}) {
    const std::string cmd = std::string(KVTIER_SERVER_BIN) + " --metrics-port " + bad +
                            " --listen 127.0.0.1:0 2>/dev/null";
    EXPECT_EQ(WEXITSTATUS(system(cmd.c_str())), 2) << bad;
  }
}

}  // namespace
