// The file tier's io_uring driven the way the tier drives it (run_ios), with no tier around
// it: every I/O completes exactly once with its whole count, short transfers and -EAGAIN are
// resubmitted by the ring, and an I/O that is never queued reports its own error.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "tests/common/test_util.h"
#include "backends/file/uring.h"

namespace {

using kvtier::Io;
using kvtier::IoFaults;
using kvtier::Ring;

// Every second completion is cut to a few bytes, and every third reported as -EAGAIN first:
// what a real device does now and then, all the time.
class Unlucky final : public IoFaults {
 public:
  int on_complete(bool, int res) override {
    ++seen;
    if (res <= 0) return res;
    if (seen % 3 == 0) return -EAGAIN;
    if (seen % 2 == 0 && res > 100) return 100;
    return res;
  }
  int seen = 0;
};

std::string temp_file() {
  std::string path = kvtier_test::test_dir() + "/ring-XXXXXX";
  const int fd = mkstemp(path.data());
  EXPECT_GE(fd, 0);
  close(fd);
  return path;
}

void round_trip(IoFaults* faults, unsigned depth) {
  std::unique_ptr<Ring> ring;
  ASSERT_TRUE(Ring::create(depth, faults, &ring).is_ok());
  const std::string path = temp_file();
  const int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  constexpr size_t kPages = 37, kPage = 12345;  // more pages than the depth, odd sizes
  std::vector<std::vector<unsigned char>> pages, back(kPages, std::vector<unsigned char>(kPage));
  for (size_t i = 0; i < kPages; ++i) pages.push_back(kvtier_test::random_bytes(kPage));
  std::vector<int> results(kPages + 1, 1);
  // Two iovecs a page, and one I/O (the last) that is never queued.
  auto run = [&](bool write) {
    std::fill(results.begin(), results.end(), 1);
    kvtier::run_ios(
        *ring, kPages + 1,
        [&](size_t i, Io& io) {
          if (i == kPages) return -ENOSPC;  // io.fd stays -1
          io.fd = fd;
          io.write = write;
          io.offset = i * kPage;
          unsigned char* p = write ? pages[i].data() : back[i].data();
          io.iov = {{p, 1000}, {p + 1000, kPage - 1000}};
          return -EIO;
        },
        [&](size_t i, int res) {
          EXPECT_EQ(results[i], 1) << "I/O " << i << " completed twice";
          results[i] = res;
        });
    for (size_t i = 0; i < kPages; ++i) EXPECT_EQ(results[i], static_cast<int>(kPage)) << i;
    EXPECT_EQ(results[kPages], -ENOSPC);
    EXPECT_EQ(ring->in_flight(), 0u);
  };
  run(true);
  run(false);
  for (size_t i = 0; i < kPages; ++i) EXPECT_EQ(back[i], pages[i]) << "page " << i;
  close(fd);
  unlink(path.c_str());
}

TEST(Ring, EveryIoCompletesOnceWhole) { round_trip(nullptr, 8); }

TEST(Ring, ShortTransfersAndEagainAreResubmitted) {
  Unlucky faults;
  round_trip(&faults, 4);
  EXPECT_GT(faults.seen, 2 * 37);  // the faults fired, and the ring went on
}

}  // namespace
