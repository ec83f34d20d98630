#include "shared_index.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "log.h"
#include "safe_dir.h"

namespace kvtier {

namespace {

constexpr uint32_t kIndexMagic = 0x53495856;  // "VXIS"
constexpr uint32_t kIndexVersion = 1;
constexpr uint64_t kPage = 4096;

uint64_t round_page(uint64_t n) {
  return (n + kPage - 1) & ~(kPage - 1);
}

constexpr uint64_t kNodeChunk = 1024;  // nodes get their disk blocks 96 KiB at a time

struct Geometry {
  uint64_t max_nodes, table_size;
  uint64_t table_off, nodes_off, bytes;
};

// Every slot holds at least 4 KiB of the capacity, so capacity / 4 KiB nodes always leave one
// free for a page that fits; a chain holds two nodes at most on average.
Geometry geometry(uint64_t capacity, uint64_t max_nodes = 0, uint64_t table_size = 0) {
  Geometry g{};
  g.max_nodes = max_nodes ? max_nodes : std::min<uint64_t>(capacity / kPage + 1024, kNil - 1);
  g.table_size = table_size;
  if (!g.table_size)
    for (g.table_size = 1024; g.table_size < g.max_nodes / 2;) g.table_size *= 2;
  g.table_off = round_page(sizeof(IndexHeader));
  g.nodes_off = g.table_off + round_page(g.table_size * sizeof(uint32_t));
  g.bytes = g.nodes_off + round_page(g.max_nodes * sizeof(Node));
  return g;
}

}  // namespace

uint64_t process_start(int32_t pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno == ESRCH)) return 0;
  char path[32], stat[512] = {};
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  const ssize_t n = ::read(fd, stat, sizeof stat - 1);
  ::close(fd);
  // "pid (comm) state ppid ...": the state is the first field after the name, the start time
  // the 20th; a zombie (dead, not yet reaped by its parent) holds nothing any more.
  const char* p = n > 0 ? std::strrchr(stat, ')') : nullptr;
  if (!p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X') return 0;
  for (int field = 0; field < 20 && p; ++field) p = std::strchr(p + 1, ' ');
  return p ? std::strtoull(p + 1, nullptr, 10) : 0;
}

SharedIndex::~SharedIndex() {
  if (map_) ::munmap(map_, map_len_);
  if (users_fd_ >= 0) ::close(users_fd_);  // drops the shared flock
  if (fd_ >= 0) ::close(fd_);
}

