// The page index every process on a namespace shares: a header with the geometry and a
// process-shared robust mutex, one node per slot of the page files (key, length, checksum,
// sequence number, state, owner), an LRU list, per-class free lists and hash chains from key to
// node threaded through the nodes, and the chains' heads. Everything in it is touched only under
// the mutex, held briefly and never across page I/O. The on-disk records stay the durable truth:
// the index is rebuilt from them by the first process to open the namespace, by the next locker
// when a holder died, and by whoever finds it damaged.
//
// The index is not a file in the folder: a careless neighbour could truncate one under the
// processes that map it (SIGBUS in each of them). It is a memfd sealed against shrinking and
// growing, reached by the processes that join it through /proc/<pid>/fd of a member; "INDEX" in
// the folder only names its members (the roster). A roster that is missing, damaged or names no
// live member is rewritten by the members, and one that names another index makes them join it;
// every value read from the index itself is bounds-checked before it is used as a node, a class
// or a count. Its processes are those of one pid namespace (its pids mean nothing in another)
// and one kvtier index version (its layout differs between them): each holds a claim in the
// folder naming both, and an open while a claim of another namespace or version is held is
// refused.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "src/keys.h"
#include "src/status.h"
#include "src/tier.h"

namespace kvtier {

constexpr uint32_t kNil = UINT32_MAX;         // no node
constexpr uint32_t kMaxClasses = 64;          // size classes one namespace can hold
constexpr uint64_t kGrowBytes = 64ull << 20;  // page files grow by fallocate in steps of this

enum NodeState : uint8_t { kFree = 0, kReserved = 1, kLive = 2 };

// One slot of one size class's page file.
struct Node {
  uint64_t key_hi, key_lo;
  uint64_t length;    // the page's bytes
  uint64_t checksum;  // XXH3-64 of the page bytes
  uint64_t seq;       // later writes win; identifies this write of the key
  uint64_t stored;    // bytes in the slot (the zstd frame's size when compressed)
  uint64_t slot;      // the slot's number in its class's files
  uint32_t cls;
  uint32_t prev, next;   // LRU list when live; `next` links the free list when free
  int32_t owner;         // pid that reserved the slot for a write in flight
  uint32_t hnext;        // the next node (+1) of its hash chain; 0: the last
  uint64_t owner_start;  // the owner's start time (a pid can be reused; the pair cannot)
  uint8_t state;         // NodeState
  uint8_t compressed;
  uint16_t rotation;  // of the page in its slot (codec.h)
  uint8_t pad[4];
  KeyId key() const { return {key_hi, key_lo}; }
};
static_assert(sizeof(Node) == 96);

struct ClassInfo {
  uint64_t slot_size;
  uint64_t file_slots;  // slots the files have room for
  uint64_t used_slots;  // slots that have a node (high-water mark)
  uint32_t free_head;   // free nodes of this class
  uint32_t pad;
};

struct IndexHeader {
  uint32_t magic, version;
  uint64_t capacity, max_nodes, table_size;  // geometry, fixed when the index is made
  pthread_mutex_t mu;                        // process-shared, robust
  uint64_t seq;                              // next sequence number
  uint64_t live_bytes;                       // slots held by pages and by writes in flight
  uint64_t keys, reserved;                   // live and reserved nodes
  uint64_t nodes_used;                       // nodes handed out so far (a bump allocator)
  uint64_t nodes_room;                       // nodes the memfd has memory for
  uint64_t evictions, errors, recoveries;
  int32_t clearing;         // pid of a clear() waiting for writes in flight; 0: none
  uint64_t clearing_start;  // and its start time
  uint32_t lru_head, lru_tail;
  uint32_t nclasses;
  ClassInfo classes[kMaxClasses];
};

struct Member;  // of the roster

// A page or a write in flight that a rebuild found in the records, to be placed in the index.
struct FoundSlot {
  Node node;           // its class is that of slot_size once placed
  uint64_t slot_size;  // of its class
  bool kept;           // a write in flight of a live process: reserved, not live
};

// What the index asks of the page files when a slot changes hands; the index itself does no
// disk I/O. (The unit test gives it files in memory.)
class SlotFiles {
 public:
  virtual ~SlotFiles() = default;
  // Zeroes the record of `slot` of the class of `slot_size`, so no restart brings back what the
  // slot held; false with errno set when it cannot.
  virtual bool clear_record(uint64_t slot_size, uint64_t slot) = 0;
  // Extends the files of the class of `slot_size` (now `file_slots` slots) by about `bytes`, at
  // least one slot: 0 and *added slots, else the errno (EBADF: the files cannot be opened).
  virtual int extend(uint64_t slot_size, uint64_t file_slots, uint64_t bytes, uint64_t* added) = 0;
};

// The shared index is the one place a slot changes state: free -> reserved (a write in flight,
// owned by a process) -> live (a page, on the LRU) -> free (removed, evicted, its writer dead),
// and the rebuild's placement. Callers read nodes; they never write one or a counter.
class SharedIndex {
 public:
  // Joins the index of the namespace in the folder `dir_fd` (a live member's, as "INDEX" names
  // it) or, when there is none, makes one sized for `capacity` and sets *fresh: the caller then
  // fills it from the records. Opens are serialised by a flock on the folder, held until
  // opened(). Later opens use the geometry the first one made (the namespace's capacity).
  // A lock held by another process longer than `timeout_ms` fails the call that waits for it.
  // KVTIER_ERR_UNSUPPORTED when processes of another pid namespace, or of another kvtier index
  // version, have the folder open.
  static Status open(int dir_fd, const std::string& dir, uint64_t capacity, uint64_t timeout_ms,
                     bool* fresh, std::unique_ptr<SharedIndex>* out);
  // An index of this process alone, in memory (no folder, no roster): for the unit test.
  static Status open_private(uint64_t capacity, uint64_t timeout_ms,
                             std::unique_ptr<SharedIndex>* out);
  ~SharedIndex();
  SharedIndex(const SharedIndex&) = delete;
  SharedIndex& operator=(const SharedIndex&) = delete;

