#include "backends/file/shared_index.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "src/deadline_lock.h"
#include "src/log.h"
#include "backends/file/safe_dir.h"

namespace kvtier {

namespace {

constexpr uint32_t kIndexMagic = 0x53495856;  // "VXIS"
constexpr uint32_t kIndexVersion = 2;  // 2: Node::rotation
constexpr uint64_t kPage = 4096;

uint64_t round_page(uint64_t n) {
  return (n + kPage - 1) & ~(kPage - 1);
}

constexpr uint64_t kNodeChunk = 1024;  // nodes get their memory 96 KiB at a time

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

// INDEX, the roster: who holds the namespace's index, so that a process opening the namespace
// can map the same one. Written whole (a new file renamed over the old) under the folder's flock.
struct Member {
  int32_t pid, fd;    // the member and its memfd's number there
  uint64_t start;     // the member's start time (a pid can be reused; the pair cannot)
  uint64_t dev, ino;  // the memfd itself
};

namespace {

constexpr uint32_t kRosterMagic = 0x52495856;  // "VXIR"
constexpr uint32_t kMembers = 127;

struct Roster {
  uint32_t magic, version;
  uint64_t count;
  Member members[kMembers];
  uint64_t sum;  // XXH3-64 of the fields above
};

uint64_t roster_sum(const Roster& r) {
  return checksum(&r, offsetof(Roster, sum));
}

// The roster of any index version (its layout is the same in all of them, so that each can tell
// another's live members), or false when it is missing, short or damaged (anyone can write it).
bool read_any_roster(int dir_fd, Roster* r) {
  const int fd = ::openat(dir_fd, "INDEX", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = ::pread(fd, r, sizeof *r, 0);
  ::close(fd);
  return n == static_cast<ssize_t>(sizeof *r) && r->magic == kRosterMagic &&
         r->count <= kMembers && r->sum == roster_sum(*r);
}

// The roster of this index version.
bool read_roster(int dir_fd, Roster* r) {
  return read_any_roster(dir_fd, r) && r->version == kIndexVersion;
}

// The index version of processes of another kvtier version that hold the folder (a valid
// roster of theirs names a live member), else 0. Their index is laid out differently: one of
// this version beside it, over the same page files, would hand out the same slots again.
uint32_t other_index_version(int dir_fd) {
  Roster r{};
  if (!read_any_roster(dir_fd, &r) || r.version == kIndexVersion) return 0;
  for (uint64_t i = 0; i < r.count; ++i)
    if (!process_gone(r.members[i].pid, r.members[i].start)) return r.version;
  return 0;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr int64_t kRosterCheckNs = 100'000'000;  // how often a member looks at the roster

// Waits for the folder's flock until `deadline_ns` (steady clock); false when it passed.
bool flock_until(int fd, int64_t deadline_ns) {
  for (;;) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return true;
    if (errno != EWOULDBLOCK && errno != EINTR) return false;
    if (now_ns() > deadline_ns) return false;
    ::usleep(1000);
  }
}

constexpr int64_t kOpenWaitNs = 60'000'000'000;  // an open waits this long for another's rebuild

}  // namespace

bool process_stopped(int32_t id) {
  char path[32], stat[512] = {};
  std::snprintf(path, sizeof path, "/proc/%d/stat", id);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = ::read(fd, stat, sizeof stat - 1);
  ::close(fd);
  const char* p = n > 0 ? std::strrchr(stat, ')') : nullptr;
  return p && p[1] == ' ' && (p[2] == 'T' || p[2] == 't');
}

SharedIndex::~SharedIndex() {
  // Off the roster, if it can be had at once (a stale entry is harmless: members are checked).
  if (lock_fd_ >= 0 && ::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0) {
    Roster r{};
    if (read_roster(dir_fd_, &r)) {
      const int32_t me = ::getpid();
      uint64_t kept = 0;
      for (uint64_t i = 0; i < r.count; ++i)
        if (r.members[i].pid != me) r.members[kept++] = r.members[i];
      if (kept != r.count) {
        r.count = kept;
        r.sum = roster_sum(r);
        const int fd = open_private_file(dir_fd_, "INDEX.new", O_WRONLY | O_TRUNC);
        if (fd >= 0) {
          const bool ok = ::pwrite(fd, &r, sizeof r, 0) == static_cast<ssize_t>(sizeof r);
          ::close(fd);
          if (ok) ::renameat(dir_fd_, "INDEX.new", dir_fd_, "INDEX");
        }
      }
    }
  }
  unmap(map_);
  if (ns_fd_ >= 0) ::close(ns_fd_);      // this pid namespace's claim, unless others hold it
  if (lock_fd_ >= 0) ::close(lock_fd_);  // drops the flock
}

void SharedIndex::unmap(Map& m) {
  if (m.base) ::munmap(m.base, m.len);
  if (m.fd >= 0) ::close(m.fd);
  m = Map{};
}

Status SharedIndex::open(int dir_fd, const std::string& dir, uint64_t capacity, uint64_t timeout_ms,
                         bool* fresh, std::unique_ptr<SharedIndex>* out) {
  std::unique_ptr<SharedIndex> ix(new SharedIndex());
  ix->timeout_ns_ = static_cast<int64_t>(timeout_ms) * 1'000'000;
  ix->dir_fd_ = dir_fd;
  ix->dir_ = dir;
  ix->lock_fd_ = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (ix->lock_fd_ < 0)
    return {KVTIER_ERR_IO, "cannot open " + dir + ": " + std::string(std::strerror(errno))};
  // Opens one at a time: the first one makes and fills the index while the others wait here.
  if (!flock_until(ix->lock_fd_, now_ns() + kOpenWaitNs))
    return {errno == EWOULDBLOCK ? KVTIER_ERR_BUSY : KVTIER_ERR_IO,
            "cannot lock " + dir + ": another process holds it (stopped?)"};
  if (Status s = ix->claim_pid_namespace(); !s.is_ok()) return s;
  *fresh = !ix->join(&ix->map_);
  if (*fresh) {
    // No live process holds an index of the namespace: a new one, filled from the records.
    Status s = ix->create(capacity, &ix->map_);
    if (!s.is_ok()) return {s.code(), s.message() + " for " + dir};
  } else if (ix->map_.capacity != capacity) {
    log().info("file tier: {} is open elsewhere with a capacity of {} bytes; that one holds", dir,
               ix->map_.capacity);
  }
  ix->publish();
  ix->next_check_ = now_ns() + kRosterCheckNs;
  *out = std::move(ix);
  return {};
}

Status SharedIndex::open_private(uint64_t capacity, uint64_t timeout_ms,
                                 std::unique_ptr<SharedIndex>* out) {
  std::unique_ptr<SharedIndex> ix(new SharedIndex());
  ix->timeout_ns_ = static_cast<int64_t>(timeout_ms) * 1'000'000;
  ix->dir_ = "(private index)";
  ix->next_check_ = INT64_MAX;  // no roster to check
  if (Status s = ix->create(capacity, &ix->map_); !s.is_ok()) return s;
  *out = std::move(ix);
  return {};
}

namespace {

constexpr char kClaimPrefix[] = "pidns-";

// The claim of this index version's processes of pid namespace `ino`. Version 1 named its
// claims "pidns-<inode>" and refuses an open while any other "pidns-*" file is locked: so this
// version's claim, another name with the same prefix, keeps its libraries out too.
std::string claim_name(uint64_t ino) {
  return kClaimPrefix + std::to_string(ino) + ".v" + std::to_string(kIndexVersion);
}

// The pid namespace and index version a claim's name gives ("pidns-<inode>" is version 1's);
// false for a name no kvtier makes.
bool parse_claim(const char* name, uint64_t* ino, uint32_t* version) {
  if (std::strncmp(name, kClaimPrefix, sizeof kClaimPrefix - 1) != 0) return false;
  const char* p = name + sizeof kClaimPrefix - 1;
  if (!std::isdigit(static_cast<unsigned char>(*p))) return false;
  char* end = nullptr;
  errno = 0;
  *ino = std::strtoull(p, &end, 10);
  if (errno) return false;
  *version = 1;
  if (*end == '\0') return true;
  if (end[0] != '.' || end[1] != 'v' || !std::isdigit(static_cast<unsigned char>(end[2])))
    return false;
  const unsigned long v = std::strtoul(end + 2, &end, 10);
  if (*end != '\0' || v < 2 || v > UINT32_MAX) return false;
  *version = static_cast<uint32_t>(v);
  return true;
}

}  // namespace

// The index speaks in pids: a write's owner, a clear's owner, the lock's holder (its thread id,
// in the lock word), the roster's members reached through /proc/<pid>/fd. A pid means one
// process only inside its pid namespace, so processes in two of them (containers on one host
// folder) would each find the other's writers dead and take their slots; and processes of two
// index versions lay the index out differently. So each process holds a shared flock on the
// claim of its pid namespace and index version, "pidns-<its inode>.v<version>", in the folder
// while it has it open (a flock works across namespaces, and the kernel drops it when they die);
// an open that finds another claim locked is refused (see others()).
Status SharedIndex::claim_pid_namespace() {
  struct stat ns {};
  char self[32] = {};
  if (::stat("/proc/self/ns/pid", &ns) != 0 ||
      ::readlink("/proc/self", self, sizeof self - 1) <= 0 ||
      std::strtol(self, nullptr, 10) != ::getpid())
    return {KVTIER_ERR_UNSUPPORTED,
            "file tier: " + dir_ +
                " is shared through /proc, which here is missing or not this process's pid "
                "namespace's (mount one for it)"};
  ns_name_ = claim_name(ns.st_ino);
  if (Status s = others(); !s.is_ok()) return s;
  return keep_pid_namespace();
}

// Who else holds the folder, in one place. The claims of processes gone are deleted (opens wait
// for the folder's flock, so a claim not locked now has no process). A live claim of this pid
// namespace under another name is another index version's; any other, another pid namespace's.
// Libraries older than the claims are known by their roster alone: a valid one of another
// version that names a live member. Once they are all gone, an open takes the folder over and
// makes the index from the records (those of any version are read as they are).
Status SharedIndex::others() {
  std::vector<std::string> names;
  const int scan = ::openat(lock_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = scan >= 0 ? ::fdopendir(scan) : nullptr;
  if (!d && scan >= 0) ::close(scan);
  while (const dirent* e = d ? ::readdir(d) : nullptr)
    if (std::strncmp(e->d_name, kClaimPrefix, sizeof kClaimPrefix - 1) == 0 &&
        ns_name_ != e->d_name)
      names.emplace_back(e->d_name);
  if (d) ::closedir(d);
  uint64_t own_ino = 0, ino = 0;
  uint32_t own_version = 0, version = 0, other_version = 0;
  parse_claim(ns_name_.c_str(), &own_ino, &own_version);
  bool other_namespace = false;
  for (const std::string& name : names) {
    const int fd = ::openat(dir_fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      ::unlinkat(dir_fd_, name.c_str(), 0);
    } else if (errno == EWOULDBLOCK) {
      if (parse_claim(name.c_str(), &ino, &version) && ino == own_ino && version != own_version)
        other_version = version;
      else
        other_namespace = true;
    }
    ::close(fd);
  }
  if (other_namespace)
    return {KVTIER_ERR_UNSUPPORTED,
            "file tier: " + dir_ +
                " is open in processes of another pid namespace (another container?), and the "
                "file tier is shared within one pid namespace only: give each container its own "
                "KVTIER_FILE_DIR, or let them share a pid namespace"};
  if (!other_version) other_version = other_index_version(dir_fd_);
  if (other_version)
    return {KVTIER_ERR_UNSUPPORTED,
            "file tier: " + dir_ + " is in use by processes of another kvtier index version (" +
                std::to_string(other_version) + ", this library's is " +
                std::to_string(kIndexVersion) +
                "): use another KVTIER_FILE_DIR, or stop them first"};
  return {};
}

// (Re)makes and locks this process's claim if it is missing: a neighbour may delete it.
Status SharedIndex::keep_pid_namespace() {
  struct stat held {};
  struct stat named {};
  if (ns_fd_ >= 0 && ::fstat(ns_fd_, &held) == 0 &&
      ::fstatat(dir_fd_, ns_name_.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
      held.st_ino == named.st_ino && held.st_dev == named.st_dev)
    return {};
  const int fd = open_private_file(dir_fd_, ns_name_, O_RDONLY);
  if (fd < 0 || ::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    return {KVTIER_ERR_IO, "cannot lock " + dir_ + "/" + ns_name_ + ": " + std::strerror(err)};
  }
  const bool remade = ns_fd_ >= 0;
  if (remade) {
    log().warn("file tier: {}/{} was deleted; made again", dir_, ns_name_);
    ::close(ns_fd_);
  }
  ns_fd_ = fd;
  // Deleted, it let in processes of another pid namespace or index version: they and this one
  // take each other's slots (misses, never wrong bytes: every read is checked) until one side
  // closes the folder.
  if (remade)
    if (Status s = others(); !s.is_ok())
      log().error("{}; they opened it while {} was deleted, and sharing with them fails (misses) "
                  "until one side closes it",
                  s.message(), ns_name_);
  return {};
}

namespace {
// Sets m's pointers from its mapping and geometry.
template <class M>
void layout(M& m, const Geometry& g) {
  auto* base = static_cast<char*>(m.base);
  m.header = reinterpret_cast<IndexHeader*>(base);
  m.nodes = reinterpret_cast<Node*>(base + g.nodes_off);
  m.table = reinterpret_cast<uint32_t*>(base + g.table_off);
  m.table_size = g.table_size;
  m.max_nodes = g.max_nodes;
  m.nodes_off = g.nodes_off;
  m.len = g.bytes;
}
}  // namespace

Status SharedIndex::create(uint64_t capacity, Map* m) {
  const Geometry g = geometry(capacity);
  Map x;
  x.fd = ::memfd_create("kvtier-index", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  struct stat st {};
  auto fail = [&](const std::string& what, int code = KVTIER_ERR_IO) {
    const int err = errno;
    unmap(x);
    return Status{code, "cannot " + what + " the shared index: " + std::strerror(err)};
  };
  if (x.fd < 0) return fail("make");
  map_.fd = x.fd;  // allocate() works on map_
  const bool sized =
      ::ftruncate(x.fd, static_cast<off_t>(g.bytes)) == 0 && allocate(0, g.nodes_off);
  map_.fd = -1;
  if (!sized)
    return fail("size", errno == ENOSPC || errno == ENOMEM ? KVTIER_ERR_NO_MEMORY : KVTIER_ERR_IO);
  // Sealed: nobody (not this process, not another that opens it through /proc) can change its
  // size, so no touch of its mapping can fault.
  if (::fcntl(x.fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 ||
      ::fstat(x.fd, &st) != 0)
    return fail("seal");
  x.dev = st.st_dev;
  x.ino = st.st_ino;
  x.base = ::mmap(nullptr, g.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, x.fd, 0);
  if (x.base == MAP_FAILED) {
    x.base = nullptr;
    return fail("map");
  }
  layout(x, g);
  x.capacity = capacity;
  IndexHeader& h = *x.header;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  const int rc = pthread_mutex_init(&h.mu, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return fail("lock");
  }
  h.capacity = capacity;
  h.max_nodes = g.max_nodes;
  h.table_size = g.table_size;
  h.seq = 1;
  h.lru_head = h.lru_tail = kNil;
  h.version = kIndexVersion;
  h.magic = kIndexMagic;
  *m = x;
  return {};
}

bool SharedIndex::attach(const Member& who, Map* m) {
  if (who.pid <= 0 || who.fd < 0 || process_start(who.pid) != who.start) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/fd/%d", who.pid, who.fd);
  Map x;
  x.fd = ::open(path, O_RDWR | O_CLOEXEC);
  if (x.fd < 0) return false;
  struct stat st {};
  IndexHeader head{};
  const int seals = ::fcntl(x.fd, F_GET_SEALS);
  bool ok = ::fstat(x.fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid() &&
            st.st_dev == who.dev && st.st_ino == who.ino && seals >= 0 &&
            (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW) &&
            ::pread(x.fd, &head, sizeof head, 0) == static_cast<ssize_t>(sizeof head) &&
            head.magic == kIndexMagic && head.version == kIndexVersion && head.capacity >= kPage &&
            head.max_nodes && head.max_nodes < kNil && head.table_size &&
            !(head.table_size & (head.table_size - 1));
  Geometry g{};
  if (ok) {
    g = geometry(head.capacity, head.max_nodes, head.table_size);
    ok = static_cast<uint64_t>(st.st_size) == g.bytes;
  }
  if (ok) {
    x.base = ::mmap(nullptr, g.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, x.fd, 0);
    ok = x.base != MAP_FAILED;
    if (!ok) x.base = nullptr;
  }
  if (!ok) {
    unmap(x);
    return false;
  }
  layout(x, g);
  x.dev = st.st_dev;
  x.ino = st.st_ino;
  x.capacity = head.capacity;
  *m = x;
  return true;
}

bool SharedIndex::join(Map* m, uint64_t skip_ino) {
  Roster r{};
  if (!read_roster(dir_fd_, &r)) return false;
  for (uint64_t i = 0; i < r.count; ++i)
    if (r.members[i].pid != ::getpid() && r.members[i].ino != skip_ino && attach(r.members[i], m))
      return true;
  return false;
}

bool SharedIndex::abandon(uint64_t stuck_ino, int32_t holder) {
  std::lock_guard roster(roster_mu_);
  if (!flock_until(lock_fd_, now_ns() + timeout_ns_)) return false;
  // Beside processes of another index version (or pid namespace), the roster is theirs: a new
  // index published over it would let more processes of this version in beside them. The calls
  // fail until the stopped one resumes or they are gone.
  if (Status s = others(); !s.is_ok()) {
    if (!kept_stuck_logged_)
      log().error("{}; so the index is not made anew without thread {}, stopped holding its "
                  "lock, and calls fail until it resumes or they are gone",
                  s.message(), holder);
    kept_stuck_logged_ = true;
    ::flock(lock_fd_, LOCK_UN);
    return false;
  }
  if (map_.ino == stuck_ino) {
    log().warn("file tier: thread {} stopped while holding the lock of {}; the index is made anew "
               "from the records for the others",
               holder, dir_);
    // Another process may have made the new index already: then this one joins it.
    Map next;
    const bool fresh = !join(&next, stuck_ino);
    Status s = fresh ? create(map_.capacity, &next) : Status{};
    if (s.is_ok()) {
      std::unique_lock swap(swap_mu_);
      unmap(map_);
      map_ = next;
      if (fresh && recover_) recover_(false);
      stalled_ = false;
    } else {
      log().warn("file tier: {}: {}", dir_, s.message());
    }
    if (s.is_ok()) publish();
  }
  ::flock(lock_fd_, LOCK_UN);
  return map_.ino != stuck_ino;
}

void SharedIndex::publish() {
  Roster old{}, r{};
  r.magic = kRosterMagic;
  r.version = kIndexVersion;
  const int32_t me = ::getpid();
  r.members[r.count++] = {me, map_.fd, process_start(me), map_.dev, map_.ino};
  if (read_roster(dir_fd_, &old))
    for (uint64_t i = 0; i < old.count && r.count < kMembers; ++i) {
      const Member& x = old.members[i];
      if (x.pid != me && x.dev == map_.dev && x.ino == map_.ino && !process_gone(x.pid, x.start))
        r.members[r.count++] = x;
    }
  r.sum = roster_sum(r);
  const int fd = open_private_file(dir_fd_, "INDEX.new", O_WRONLY | O_TRUNC);
  const bool ok = fd >= 0 && ::pwrite(fd, &r, sizeof r, 0) == static_cast<ssize_t>(sizeof r);
  if (fd >= 0) ::close(fd);
  if (!ok || ::renameat(dir_fd_, "INDEX.new", dir_fd_, "INDEX") != 0)
    log().warn("file tier: cannot write {}/INDEX: {}", dir_, std::strerror(errno));
}

void SharedIndex::opened() {
  ::flock(lock_fd_, LOCK_UN);
}

// A member looks at the roster every kRosterCheckNs: deleted, truncated or scribbled, it is
// written again; naming another index (made by a process that found no roster), this process
// joins that one, so the namespace's processes never keep two indexes for long. Either costs at
// most misses: every page read is checked against its checksum.
void SharedIndex::check_roster() {
  int64_t due = next_check_.load(std::memory_order_relaxed);
  const int64_t now = now_ns();
  if (now < due || !next_check_.compare_exchange_strong(due, now + kRosterCheckNs)) return;
  std::unique_lock roster(roster_mu_, std::try_to_lock);
  if (!roster.owns_lock()) return;                        // another thread of this process is at it
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) return;  // an open is under way: later
  if (Status s = keep_pid_namespace(); !s.is_ok()) log().warn("{}", s.message());
  Roster r{};
  const bool valid = read_roster(dir_fd_, &r);
  bool listed = false, other = false;
  for (uint64_t i = 0; valid && i < r.count; ++i) {
    const Member& x = r.members[i];
    listed |= x.pid == ::getpid() && x.dev == map_.dev && x.ino == map_.ino;
    other |= x.dev != map_.dev || x.ino != map_.ino;
  }
  if (!listed && !valid) {
    // A library older than the claims (of another index version) found no roster of its own,
    // or could not read ours: its index and this one hand out the same slots (misses, never
    // wrong bytes: every read is checked) until one side closes the folder. Its roster stays,
    // so that no more processes of this version come in beside it.
    if (Status s = others(); !s.is_ok()) {
      if (!others_logged_)
        log().error("{}; they opened it beside this process, which fails (misses) until one side "
                    "closes it",
                    s.message());
      others_logged_ = true;
      ::flock(lock_fd_, LOCK_UN);
      return;
    }
  }
  if (!listed) {
    Map next;
    if (other && join(&next)) {
      log().warn("file tier: {}/INDEX names another index (it was replaced); joining that one",
                 dir_);
      std::unique_lock swap(swap_mu_);
      unmap(map_);
      map_ = next;
    } else {
      log().warn("file tier: {}/INDEX was missing or damaged; written again", dir_);
    }
    publish();
  }
  ::flock(lock_fd_, LOCK_UN);
}

bool SharedIndex::lock(int32_t* holder) {
  IndexHeader& h = *map_.header;
  // After a wait that timed out, the next ones are brief until the lock is had again: a holder
  // that makes no progress costs one timeout, not one per call.
  const int64_t wait = stalled_ ? std::min<int64_t>(timeout_ns_, 20'000'000) : timeout_ns_;
  const int rc = lock_until(&h.mu, monotonic_after(wait));
  if (rc == ETIMEDOUT) {
    // The owner's thread id is in the lock word: the robust-futex protocol puts it there.
    *holder =
        static_cast<int32_t>(__atomic_load_n(&h.mu.__data.__lock, __ATOMIC_RELAXED) & 0x3fffffff);
    if (!stalled_.exchange(true))
      log().warn("file tier: the lock of {} is held by thread {} for over {} ms; calls fail", dir_,
                 *holder, timeout_ns_ / 1'000'000);
    return false;
  }
  stalled_ = false;
  if (rc == EOWNERDEAD) {
    // The last holder died (SIGKILL mid-mutation): the index may be half-updated. Rebuild it
    // from the records before anyone else sees it; a locker that dies during this rebuild
    // leaves the lock owner-dead again, so the next one starts over.
    ++h.recoveries;
    log().warn("file tier: a process died holding the namespace lock; rebuilding the index");
    repair();
    pthread_mutex_consistent(&h.mu);
    return true;
  }
  if (rc != 0)  // only bytes written over the lock leave it unusable
    throw std::runtime_error("file tier: the namespace lock failed: " +
                             std::string(std::strerror(rc)));
  if (!sane()) {
    log().warn("file tier: the shared index of {} is damaged; rebuilding it", dir_);
    repair();
  }
  return true;
}

void SharedIndex::repair() {
  damaged_ = false;
  try {
    if (recover_) recover_(true);
  } catch (const std::exception& e) {  // the lock must not stay owner-dead with us alive
    log().error("file tier: rebuilding the index failed: {}", e.what());
  }
  damaged_ = false;
}

bool SharedIndex::sane() {
  const IndexHeader& h = *map_.header;
  const Map& m = map_;
  auto node_ok = [&](uint32_t n) { return n == kNil || n < h.nodes_used; };
  if (h.magic != kIndexMagic || h.version != kIndexVersion || h.capacity != m.capacity ||
      h.max_nodes != m.max_nodes || h.table_size != m.table_size || h.nclasses > kMaxClasses ||
      h.nodes_used > h.nodes_room || h.nodes_room > m.max_nodes || h.keys > h.nodes_used ||
      h.reserved > h.nodes_used || !node_ok(h.lru_head) || !node_ok(h.lru_tail))
    return false;
  for (uint32_t c = 0; c < h.nclasses; ++c) {
    const ClassInfo& k = h.classes[c];
    if (k.slot_size < kPage || k.slot_size % kPage || k.used_slots > k.file_slots ||
        !node_ok(k.free_head))
      return false;
  }
  return true;
}

Node& SharedIndex::scratch_node() {
  damaged_ = true;
  scratch_node_ = Node{};
  scratch_node_.prev = scratch_node_.next = kNil;
  return scratch_node_;
}

ClassInfo& SharedIndex::scratch_class() {
  damaged_ = true;
  scratch_class_ = ClassInfo{kPage, 0, 0, kNil, 0};
  return scratch_class_;
}

SharedIndex::Guard::Guard(SharedIndex& ix) : ix_(ix) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    ix_.check_roster();
    ix_.swap_mu_.lock_shared();
    int32_t holder = 0;
    const uint64_t ino = ix_.map_.ino;
    try {
      ok_ = ix_.lock(&holder);
    } catch (...) {
      ix_.swap_mu_.unlock_shared();
      throw;
    }
    if (ok_) return;
    ix_.swap_mu_.unlock_shared();
    if (attempt || holder <= 0 || !process_stopped(holder)) break;
    if (!ix_.abandon(ino, holder)) break;
  }
}
SharedIndex::Guard::~Guard() {
  if (!ok_) return;
  if (ix_.damaged_) {  // a value out of range was met: nobody else meets it
    log().warn("file tier: the shared index of {} is damaged; rebuilding it", ix_.dir_);
    ix_.repair();
  }
  pthread_mutex_unlock(&ix_.map_.header->mu);
  ix_.swap_mu_.unlock_shared();
}

bool SharedIndex::allocate(uint64_t off, uint64_t len) {
  return ::fallocate(map_.fd, 0, static_cast<off_t>(off), static_cast<off_t>(len)) == 0;
}

// The chains, the LRU and the free lists come from shared memory: each link is checked
// (node() reads an out-of-range one as a scratch node and marks the index damaged) and each
// walk is bounded by the number of nodes, so a loop written into them ends too.
uint32_t SharedIndex::find(KeyId id) {
  uint64_t steps = 0;
  for (uint32_t e = map_.table[home(id)]; e != 0; e = mut(e - 1).hnext) {
    if (e - 1 >= map_.max_nodes || ++steps > map_.max_nodes) {
      damaged_ = true;
      return kNil;
    }
    if (map_.nodes[e - 1].key() == id) return e - 1;
  }
  return kNil;
}

void SharedIndex::insert(uint32_t n) {
  Node& x = mut(n);
  uint32_t& head = map_.table[home(x.key())];
  x.hnext = head;
  head = n + 1;
}

void SharedIndex::erase(uint32_t n) {
  Node& x = mut(n);
  uint64_t steps = 0;
  for (uint32_t* e = &map_.table[home(x.key())]; *e != 0; e = &mut(*e - 1).hnext) {
    if (++steps > map_.max_nodes) {
      damaged_ = true;
      return;
    }
    if (*e == n + 1) {
      *e = x.hnext;
      x.hnext = 0;
      return;
    }
  }
}

void SharedIndex::lru_push_front(uint32_t n) {
  IndexHeader& h = *map_.header;
  Node& x = mut(n);
  x.prev = kNil;
  x.next = h.lru_head;
  if (h.lru_head != kNil) mut(h.lru_head).prev = n;
  h.lru_head = n;
  if (h.lru_tail == kNil) h.lru_tail = n;
}

void SharedIndex::lru_unlink(uint32_t n) {
  IndexHeader& h = *map_.header;
  Node& x = mut(n);
  (x.prev != kNil ? mut(x.prev).next : h.lru_head) = x.next;
  (x.next != kNil ? mut(x.next).prev : h.lru_tail) = x.prev;
  x.prev = x.next = kNil;
}

void SharedIndex::touch(uint32_t n) {
  if (map_.header->lru_head == n) return;
  lru_unlink(n);
  lru_push_front(n);
}

void SharedIndex::push_free(uint32_t n) {
  Node& x = mut(n);
  ClassInfo& c = klass(x.cls);
  x.state = kFree;
  x.owner = 0;
  x.owner_start = 0;
  x.prev = kNil;
  x.next = c.free_head;
  c.free_head = n;
}

uint32_t SharedIndex::pop_free(uint32_t cls) {
  ClassInfo& c = klass(cls);
  const uint32_t n = c.free_head;
  if (n == kNil) return kNil;
  if (n >= map_.max_nodes || mut(n).state != kFree) {  // a free list through used nodes
    damaged_ = true;
    c.free_head = kNil;
    return kNil;
  }
  c.free_head = mut(n).next;
  return n;
}

uint32_t SharedIndex::new_node() {
  IndexHeader& h = *map_.header;
  if (h.nodes_used >= map_.max_nodes) return kNil;
  if (h.nodes_used == h.nodes_room) {
    const uint64_t more = std::min(kNodeChunk, map_.max_nodes - h.nodes_room);
    if (!allocate(map_.nodes_off + h.nodes_room * sizeof(Node), more * sizeof(Node))) return kNil;
    h.nodes_room += more;
  }
  const auto n = static_cast<uint32_t>(h.nodes_used++);
  std::memset(&map_.nodes[n], 0, sizeof(Node));
  return n;
}

uint32_t SharedIndex::class_index(uint64_t slot_size) {
  for (uint32_t c = 0; c < classes(); ++c)
    if (h().classes[c].slot_size == slot_size) return c;
  return kNil;
}

uint32_t SharedIndex::class_of(uint64_t slot_size) {
  if (const uint32_t c = class_index(slot_size); c != kNil) return c;
  const uint32_t c = classes();
  if (c == kMaxClasses) return kNil;
  h().classes[c] = {slot_size, 0, 0, kNil, 0};
  h().nclasses = c + 1;
  return c;
}

void SharedIndex::reset(bool table_trusted) {
  IndexHeader& h = *map_.header;
  if (table_trusted) {
    // Every chain holds nodes in use, all with the chain's home: only those heads are set.
    for (uint64_t n = 0; n < std::min(h.nodes_used, map_.max_nodes); ++n)
      if (map_.nodes[n].state != kFree) map_.table[home(map_.nodes[n].key())] = 0;
  } else {
    std::memset(map_.table, 0, map_.table_size * sizeof(uint32_t));
  }
  h.live_bytes = h.keys = h.reserved = h.nodes_used = 0;
  h.nodes_room = std::min(h.nodes_room, map_.max_nodes);
  h.clearing = 0;
  h.clearing_start = 0;
  h.lru_head = h.lru_tail = kNil;
  h.nclasses = 0;
}

// ---- the slot life-cycle --------------------------------------------------------------------

TierStats SharedIndex::stats() const {
  const IndexHeader& x = *map_.header;
  return {x.keys, x.live_bytes, x.capacity, x.evictions, x.errors};
}

int SharedIndex::reserve(KeyId id, uint64_t slot_size, int32_t pid, uint64_t start,
                         uint32_t* node) {
  const uint32_t cls = class_of(slot_size);
  const int rc = cls == kNil ? KVTIER_ERR_NO_SPACE : take_slot(cls, pid, node);
  if (rc != KVTIER_OK) {
    ++h().errors;
    return rc;
  }
  Node& x = mut(*node);
  x.key_hi = id.hi;
  x.key_lo = id.lo;
  x.state = kReserved;
  x.owner = pid;
  x.owner_start = start;
  x.seq = h().seq++;
  insert(*node);
  ++h().reserved;
  return KVTIER_OK;
}

uint32_t SharedIndex::find_for_write(KeyId id, int32_t self) {
  const uint32_t n = find(id);
  if (n == kNil) return kNil;
  const Node& x = mut(n);
  if (x.state != kReserved || x.owner == self || !process_stalled(x.owner, x.owner_start)) return n;
  release(n);
  return kNil;
}

void SharedIndex::commit(uint32_t n, uint64_t length, uint64_t checksum, uint64_t stored,
                         bool compressed, uint16_t rotation) {
  Node& x = mut(n);
  if (x.state != kReserved) return;
  x.length = length;
  x.checksum = checksum;
  x.stored = stored;
  x.compressed = compressed;
  x.rotation = rotation;
  x.state = kLive;
  --h().reserved;
  ++h().keys;
  lru_push_front(n);
}

void SharedIndex::release(uint32_t n) {
  Node& x = mut(n);
  // Before the slot can be handed out again: a stale record left behind would bring back an
  // evicted, removed or overwritten page after a restart.
  if (!files_ || !files_->clear_record(klass(x.cls).slot_size, x.slot))
    log().warn("file tier: cannot clear a record in {}: {}", dir_, std::strerror(errno));
  if (x.state == kLive) {
    lru_unlink(n);
    --h().keys;
  } else if (x.state == kReserved) {
    --h().reserved;
  }
  if (x.state != kFree) {
    erase(n);
    h().live_bytes -= std::min(h().live_bytes, klass(x.cls).slot_size);
  }
  push_free(n);
}

void SharedIndex::evict_one() {
  release(h().lru_tail);
  ++h().evictions;
}

bool SharedIndex::evict_from_class(uint32_t cls) {
  uint64_t steps = 0;  // bounded: the list is in shared memory
  for (uint32_t n = h().lru_tail; n != kNil && ++steps <= map_.max_nodes; n = mut(n).prev) {
    if (mut(n).cls != cls) continue;
    release(n);
    ++h().evictions;
    return true;
  }
  return false;
}

void SharedIndex::reclaim_dead(int32_t self) {
  for (uint64_t n = 0; n < h().nodes_used && h().reserved; ++n) {
    const Node& x = mut(static_cast<uint32_t>(n));
    if (x.state == kReserved && x.owner != self && process_stalled(x.owner, x.owner_start))
      release(static_cast<uint32_t>(n));
  }
}

int SharedIndex::grow(uint32_t cls) {
  ClassInfo& c = klass(cls);
  // Disk follows the bytes stored: a class's files grow by what they hold already (doubling
  // from one slot, so a class with one page takes one slot), in steps of at most kGrowBytes and
  // a slice of the budget, and all classes' files together stay within the capacity: past it,
  // this class's least recently used page gives up its slot, or the files grow by one slot.
  uint64_t files = 0;
  for (uint32_t k = 0; k < h().nclasses; ++k) files += klass(k).file_slots * klass(k).slot_size;
  if (files + c.slot_size > h().capacity && evict_from_class(cls)) return KVTIER_OK;
  const uint64_t step = std::min({kGrowBytes, h().capacity / 16, c.file_slots * c.slot_size,
                                  h().capacity > files ? h().capacity - files : 0});
  uint64_t added = 0;
  const int err = files_ ? files_->extend(c.slot_size, c.file_slots, step, &added) : EBADF;
  if (err == 0) {
    c.file_slots += added;
    return KVTIER_OK;
  }
  if (err == EBADF) return KVTIER_ERR_IO;  // the class's files cannot be opened (said there)
  // The disk is full: reuse the slot of this size class's least recently used page.
  if (evict_from_class(cls)) return KVTIER_OK;
  log().warn("file tier: cannot grow {}/pages-{}.dat: {}", dir_, c.slot_size, std::strerror(err));
  return err == ENOSPC || err == EDQUOT || err == EFBIG ? KVTIER_ERR_NO_SPACE : KVTIER_ERR_IO;
}

int SharedIndex::take_slot(uint32_t cls, int32_t pid, uint32_t* node) {
  ClassInfo& c = klass(cls);
  if (c.slot_size > h().capacity) return KVTIER_ERR_NO_SPACE;
  for (uint64_t k = 0;
       h().live_bytes + c.slot_size > h().capacity && h().lru_tail != kNil && k < map_.max_nodes;
       ++k)
    evict_one();
  if (h().live_bytes + c.slot_size > h().capacity) reclaim_dead(pid);
  if (h().live_bytes + c.slot_size > h().capacity) return KVTIER_ERR_NO_SPACE;  // all in flight
  uint32_t n = pop_free(cls);
  if (n == kNil) {
    if (c.used_slots == c.file_slots) {
      if (const int rc = grow(cls)) return rc;
      n = pop_free(cls);  // grow() may have freed one instead
    }
  }
  if (n == kNil) {
    n = new_node();
    // Nodes are bound to slots; when all are handed out, a free one of another class moves
    // here (its old slot stays unused until a clear or a fresh open). One exists: every node
    // in use holds at least 4 KiB of the capacity, and there are more nodes than that allows.
    // (A disk too full for the index's next nodes: the same, or this class's LRU page.)
    for (uint32_t k = 0; n == kNil && k < h().nclasses; ++k) n = pop_free(k);
    if (n != kNil) {
      Node& x = mut(n);
      x.cls = cls;
      x.slot = c.used_slots++;
    } else if (evict_from_class(cls)) {
      n = pop_free(cls);
    } else {
      return KVTIER_ERR_NO_SPACE;
    }
  }
  h().live_bytes += c.slot_size;
  *node = n;
  return KVTIER_OK;
}

bool SharedIndex::writes_held(int32_t self) {
  IndexHeader& x = h();
  if (x.clearing && (x.clearing == self || !process_stalled(x.clearing, x.clearing_start)))
    return true;
  x.clearing = 0;
  return false;
}

bool SharedIndex::begin_clear(int32_t pid, uint64_t start) {
  IndexHeader& x = h();
  if (x.clearing && x.clearing != pid && !process_stalled(x.clearing, x.clearing_start))
    return false;
  x.clearing = pid;
  x.clearing_start = start;
  return true;
}

void SharedIndex::end_clear() {
  h().clearing = 0;
}

std::vector<FoundSlot> SharedIndex::writes_in_flight() {
  std::vector<FoundSlot> found;
  for (uint64_t n = 0; n < std::min(h().nodes_used, map_.max_nodes); ++n) {
    // The index may be damaged: only writes of a class with a slot size kept.
    const Node& x = mut(static_cast<uint32_t>(n));
    if (x.state != kReserved || x.cls >= classes()) continue;
    const uint64_t size = h().classes[x.cls].slot_size;
    if (size >= kPage && size % kPage == 0 && !process_gone(x.owner, x.owner_start))
      found.push_back({x, size, true});
  }
  return found;
}

uint32_t SharedIndex::add_class(uint64_t slot_size, uint64_t slots) {
  const uint32_t cls = class_of(slot_size);
  if (cls != kNil) h().classes[cls].file_slots = h().classes[cls].used_slots = slots;
  return cls;
}

void SharedIndex::place(std::vector<FoundSlot>& found) {
  IndexHeader& x = h();
  // Writes in flight first, then the pages oldest first (the newest end at the LRU front).
  std::stable_sort(found.begin(), found.end(), [](const FoundSlot& a, const FoundSlot& b) {
    return a.kept != b.kept ? a.kept : a.node.seq < b.node.seq;
  });
  std::vector<std::vector<uint8_t>> used(classes());  // per class, per slot
  for (uint32_t cls = 0; cls < used.size(); ++cls) used[cls].assign(x.classes[cls].used_slots, 0);
  for (const FoundSlot& f : found) {
    x.seq = std::max(x.seq, f.node.seq + 1);
    const uint32_t cls = class_index(f.slot_size);
    if (cls == kNil || f.node.slot >= used[cls].size() || used[cls][f.node.slot]) continue;
    const uint32_t n = find(f.node.key()) == kNil ? new_node() : kNil;
    if (n == kNil) {
      // A second copy of a key (the first one written is the one served), or more pages
      // than the capacity holds: the record goes.
      if (!f.kept && files_) files_->clear_record(f.slot_size, f.node.slot);
      continue;
    }
    mut(n) = f.node;
    mut(n).cls = cls;
    used[cls][f.node.slot] = 1;
    insert(n);
    x.live_bytes += f.slot_size;
    if (f.kept) {
      ++x.reserved;
    } else {
      lru_push_front(n);
      ++x.keys;
    }
  }
  for (uint32_t cls = 0; cls < used.size(); ++cls)
    for (uint64_t slot = 0; slot < used[cls].size(); ++slot) {
      if (used[cls][slot]) continue;
      const uint32_t n = new_node();
      if (n == kNil) break;  // the rest stay unused until a clear
      mut(n).cls = cls;
      mut(n).slot = slot;
      push_free(n);
    }
  while (x.live_bytes > x.capacity && x.lru_tail != kNil) evict_one();
}

}  // namespace kvtier