Status SharedIndex::open(int dir_fd, const std::string& dir, uint64_t capacity, bool* fresh,
                         std::unique_ptr<SharedIndex>* out) {
  std::unique_ptr<SharedIndex> ix(new SharedIndex());
  auto fail = [&](const std::string& what) {
    return Status{KVTIER_ERR_IO, what + " " + dir + "/INDEX: " + std::strerror(errno)};
  };
  ix->fd_ = open_private_file(dir_fd, "INDEX", O_RDWR);
  if (ix->fd_ < 0) return fail("cannot open");
  ix->users_fd_ = open_private_file(dir_fd, "LOCK", O_RDWR);
  if (ix->users_fd_ < 0) return fail("cannot open LOCK beside");
  // Opens one at a time: the first one (re)makes the index while the others wait here.
  if (::flock(ix->fd_, LOCK_EX) != 0) return fail("cannot lock");
  *fresh = ::flock(ix->users_fd_, LOCK_EX | LOCK_NB) == 0;
  if (!*fresh && ::flock(ix->users_fd_, LOCK_SH) != 0) return fail("cannot share");
  Geometry g{};
  if (*fresh) {
    // No process has the namespace open: what the file holds may be stale (a power loss, a
    // crash holding the lock), so it is made anew and filled from the records.
    // The file is sparse past the header and the chains' heads: the nodes get their blocks as
    // they are handed out (new_node()), so a touch of the mapping never meets a full disk.
    g = geometry(capacity);
    if (::ftruncate(ix->fd_, 0) != 0 || ::ftruncate(ix->fd_, static_cast<off_t>(g.bytes)) != 0)
      return fail("cannot size");
    if (!ix->allocate(0, g.nodes_off))
      return {errno == ENOSPC ? KVTIER_ERR_NO_SPACE : KVTIER_ERR_IO,
              "cannot allocate " + std::to_string(g.nodes_off) + " bytes for " + dir +
                  "/INDEX: " + std::strerror(errno)};
  } else {
    IndexHeader head{};
    struct stat st {};
    if (::pread(ix->fd_, &head, sizeof head, 0) != static_cast<ssize_t>(sizeof head) ||
        ::fstat(ix->fd_, &st) != 0)
      return fail("cannot read");
    g = geometry(head.capacity, head.max_nodes, head.table_size);
    if (head.magic != kIndexMagic || head.version != kIndexVersion ||
        (head.table_size & (head.table_size - 1)) || static_cast<uint64_t>(st.st_size) < g.bytes)
      return {KVTIER_ERR_IO, dir + "/INDEX is damaged or of another version while in use"};
    if (head.capacity != capacity)
      log().info("file tier: {} is open elsewhere with a capacity of {} bytes; that one holds", dir,
                 head.capacity);
  }
  ix->map_ = ::mmap(nullptr, g.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ix->fd_, 0);
  if (ix->map_ == MAP_FAILED) {
    ix->map_ = nullptr;
    return fail("cannot map");
  }
  ix->map_len_ = g.bytes;
  auto* base = static_cast<char*>(ix->map_);
  ix->header_ = reinterpret_cast<IndexHeader*>(base);
  ix->nodes_ = reinterpret_cast<Node*>(base + g.nodes_off);
  ix->table_ = reinterpret_cast<uint32_t*>(base + g.table_off);
  ix->h_table_size_ = g.table_size;
  ix->nodes_off_ = g.nodes_off;
  if (*fresh) {
    IndexHeader& h = *ix->header_;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    const int rc = pthread_mutex_init(&h.mu, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) return {KVTIER_ERR_IO, "cannot make the index lock: " + std::string(strerror(rc))};
    h.capacity = capacity;
    h.max_nodes = g.max_nodes;
    h.table_size = g.table_size;
    h.seq = 1;
    ix->reset(true);  // a fresh file is all zero
    h.version = kIndexVersion;
    h.magic = kIndexMagic;  // last: a later open trusts the geometry only with it
  }
  *out = std::move(ix);
  return {};
}

void SharedIndex::opened() {
  if (::flock(users_fd_, LOCK_SH) != 0)  // from exclusive when fresh; a no-op otherwise
    log().warn("file tier: cannot share the namespace lock: {}", std::strerror(errno));
  ::flock(fd_, LOCK_UN);
}

void SharedIndex::lock() {
  const int rc = pthread_mutex_lock(&header_->mu);
  if (rc == 0) return;
  if (rc == EOWNERDEAD) {
    // The last holder died (SIGKILL mid-mutation): the index may be half-updated. Rebuild it
    // from the records before anyone else sees it; a locker that dies during this rebuild
    // leaves the lock owner-dead again, so the next one starts over.
    ++header_->recoveries;
    log().warn("file tier: a process died holding the namespace lock; rebuilding the index");
    try {
      if (recover_) recover_();
    } catch (const std::exception& e) {  // the lock must not stay owner-dead with us alive
      log().error("file tier: rebuilding the index failed: {}", e.what());
    }
    pthread_mutex_consistent(&header_->mu);
    return;
  }
  // Only a holder that unlocks without marking the lock consistent leaves it unrecoverable,
  // and no code here does that.
  throw std::runtime_error("file tier: the namespace lock failed: " +
                           std::string(std::strerror(rc)));
}

SharedIndex::Guard::Guard(SharedIndex& ix) : ix_(ix) {
  ix_.lock();
}
SharedIndex::Guard::~Guard() {
  pthread_mutex_unlock(&ix_.header_->mu);
}

bool SharedIndex::allocate(uint64_t off, uint64_t len) {
  if (::fallocate(fd_, 0, static_cast<off_t>(off), static_cast<off_t>(len)) == 0) return true;
  if (errno != EOPNOTSUPP) return false;
  static const char zeros[65536] = {};
  for (uint64_t done = 0; done < len;) {
    const ssize_t n = ::pwrite(fd_, zeros, std::min<uint64_t>(sizeof zeros, len - done),
                               static_cast<off_t>(off + done));
    if (n <= 0) return false;
    done += static_cast<uint64_t>(n);
  }
  return true;
}

