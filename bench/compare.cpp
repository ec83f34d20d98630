// compare: the old copying interface against the zero-copy one, on engine-shaped host pools.
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

// ---- compare ------------------------------------------------------------------------------

struct Shape {
  std::string name;
  kvtier_pool_layout_t layout{};
  size_t page_bytes = 0;
  size_t pool_bytes = 0;
};

Shape make_shape(const std::string& name, size_t pages) {
  Shape s;
  s.name = name;
  kvtier_pool_layout_t& l = s.layout;
  l.struct_size = sizeof l;
  const bool mla = name.rfind("mla_", 0) == 0;
  const std::string order = name.substr(4);
  l.pool_kind = mla ? KVTIER_POOL_MLA : KVTIER_POOL_MHA;
  if (order == "layer_first")
    l.layout = KVTIER_LAYOUT_LAYER_FIRST;
  else if (order == "page_first")
    l.layout = KVTIER_LAYOUT_PAGE_FIRST;
  else if (order == "page_first_direct")
    l.layout = KVTIER_LAYOUT_PAGE_FIRST_DIRECT;
  else
    die("unknown layout " + name);
  l.page_size = 64;
  l.dtype_size = 2;  // bf16
  if (mla) {         // DeepSeek-V3-like: 61 layers, kv_lora_rank 512 + rope 64
    l.layer_num = 61;
    l.kv_cache_dim = 576;
  } else {  // Llama-3-8B-like: 28 layers, 8 KV heads, head_dim 128
    l.layer_num = 28;
    l.head_num = 8;
    l.head_dim = 128;
  }
  l.pool_tokens = pages * l.page_size;
  const size_t token = mla ? size_t{l.kv_cache_dim} * 2 : size_t{l.head_num} * l.head_dim * 2;
  s.page_bytes = (mla ? 1 : 2) * size_t{l.layer_num} * l.page_size * token;
  s.pool_bytes = s.page_bytes / l.page_size * l.pool_tokens;
  return s;
}

std::vector<int64_t> page_slots(size_t first_page, size_t pages, size_t page_size) {
  std::vector<int64_t> slots;
  for (size_t p = first_page; p < first_page + pages; ++p)
    for (size_t t = 0; t < page_size; ++t) slots.push_back(static_cast<int64_t>(p * page_size + t));
  return slots;
}

namespace {

// The engine-shaped pool, the old path's staging pages and the store both are compared on.
struct ComparePool {
  Shape sh;
  Buffer pool_mem;
  Buffer staging;  // the old path's flat pages
  std::byte* base = nullptr;
  kvtier_store_t* store = nullptr;
  size_t per_page = 0;  // fragments per page

  ComparePool(const Options& o, const std::string& tier, const std::string& shape_name,
              size_t max_batch);
  ~ComparePool() { kvtier_close(store); }
  ComparePool(const ComparePool&) = delete;
  ComparePool& operator=(const ComparePool&) = delete;
};

// Pages [0, B) are sources, [B, 2B) targets, B the largest batch.
ComparePool::ComparePool(const Options& o, const std::string& tier, const std::string& shape_name,
                         size_t max_batch)
    : sh(make_shape(shape_name, 2 * max_batch)),
      pool_mem(sh.pool_bytes + 8192),
      staging(max_batch * sh.page_bytes) {
  base = pool_mem.base + (o.aligned ? 0 : 64);
  sh.layout.base = base;
  progress("compare " + tier + " " + shape_name + ": filling a " +
           std::to_string(sh.pool_bytes >> 20) + " MiB pool with random bytes");
  pool_mem.randomize(3);
  staging.randomize(4);
  check_rc(kvtier_open(tier_config(tier, max_batch * sh.page_bytes).c_str(), &store), "open");
  check_rc(kvtier_register_buffer(store, base, sh.pool_bytes), "register_buffer");
  check_rc(kvtier_register_layout(store, &sh.layout), "register_layout");
  check_rc(kvtier_page_fragments(store, &per_page), "page_fragments");
}

// One way of moving a batch of pages between the pool and the store.
struct ComparePath {
  const char* name;
  std::function<void()> write, read;
};

// One batch of the pool's pages: their keys, token slots and fragments (what an engine hands
// the store) and the old path's flat copies of them in staging.
class CompareBatch {
 public:
  CompareBatch(ComparePool& pool, size_t batch, size_t max_batch);
  CompareBatch(const CompareBatch&) = delete;  // the paths point into it
  CompareBatch& operator=(const CompareBatch&) = delete;

  size_t size() const { return batch_; }
  size_t bytes() const { return batch_ * pool_.sh.page_bytes; }
  std::vector<ComparePath> paths();
  void clear();
  void scribble();
  void verify() const;
  void populate();
  void check_stored() const;