  // Rebuilds the index from the records: under the lock when a locker finds its last holder
  // died holding it (EOWNERDEAD) or finds the index damaged (keep_writes: slots reserved by live
  // writers stay theirs), and for an index made anew (keep_writes false).
  void set_recovery(std::function<void(bool keep_writes)> recover) {
    recover_ = std::move(recover);
  }
  // The page files' records and sizes; set before the first Guard. Not owned.
  void set_files(SlotFiles* files) { files_ = files; }
  // Ends the initial open (releases the folder's flock); after the caller filled a fresh index.
  void opened();

  // Holds the lock, if ok(): a lock that another process held for the whole timeout is not
  // taken (the caller fails its keys with KVTIER_ERR_TIMEOUT or answers a miss). If that
  // process is stopped (a debugger, Ctrl-Z), the index is first made anew from the records and
  // published, so the others go on without it; it joins the new one when it resumes.
  class Guard {
   public:
    explicit Guard(SharedIndex& ix);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    bool ok() const { return ok_; }

   private:
    SharedIndex& ix_;
    bool ok_ = false;
  };
  int64_t timeout_ns() const { return timeout_ns_; }

  // All below: REQUIRES a Guard. A node or class number out of range (a damaged index) reads as
  // a scratch entry and marks the index damaged: the Guard rebuilds it before it unlocks.

