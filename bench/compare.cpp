// compare: the old copying interface against the zero-copy one, on engine-shaped host pools.
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench.h"

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

void run_compare(const Options& o, const std::string& tier, const std::string& shape_name) {
  const size_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  Shape sh = make_shape(shape_name, 2 * max_batch);  // pages [0, B) are sources, [B, 2B) targets
  Buffer pool_mem(sh.pool_bytes + 8192);
  std::byte* base = pool_mem.base + (o.aligned ? 0 : 64);
  sh.layout.base = base;
  Buffer staging(max_batch * sh.page_bytes);  // the old path's flat pages
  progress("compare " + tier + " " + shape_name + ": filling a " +
           std::to_string(sh.pool_bytes >> 20) + " MiB pool with random bytes");
  pool_mem.randomize(3);
  staging.randomize(4);

  kvtier_store_t* store = nullptr;
  check_rc(kvtier_open(tier_config(tier, max_batch * sh.page_bytes).c_str(), &store), "open");
  check_rc(kvtier_register_buffer(store, base, sh.pool_bytes), "register_buffer");
  check_rc(kvtier_register_layout(store, &sh.layout), "register_layout");
  size_t per_page = 0;
  check_rc(kvtier_page_fragments(store, &per_page), "page_fragments");

  for (size_t batch : o.batches) {
    const auto keys = make_keys(shape_name, batch);
    const auto ck = c_keys(keys);
    const auto src_slots = page_slots(0, batch, sh.layout.page_size);
    const auto dst_slots = page_slots(max_batch, batch, sh.layout.page_size);
    std::vector<void*> src_ptrs(batch * per_page), dst_ptrs(batch * per_page);
    std::vector<size_t> src_sizes(batch * per_page), dst_sizes(batch * per_page);
    check_rc(kvtier_get_page_buffer_meta(store, src_slots.data(), src_slots.size(), src_ptrs.data(),
                                         src_sizes.data(), src_ptrs.size()),
             "get_page_buffer_meta");
    check_rc(kvtier_get_page_buffer_meta(store, dst_slots.data(), dst_slots.size(), dst_ptrs.data(),
                                         dst_sizes.data(), dst_ptrs.size()),
             "get_page_buffer_meta");
    std::vector<void*> flat(batch);
    std::vector<size_t> flat_sizes(batch, sh.page_bytes);
    for (size_t i = 0; i < batch; ++i) flat[i] = staging.base + i * sh.page_bytes;
    std::vector<int> res(batch);
    std::vector<int64_t> gres(batch);
    const size_t bytes = batch * sh.page_bytes;
    auto all_ok = [&](const char* what) {
      for (int r : res)
        if (r != KVTIER_OK) die(std::string(what) + ": a key failed with " + kvtier_error_name(r));
    };

    // Engine-side helpers of the old path: its per-page copies into and out of staging.
    auto gather = [&] {
      for (size_t i = 0; i < batch; ++i) {
        std::byte* dst = static_cast<std::byte*>(flat[i]);
        for (size_t f = 0; f < per_page; ++f) {
          std::memcpy(dst, src_ptrs[i * per_page + f], src_sizes[i * per_page + f]);
          dst += src_sizes[i * per_page + f];
        }
      }
    };
    auto scatter = [&] {
      for (size_t i = 0; i < batch; ++i) {
        const std::byte* src = static_cast<std::byte*>(flat[i]);
        for (size_t f = 0; f < per_page; ++f) {
          std::memcpy(dst_ptrs[i * per_page + f], src, dst_sizes[i * per_page + f]);
          src += dst_sizes[i * per_page + f];
        }
      }
    };
    auto clear = [&] { check_rc(kvtier_clear(store), "clear"); };
    // Target pages get a fresh pattern before each read so a read that does nothing fails.
    auto scribble = [&] {
      for (size_t i = 0; i < dst_ptrs.size(); ++i)
        stream_fill(static_cast<std::byte*>(dst_ptrs[i]), std::byte{0xA5}, dst_sizes[i]);
    };
    auto verify = [&] {
      for (size_t i = 0; i < src_ptrs.size(); ++i)
        if (std::memcmp(src_ptrs[i], dst_ptrs[i], src_sizes[i]) != 0)
          die("read-back differs from what was written (" + shape_name + ", batch " +
              std::to_string(batch) + ")");
    };
    auto populate = [&] {
      clear();
      check_rc(kvtier_batch_set_v1_slots(store, ck.data(), batch, src_slots.data(),
                                         src_slots.size(), res.data()),
               "batch_set_v1_slots");
      all_ok("populate");
    };

    struct Path {
      const char* name;
      std::function<void()> write, read;
    };
    std::vector<Path> paths = {
        {"old (gather+batch_set)",
         [&] {
           gather();
           check_rc(kvtier_batch_set(store, ck.data(), batch,
                                     const_cast<const void* const*>(flat.data()), flat_sizes.data(),
                                     res.data()),
                    "batch_set");
           all_ok("batch_set");
         },
         [&] {
           check_rc(kvtier_batch_get(store, ck.data(), batch, flat.data(), flat_sizes.data(),
                                     gres.data()),
                    "batch_get");
           for (int64_t r : gres)
             if (r != static_cast<int64_t>(sh.page_bytes)) die("batch_get: a key missed");
           scatter();
         }},
        {"v1 fragments",
         [&] {
           check_rc(kvtier_get_page_buffer_meta(store, src_slots.data(), src_slots.size(),
                                                src_ptrs.data(), src_sizes.data(), src_ptrs.size()),
                    "meta");
           check_rc(kvtier_batch_set_v1(store, ck.data(), batch, src_ptrs.data(), src_sizes.data(),
                                        src_ptrs.size(), res.data()),
                    "batch_set_v1");
           all_ok("batch_set_v1");
         },
         [&] {
           check_rc(kvtier_get_page_buffer_meta(store, dst_slots.data(), dst_slots.size(),
                                                dst_ptrs.data(), dst_sizes.data(), dst_ptrs.size()),
                    "meta");
           check_rc(kvtier_batch_get_v1(store, ck.data(), batch, dst_ptrs.data(), dst_sizes.data(),
                                        dst_ptrs.size(), res.data()),
                    "batch_get_v1");
           all_ok("batch_get_v1");
         }},
        {"v1 token slots",
         [&] {
           check_rc(kvtier_batch_set_v1_slots(store, ck.data(), batch, src_slots.data(),
                                              src_slots.size(), res.data()),
                    "batch_set_v1_slots");
           all_ok("batch_set_v1_slots");
         },
         [&] {
           check_rc(kvtier_batch_get_v1_slots(store, ck.data(), batch, dst_slots.data(),
                                              dst_slots.size(), res.data()),
                    "batch_get_v1_slots");
           all_ok("batch_get_v1_slots");
         }},
    };
    const double limit = memcpy_gbps(o, sh.page_bytes, std::min<size_t>(batch, 64), 1);
    double old_w = 0, old_r = 0;
    for (const Path& p : paths) {
      progress("compare " + tier + " " + shape_name + " batch " + std::to_string(batch) + ": " +
               p.name);
      // Writes: the store is emptied first, so nothing is skipped as already present.
      Figure w = measure(o, bytes, clear, p.write, [&] {
        size_t hits = 0;
        check_rc(kvtier_batch_exists(store, ck.data(), batch, &hits), "exists");
        if (hits != batch) die("write did not store every key");
      });
      populate();
      Figure r = measure(o, bytes, scribble, p.read, verify);
      if (old_w == 0) {
        old_w = w.gbps;
        old_r = r.gbps;
      }
      for (auto [op, fig, base_gbps] :
           {std::tuple{"write", w, old_w}, std::tuple{"read", r, old_r}}) {
        Row row;
        row.kind = "compare";
        row.tier = tier;
        row.shape = shape_name;
        row.path = p.name;
        row.op = op;
        row.batch = batch;
        row.block = sh.page_bytes;
        row.fig = fig;
        row.limit_gbps = limit;
        row.limit_name = "memcpy";
        row.speedup = fig.gbps / base_gbps;
        row.verified = std::string(op) == "read" ? "bytes" : "codes";
        g_rows.push_back(row);
      }
    }
  }
  kvtier_close(store);
}

}  // namespace kvtier_bench