 private:
  void all_ok(const char* what) const;
  void gather();
  void scatter();
  ComparePath old_path();
  ComparePath fragments_path();
  ComparePath slots_path();

  ComparePool& pool_;
  kvtier_store_t* store_;
  size_t batch_, per_page_;
  std::vector<std::string> keys_;
  std::vector<const char*> ck_;
  std::vector<int64_t> src_slots_, dst_slots_;
  std::vector<void*> src_ptrs_, dst_ptrs_;
  std::vector<size_t> src_sizes_, dst_sizes_;
  std::vector<void*> flat_;
  std::vector<size_t> flat_sizes_;
  std::vector<int> res_;
  std::vector<int64_t> gres_;
};

CompareBatch::CompareBatch(ComparePool& pool, size_t batch, size_t max_batch)
    : pool_(pool),
      store_(pool.store),
      batch_(batch),
      per_page_(pool.per_page),
      keys_(make_keys(pool.sh.name, batch)),
      ck_(c_keys(keys_)),
      src_slots_(page_slots(0, batch, pool.sh.layout.page_size)),
      dst_slots_(page_slots(max_batch, batch, pool.sh.layout.page_size)),
      src_ptrs_(batch * per_page_),
      dst_ptrs_(batch * per_page_),
      src_sizes_(batch * per_page_),
      dst_sizes_(batch * per_page_),
      flat_(batch),
      flat_sizes_(batch, pool.sh.page_bytes),
      res_(batch),
      gres_(batch) {
  check_rc(kvtier_get_page_buffer_meta(store_, src_slots_.data(), src_slots_.size(),
                                       src_ptrs_.data(), src_sizes_.data(), src_ptrs_.size()),
           "get_page_buffer_meta");
  check_rc(kvtier_get_page_buffer_meta(store_, dst_slots_.data(), dst_slots_.size(),
                                       dst_ptrs_.data(), dst_sizes_.data(), dst_ptrs_.size()),
           "get_page_buffer_meta");
  for (size_t i = 0; i < batch; ++i) flat_[i] = pool_.staging.base + i * pool_.sh.page_bytes;
}

void CompareBatch::all_ok(const char* what) const {
  for (int r : res_)
    if (r != KVTIER_OK) die(std::string(what) + ": a key failed with " + kvtier_error_name(r));
}

// Engine-side helpers of the old path: its per-page copies into and out of staging.
void CompareBatch::gather() {
  for (size_t i = 0; i < batch_; ++i) {
    std::byte* dst = static_cast<std::byte*>(flat_[i]);
    for (size_t f = 0; f < per_page_; ++f) {
      std::memcpy(dst, src_ptrs_[i * per_page_ + f], src_sizes_[i * per_page_ + f]);
      dst += src_sizes_[i * per_page_ + f];
    }
  }
}

void CompareBatch::scatter() {
  for (size_t i = 0; i < batch_; ++i) {
    const std::byte* src = static_cast<std::byte*>(flat_[i]);
    for (size_t f = 0; f < per_page_; ++f) {
      std::memcpy(dst_ptrs_[i * per_page_ + f], src, dst_sizes_[i * per_page_ + f]);
      src += dst_sizes_[i * per_page_ + f];
    }
  }
}

void CompareBatch::clear() {
  check_rc(kvtier_clear(store_), "clear");
}

// Target pages get a fresh pattern before each read so a read that does nothing fails.
void CompareBatch::scribble() {
  for (size_t i = 0; i < dst_ptrs_.size(); ++i)
    stream_fill(static_cast<std::byte*>(dst_ptrs_[i]), std::byte{0xA5}, dst_sizes_[i]);
}

void CompareBatch::verify() const {
  for (size_t i = 0; i < src_ptrs_.size(); ++i)
    if (std::memcmp(src_ptrs_[i], dst_ptrs_[i], src_sizes_[i]) != 0)
      die("read-back differs from what was written (" + pool_.sh.name + ", batch " +
          std::to_string(batch_) + ")");
}

// The batch stored (by the fastest path) for the reads to find.
void CompareBatch::populate() {
  clear();
  check_rc(kvtier_batch_set_v1_slots(store_, ck_.data(), batch_, src_slots_.data(),
                                     src_slots_.size(), res_.data()),
           "batch_set_v1_slots");
  all_ok("populate");
}

void CompareBatch::check_stored() const {
  size_t hits = 0;
  check_rc(kvtier_batch_exists(store_, ck_.data(), batch_, &hits), "exists");
  if (hits != batch_) die("write did not store every key");
}

// The old interface: whole pages copied through staging by the engine.
ComparePath CompareBatch::old_path() {
  return {"old (gather+batch_set)",
          [this] {
            gather();
            check_rc(kvtier_batch_set(store_, ck_.data(), batch_,
                                      const_cast<const void* const*>(flat_.data()),
                                      flat_sizes_.data(), res_.data()),
                     "batch_set");
            all_ok("batch_set");
          },
          [this] {
            check_rc(kvtier_batch_get(store_, ck_.data(), batch_, flat_.data(), flat_sizes_.data(),
                                      gres_.data()),
                     "batch_get");
            for (int64_t r : gres_)
              if (r != static_cast<int64_t>(pool_.sh.page_bytes)) die("batch_get: a key missed");
            scatter();
          }};
}

// Zero-copy with the fragments looked up on every batch, as an engine without slots does.
ComparePath CompareBatch::fragments_path() {
  return {
      "v1 fragments",
      [this] {
        check_rc(kvtier_get_page_buffer_meta(store_, src_slots_.data(), src_slots_.size(),
                                             src_ptrs_.data(), src_sizes_.data(), src_ptrs_.size()),
                 "meta");
        check_rc(kvtier_batch_set_v1(store_, ck_.data(), batch_, src_ptrs_.data(),
                                     src_sizes_.data(), src_ptrs_.size(), res_.data()),
                 "batch_set_v1");
        all_ok("batch_set_v1");
      },
      [this] {
        check_rc(kvtier_get_page_buffer_meta(store_, dst_slots_.data(), dst_slots_.size(),
                                             dst_ptrs_.data(), dst_sizes_.data(), dst_ptrs_.size()),
                 "meta");
        check_rc(kvtier_batch_get_v1(store_, ck_.data(), batch_, dst_ptrs_.data(),
                                     dst_sizes_.data(), dst_ptrs_.size(), res_.data()),
                 "batch_get_v1");
        all_ok("batch_get_v1");
      }};
}

// Zero-copy from token slots: the store finds the fragments itself.
ComparePath CompareBatch::slots_path() {
  return {"v1 token slots",
          [this] {
            check_rc(kvtier_batch_set_v1_slots(store_, ck_.data(), batch_, src_slots_.data(),
                                               src_slots_.size(), res_.data()),
                     "batch_set_v1_slots");
            all_ok("batch_set_v1_slots");
          },
          [this] {
            check_rc(kvtier_batch_get_v1_slots(store_, ck_.data(), batch_, dst_slots_.data(),
                                               dst_slots_.size(), res_.data()),
                     "batch_get_v1_slots");
            all_ok("batch_get_v1_slots");
          }};
}

// The old path first: the others' speedups are over it.
std::vector<ComparePath> CompareBatch::paths() {
  return {old_path(), fragments_path(), slots_path()};
}

void push_compare(const std::string& tier, const Shape& sh, const char* path, const char* op,
                  size_t batch, const Figure& fig, double limit, double old_gbps) {
  Row row;
  row.kind = "compare";
  row.tier = tier;
  row.shape = sh.name;
  row.path = path;
  row.op = op;
  row.batch = batch;
  row.block = sh.page_bytes;
  row.fig = fig;
  row.limit_gbps = limit;
  row.limit_name = "memcpy";
  row.speedup = fig.gbps / old_gbps;
  row.verified = std::string(op) == "read" ? "bytes" : "codes";
  g_rows.push_back(row);
}

// Every path's write and read of one batch, each a row next to memcpy of the same pages.
void compare_batch(const Options& o, const std::string& tier, const ComparePool& pool,
                   CompareBatch& b) {
  const size_t batch = b.size();
  const std::vector<ComparePath> paths = b.paths();
  const double limit = memcpy_gbps(o, pool.sh.page_bytes, std::min<size_t>(batch, 64), 1);
  double old_w = 0, old_r = 0;
  for (const ComparePath& p : paths) {
    progress("compare " + tier + " " + pool.sh.name + " batch " + std::to_string(batch) + ": " +
             p.name);
    // Writes: the store is emptied first, so nothing is skipped as already present.
    Figure w = measure(
        o, b.bytes(), [&] { b.clear(); }, p.write, [&] { b.check_stored(); });
    b.populate();
    Figure r = measure(
        o, b.bytes(), [&] { b.scribble(); }, p.read, [&] { b.verify(); });
    if (old_w == 0) {
      old_w = w.gbps;
      old_r = r.gbps;
    }
    push_compare(tier, pool.sh, p.name, "write", batch, w, limit, old_w);
    push_compare(tier, pool.sh, p.name, "read", batch, r, limit, old_r);
  }
}

}  // namespace

void run_compare(const Options& o, const std::string& tier, const std::string& shape_name) {
  const size_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  ComparePool pool(o, tier, shape_name, max_batch);
  for (size_t batch : o.batches) {
    CompareBatch b(pool, batch, max_batch);
    compare_batch(o, tier, pool, b);
  }
}

}  // namespace kvtier_bench