  // Lookups.
  uint32_t find(KeyId id);  // the node holding id (live or reserved), or kNil
  // find() for a write by process `self`: another's write in flight whose process died or
  // stopped (a debugger, Ctrl-Z) is not waited for: its slot goes back (kNil), and its commit,
  // if it resumes, finds the key no longer its own.
  uint32_t find_for_write(KeyId id, int32_t self);
  const Node& node(uint32_t n) { return mut(n); }
  // A value read from the index is one no process writes: the Guard rebuilds it.
  void mark_damaged() { damaged_ = true; }
  uint32_t classes() const { return std::min(map_.header->nclasses, kMaxClasses); }
  uint64_t slot_size(uint32_t cls) { return klass(cls).slot_size; }
  void touch(uint32_t n);                              // a live node: the most recently used
  uint64_t keys() const { return map_.header->keys; }  // live nodes
  uint64_t reserved() const { return map_.header->reserved; }  // writes in flight
  uint64_t live_bytes() const { return map_.header->live_bytes; }
  uint64_t capacity() const { return map_.header->capacity; }
  TierStats stats() const;

  // The slot life-cycle.
  // A slot of `slot_size` bytes for a write of `id` (not in the index) by process `pid`, started
  // at `start`: LRU pages are evicted, dead writers' slots reclaimed and the class's files grown
  // as needed. KVTIER_OK and *node (reserved; its slot and seq set), else KVTIER_ERR_NO_SPACE
  // (all in flight, or kMaxClasses sizes in use) or KVTIER_ERR_IO (the files cannot grow).
  int reserve(KeyId id, uint64_t slot_size, int32_t pid, uint64_t start, uint32_t* node);
  // A reserved node's page is written and recorded: live for every process. A node live
  // already (a rebuild found its record) stays as it is.
  void commit(uint32_t n, uint64_t length, uint64_t checksum, uint64_t stored, bool compressed,
              uint16_t rotation = 0);
  // Node n (any state) goes free, its record zeroed first.
  void release(uint32_t n);
  // Frees the slots of writers other than `self` that died or stopped mid-write.
  void reclaim_dead(int32_t self);
  void note_error() { ++map_.header->errors; }

  // clear(): it holds new writes back until the writes in flight end.
  // Whether a live clear() holds writes back (the one of `self` too); a stalled one's mark goes.
  bool writes_held(int32_t self);
  // Marks a clear() by `pid`; false while another live process's clear is under way.
  bool begin_clear(int32_t pid, uint64_t start);
  void end_clear();  // a clear() that gave up: the writes held back go on

  // Empties the whole index: no nodes, keys or classes (the header's geometry stays). With
  // !table_trusted (a holder died mid-update, or damage) the whole table is zeroed, else only
  // the entries of nodes in use.
  void reset(bool table_trusted);

  // The rebuild: writes_in_flight() (of live writers), reset(), add_class() per class found,
  // place().
  std::vector<FoundSlot> writes_in_flight();
  // A class of `slot_size` whose files hold `slots` slots; kNil when kMaxClasses are in use.
  uint32_t add_class(uint64_t slot_size, uint64_t slots);
  // Gives every write in flight and every page found a node (the first written of two copies of
  // a key is kept, the other's record zeroed), then the free slots; evicts past the capacity.
  void place(std::vector<FoundSlot>& found);

 private:
  // One mapping of one index (a process maps another one when the roster names another).
  struct Map {
    int fd = -1;  // the memfd
    void* base = nullptr;
    size_t len = 0;
    uint64_t dev = 0, ino = 0;
    IndexHeader* header = nullptr;
    Node* nodes = nullptr;
    uint32_t* table = nullptr;  // the first node (+1) of each hash chain; 0: empty
    uint64_t table_size = 0, max_nodes = 0, nodes_off = 0, capacity = 0;
  };
  SharedIndex() = default;
  static void unmap(Map& m);
  Status create(uint64_t capacity, Map* m);  // a new, sealed index
  bool attach(const Member& who, Map* m);    // a member's index, if it is one
  bool join(Map* m, uint64_t skip_ino = 0);  // the index the roster names (not skip_ino), if any
  // Maps a new index in place of one whose lock thread `holder` (stopped) holds.
  bool abandon(uint64_t stuck_ino, int32_t holder);
  Status claim_pid_namespace();  // at open: refused if others() hold the folder
  Status keep_pid_namespace();   // this process's claim, made again if deleted
  // Whether processes of another pid namespace or index version hold the folder: KVTIER_OK, or
  // KVTIER_ERR_UNSUPPORTED saying who. REQUIRES the folder's flock.
  Status others();
  void publish();                            // the roster: this process and its index's members
  void check_roster();                       // now and then: rejoin or republish
  bool lock(int32_t* holder);  // false at the deadline, *holder then the thread that holds it
  void repair();               // rebuilds the index from the records (recover_), under the lock
  bool sane();                 // the header's values are in range (else the index is rebuilt)
  size_t home(KeyId id) const { return (id.lo ^ (id.hi >> 7)) & (map_.table_size - 1); }
  bool allocate(uint64_t off, uint64_t len);  // memory for that range of the index
  Node& scratch_node();
  ClassInfo& scratch_class();