uint32_t SharedIndex::find(KeyId id) const {
  for (uint32_t e = table_[home(id)]; e != 0; e = nodes_[e - 1].hnext)
    if (nodes_[e - 1].key() == id) return e - 1;
  return kNil;
}

void SharedIndex::insert(uint32_t n) {
  uint32_t& head = table_[home(nodes_[n].key())];
  nodes_[n].hnext = head;
  head = n + 1;
}

void SharedIndex::erase(uint32_t n) {
  for (uint32_t* e = &table_[home(nodes_[n].key())]; *e != 0; e = &nodes_[*e - 1].hnext)
    if (*e == n + 1) {
      *e = nodes_[n].hnext;
      nodes_[n].hnext = 0;
      return;
    }
}

void SharedIndex::lru_push_front(uint32_t n) {
  IndexHeader& h = *header_;
  nodes_[n].prev = kNil;
  nodes_[n].next = h.lru_head;
  if (h.lru_head != kNil) nodes_[h.lru_head].prev = n;
  h.lru_head = n;
  if (h.lru_tail == kNil) h.lru_tail = n;
}

void SharedIndex::lru_unlink(uint32_t n) {
  IndexHeader& h = *header_;
  Node& x = nodes_[n];
  (x.prev != kNil ? nodes_[x.prev].next : h.lru_head) = x.next;
  (x.next != kNil ? nodes_[x.next].prev : h.lru_tail) = x.prev;
  x.prev = x.next = kNil;
}

void SharedIndex::touch(uint32_t n) {
  if (header_->lru_head == n) return;
  lru_unlink(n);
  lru_push_front(n);
}

void SharedIndex::push_free(uint32_t n) {
  Node& x = nodes_[n];
  ClassInfo& c = header_->classes[x.cls];
  x.state = kFree;
  x.owner = 0;
  x.owner_start = 0;
  x.prev = kNil;
  x.next = c.free_head;
  c.free_head = n;
}

uint32_t SharedIndex::pop_free(uint32_t cls) {
  ClassInfo& c = header_->classes[cls];
  const uint32_t n = c.free_head;
  if (n != kNil) c.free_head = nodes_[n].next;
  return n;
}

uint32_t SharedIndex::new_node() {
  IndexHeader& h = *header_;
  if (h.nodes_used >= h.max_nodes) return kNil;
  if (h.nodes_used == h.nodes_room) {
    const uint64_t more = std::min(kNodeChunk, h.max_nodes - h.nodes_room);
    if (!allocate(nodes_off_ + h.nodes_room * sizeof(Node), more * sizeof(Node))) return kNil;
    h.nodes_room += more;
  }
  const auto n = static_cast<uint32_t>(h.nodes_used++);
  std::memset(&nodes_[n], 0, sizeof(Node));
  return n;
}

uint32_t SharedIndex::class_of(uint64_t slot_size) {
  IndexHeader& h = *header_;
  for (uint32_t c = 0; c < h.nclasses; ++c)
    if (h.classes[c].slot_size == slot_size) return c;
  if (h.nclasses == kMaxClasses) return kNil;
  h.classes[h.nclasses] = {slot_size, 0, 0, kNil, 0};
  return h.nclasses++;
}

void SharedIndex::reset(bool table_trusted) {
  IndexHeader& h = *header_;
  if (table_trusted) {
    // Every chain holds nodes in use, all with the chain's home: only those heads are set.
    for (uint64_t n = 0; n < h.nodes_used; ++n)
      if (nodes_[n].state != kFree) table_[home(nodes_[n].key())] = 0;
  } else {
    std::memset(table_, 0, h_table_size_ * sizeof(uint32_t));
  }
  h.live_bytes = h.keys = h.reserved = h.nodes_used = 0;
  h.clearing = 0;
  h.clearing_start = 0;
  h.lru_head = h.lru_tail = kNil;
  h.nclasses = 0;
}

}  // namespace kvtier
