/* Prefill-to-decode through kvtier-server: the prefill program writes pages from its host pool,
 * the decode program (another process, its own pool) reads them into other slots and checks
 * every byte against what the prefill side had. Built twice: PD_ROLE_PREFILL selects the role.
 *
 *   kvtier_pd_prefill HOST:PORT SEED PAGES     kvtier_pd_decode HOST:PORT SEED PAGES
 */
#include <kvtier/kvtier.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P = 16, L = 4, H = 2, D = 64, E = 2, POOL_PAGES = 64 };

static void fill(unsigned char* p, size_t n, unsigned long long seed) {
  unsigned long long x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i;
  for (i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (unsigned char)x;
  }
}

static kvtier_store_t* open_with_pool(const char* config, unsigned char* pool, size_t bytes) {
  kvtier_store_t* s = NULL;
  kvtier_pool_layout_t l;
  if (kvtier_open(config, &s) != KVTIER_OK) {
    fprintf(stderr, "open: %s\n", kvtier_last_error());
    return NULL;
  }
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.base = pool;
  l.pool_kind = KVTIER_POOL_MHA;
  l.layout = KVTIER_LAYOUT_LAYER_FIRST;
  l.page_size = P;
  l.layer_num = L;
  l.head_num = H;
  l.head_dim = D;
  l.dtype_size = E;
  l.pool_tokens = (uint64_t)POOL_PAGES * P;
  if (kvtier_register_buffer(s, pool, bytes) != KVTIER_OK ||
      kvtier_register_layout(s, &l) != KVTIER_OK) {
    fprintf(stderr, "register: %s\n", kvtier_last_error());
    kvtier_close(s);
    return NULL;
  }
  return s;
}

int main(int argc, char** argv) {
  const size_t bytes = (size_t)2 * L * POOL_PAGES * P * H * D * E;
  char config[512], names[POOL_PAGES][32];
  const char* keys[POOL_PAGES];
  int64_t slots[POOL_PAGES * P];
  int results[POOL_PAGES];
  unsigned char* pool = calloc(1, bytes);
  unsigned long long seed;
  size_t n, i, t;
  kvtier_store_t* s;
  if (argc != 4 || !pool) return 2;
  seed = strtoull(argv[2], NULL, 10);
  n = strtoul(argv[3], NULL, 10);
  if (n == 0 || n > POOL_PAGES / 2) return 2;
  snprintf(config, sizeof config, "tiers=remote;remote_servers=%s", argv[1]);
  for (i = 0; i < n; ++i) {
    snprintf(names[i], sizeof names[i], "pd-%llu-%zu", seed, i);
    keys[i] = names[i];
  }
#ifdef PD_ROLE_PREFILL
  fill(pool, bytes, seed);
  s = open_with_pool(config, pool, bytes);
  if (!s) return 1;
  for (i = 0; i < n; ++i) /* pages 0..n-1 */
    for (t = 0; t < P; ++t) slots[i * P + t] = (int64_t)(i * P + t);
  if (kvtier_batch_set_v1_slots(s, keys, n, slots, n * P, results) != KVTIER_OK) return 1;
  for (i = 0; i < n; ++i)
    if (results[i] != KVTIER_OK) {
      fprintf(stderr, "prefill: page %zu: %s\n", i, kvtier_error_name(results[i]));
      return 1;
    }
  printf("prefill: wrote %zu pages\n", n);
#else
  {
    /* The prefill side's pool, rebuilt from the seed, in a store of its own (memory tier), to
     * find each page's bytes through the same layout. */
    unsigned char* expect = malloc(bytes);
    kvtier_store_t* ref;
    void* dp[2 * L];
    void* ep[2 * L];
    size_t ds[2 * L], es[2 * L], hits = 0;
    int64_t one[P];
    fill(expect, bytes, seed);
    ref = open_with_pool("tiers=memory", expect, bytes);
    s = open_with_pool(config, pool, bytes);
    if (!s || !ref) return 1;
    if (kvtier_batch_exists(s, keys, n, &hits) != KVTIER_OK || hits != n) {
      fprintf(stderr, "decode: %zu of %zu pages present\n", hits, n);
      return 1;
    }
    for (i = 0; i < n; ++i) /* into pages POOL_PAGES-1, POOL_PAGES-2, ... */
      for (t = 0; t < P; ++t) slots[i * P + t] = (int64_t)((POOL_PAGES - 1 - i) * P + t);
    if (kvtier_batch_get_v1_slots(s, keys, n, slots, n * P, results) != KVTIER_OK) return 1;
    for (i = 0; i < n; ++i) {
      size_t f;
      if (results[i] != KVTIER_OK) {
        fprintf(stderr, "decode: page %zu: %s\n", i, kvtier_error_name(results[i]));
        return 1;
      }
      for (t = 0; t < P; ++t) one[t] = (int64_t)(i * P + t);
      kvtier_get_page_buffer_meta(ref, one, P, ep, es, 2 * L);
      kvtier_get_page_buffer_meta(s, slots + i * P, P, dp, ds, 2 * L);
      for (f = 0; f < 2 * L; ++f)
        if (ds[f] != es[f] || memcmp(dp[f], ep[f], ds[f]) != 0) {
          fprintf(stderr, "decode: page %zu fragment %zu differs\n", i, f);
          return 1;
        }
    }
    printf("decode: read and verified %zu pages\n", n);
    kvtier_close(ref);
    free(expect);
  }
#endif
  kvtier_close(s);
  free(pool);
  return 0;
}