  // The parts of the life-cycle; all REQUIRE a Guard.
  IndexHeader& h() { return *map_.header; }
  // node(), to change.
  Node& mut(uint32_t n) { return n < map_.max_nodes ? map_.nodes[n] : scratch_node(); }
  ClassInfo& klass(uint32_t c) { return c < classes() ? map_.header->classes[c] : scratch_class(); }
  void insert(uint32_t n);  // maps node n's key to n; the key is not mapped yet
  void erase(uint32_t n);   // unmaps node n's key
  void lru_push_front(uint32_t n);
  void lru_unlink(uint32_t n);
  void push_free(uint32_t n);
  uint32_t pop_free(uint32_t cls);  // kNil when the class has no free node
  // A node never used, or kNil when all are handed out or there is no memory for more.
  uint32_t new_node();
  uint32_t class_index(uint64_t slot_size);  // kNil when no class has that size
  // The class of `slot_size`, added when new; kNil when kMaxClasses are in use.
  uint32_t class_of(uint64_t slot_size);
  // A free node of the class for a write of `pid`: 0 or a code.
  int take_slot(uint32_t cls, int32_t pid, uint32_t* node);
  int grow(uint32_t cls);  // room for more slots in the class's files
  void evict_one();
  bool evict_from_class(uint32_t cls);

  int dir_fd_ = -1;   // the namespace folder (O_PATH, the caller's)
  int lock_fd_ = -1;  // the same folder, readable: opens flock it
  // pidns-<inode>.v<version>: a shared flock on it claims the folder for this pid namespace and
  // index version
  int ns_fd_ = -1;
  std::string ns_name_;
  std::string dir_;
  Map map_;
  std::shared_mutex swap_mu_;  // shared by a Guard; exclusive to map another index
  // One thread of this process at a time reads the roster or maps another index (the folder's
  // flock is this process's as a whole, not a thread's).
  std::mutex roster_mu_;
  std::atomic<int64_t> next_check_{0};  // steady-clock ns of the next roster check
  bool damaged_ = false;                // a value out of range met under the lock
  bool others_logged_ = false;          // others() came in beside this process
  bool kept_stuck_logged_ = false;      // abandon() refused beside others()
  Node scratch_node_{};
  ClassInfo scratch_class_{};
  int64_t timeout_ns_ = 0;
  std::atomic<bool> stalled_{false};  // the last wait timed out: the next ones wait briefly
  std::function<void(bool)> recover_;
  SlotFiles* files_ = nullptr;
};

// The start time of process `pid` (clock ticks after boot), 0 if it is gone or a zombie.
uint64_t process_start(int32_t pid);
// Whether process `pid`, started at `start`, is gone (what it reserved can be taken back).
inline bool process_gone(int32_t pid, uint64_t start) {
  return pid <= 0 || process_start(pid) != start;
}
// Whether process or thread `id` is stopped (SIGSTOP, Ctrl-Z, a debugger): it makes no progress
// until someone resumes it.
bool process_stopped(int32_t id);
// Gone or stopped: a write it reserved, or a clear it began, is not waited for.
inline bool process_stalled(int32_t pid, uint64_t start) {
  return process_gone(pid, start) || process_stopped(pid);
}

}  // namespace kvtier
