/* A C program against the public header alone: everything an engine does, and the documented
 * code for each kind of bad input. Compiled as C (not C++). */
#include <kvtier/kvtier.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond)                                                                           \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
              kvtier_last_error());                                                           \
      ++failures;                                                                             \
    }                                                                                         \
  } while (0)

static void fill(unsigned char* p, size_t n, unsigned seed) {
  size_t i;
  srand(seed);
  for (i = 0; i < n; ++i) p[i] = (unsigned char)(rand() & 0xff);
}

int main(void) {
  enum { PAGE = 4096, P = 4, L = 2, H = 2, D = 16, E = 2, S = 32 };
  kvtier_store_t* s = NULL;
  kvtier_store_t* pv = NULL; /* a view with the pool's page format */
  const char* keys[3] = {"c-key-0", "c-key-1", "c-key-2"};
  static unsigned char v0[PAGE], v1[PAGE], out0[PAGE], out1[PAGE];
  const void* vals[2] = {v0, v1};
  size_t sizes[2] = {PAGE, PAGE};
  void* bufs[2] = {out0, out1};
  size_t caps[2] = {PAGE, PAGE};
  int res[3];
  int64_t gres[3];
  size_t hits = 0;
  char* json = NULL;
  unsigned char* pool;
  size_t pool_bytes = (size_t)2 * L * S * H * D * E;
  kvtier_pool_layout_t layout;
  int64_t slots[2 * P];
  void* fptrs[2 * 2 * L];
  size_t fsizes[2 * 2 * L];
  size_t per = 0, i;

  CHECK(kvtier_version_number() == KVTIER_VERSION_NUMBER);
  CHECK(strcmp(kvtier_error_name(KVTIER_ERR_NOT_FOUND), "KVTIER_ERR_NOT_FOUND") == 0);

  /* Open from the environment. */
  setenv("KVTIER_TIERS", "memory", 1);
  setenv("KVTIER_MEMORY_CAPACITY", "64MiB", 1);
  CHECK(kvtier_open(NULL, &s) == KVTIER_OK);
  if (!s) return 1;

  fill(v0, PAGE, 1);
  fill(v1, PAGE, 2);
  CHECK(kvtier_batch_set(s, keys, 2, vals, sizes, res) == KVTIER_OK);
  CHECK(res[0] == KVTIER_OK && res[1] == KVTIER_OK);
  CHECK(kvtier_batch_get(s, keys, 2, bufs, caps, gres) == KVTIER_OK);
  CHECK(gres[0] == PAGE && gres[1] == PAGE);
  CHECK(memcmp(out0, v0, PAGE) == 0 && memcmp(out1, v1, PAGE) == 0);
  CHECK(kvtier_batch_exists(s, keys, 3, &hits) == KVTIER_OK && hits == 2);

  /* v1 with fragments. */
  CHECK(kvtier_register_buffer(s, v0, PAGE) == KVTIER_OK);
  {
    void* fp[2] = {v0, v0 + 100};
    size_t fs[2] = {100, PAGE - 100};
    const char* k = "c-v1";
    CHECK(kvtier_batch_set_v1(s, &k, 1, fp, fs, 2, res) == KVTIER_OK && res[0] == KVTIER_OK);
    memset(out0, 0, PAGE);
    CHECK(kvtier_batch_get(s, &k, 1, bufs, caps, gres) == KVTIER_OK && gres[0] == PAGE);
    CHECK(memcmp(out0, v0, PAGE) == 0);
  }

  /* v1 with token slots on an MHA layer_first pool. */
  pool = malloc(pool_bytes + 64);
  fill(pool, pool_bytes + 64, 3);
  memset(&layout, 0, sizeof layout);
  layout.struct_size = sizeof layout;
  layout.base = pool + 64;
  layout.pool_kind = KVTIER_POOL_MHA;
  layout.layout = KVTIER_LAYOUT_LAYER_FIRST;
  layout.page_size = P;
  layout.layer_num = L;
  layout.head_num = H;
  layout.head_dim = D;
  layout.dtype_size = E;
  layout.pool_tokens = S;
  layout.dtype_name = "bfloat16";
  CHECK(kvtier_open_view(s, &pv) == KVTIER_OK);
  if (!pv) return 1;
  CHECK(kvtier_register_layout(pv, &layout) == KVTIER_ERR_NOT_REGISTERED);
  CHECK(kvtier_register_buffer(s, pool + 64, pool_bytes) == KVTIER_OK); /* shared by views */
  CHECK(kvtier_register_layout(pv, &layout) == KVTIER_OK);
  CHECK(kvtier_page_fragments(pv, &per) == KVTIER_OK && per == 2 * L);
  CHECK(kvtier_page_fragments(s, &per) == KVTIER_ERR_NO_LAYOUT);
  /* Page identity: keys written through s (no format) are other pages for the pool's view. */
  CHECK(kvtier_batch_exists(pv, keys, 2, &hits) == KVTIER_OK && hits == 0);
  for (i = 0; i < P; ++i) slots[i] = (int64_t)(4 * P + i);     /* page 4 */
  for (i = 0; i < P; ++i) slots[P + i] = (int64_t)(5 * P + i); /* page 5 */
  CHECK(kvtier_batch_set_v1_slots(pv, keys + 1, 2, slots, 2 * P, res) == KVTIER_OK);
  CHECK(res[0] == KVTIER_OK && res[1] == KVTIER_OK);
  CHECK(kvtier_batch_set_v1_slots(pv, keys + 1, 1, slots, P, res) == KVTIER_OK);
  CHECK(res[0] == KVTIER_OK); /* key 1 exists: counts as written */
  CHECK(kvtier_batch_exists(pv, keys + 1, 2, &hits) == KVTIER_OK && hits == 2);
  CHECK(kvtier_get_page_buffer_meta(pv, slots, 2 * P, fptrs, fsizes, 2 * 2 * L) == KVTIER_OK);
  CHECK(fptrs[0] == pool + 64 + (size_t)4 * P * H * D * E && fsizes[0] == (size_t)P * H * D * E);
  for (i = 0; i < P; ++i) slots[i] = (int64_t)i; /* read key 2 into page 0 */
  CHECK(kvtier_batch_get_v1_slots(pv, keys + 2, 1, slots, P, res) == KVTIER_OK);
  CHECK(res[0] == KVTIER_OK);
  CHECK(memcmp(pool + 64, pool + 64 + (size_t)5 * P * H * D * E, (size_t)P * H * D * E) == 0);
  /* Through s, key 1 is still the flat page written at the start. */
  CHECK(kvtier_batch_get(s, keys + 1, 1, bufs, caps, gres) == KVTIER_OK && gres[0] == PAGE);
  CHECK(memcmp(out0, v1, PAGE) == 0);

  /* The same read, asynchronously: submit, then drain the completion (waiting up to 10 s). */
  {
    kvtier_completion_t c;
    size_t n = 0;
    uint64_t id = 0;
    int present[2] = {1, 1};
    int fd = -1;
    for (i = 0; i < P; ++i) slots[i] = (int64_t)(6 * P + i); /* read key 1 into page 6 */
    res[0] = 99;
    CHECK(kvtier_async_fd(pv, &fd) == KVTIER_OK && fd >= 0);
    CHECK(kvtier_submit_get_v1_slots(pv, keys + 1, 1, slots, P, res, 42, &id) == KVTIER_OK);
    CHECK(kvtier_drain(pv, &c, 1, 10000, &n) == KVTIER_OK && n == 1);
    CHECK(c.id == id && c.user_data == 42 && c.op == KVTIER_OP_GET_V1_SLOTS && c.status == 0);
    CHECK(res[0] == KVTIER_OK);
    CHECK(memcmp(pool + 64 + (size_t)6 * P * H * D * E, pool + 64 + (size_t)4 * P * H * D * E,
                 (size_t)P * H * D * E) == 0);
    CHECK(kvtier_submit_exists(pv, keys, 2, present, 43, &id) == KVTIER_OK);
    CHECK(kvtier_drain(pv, &c, 1, 10000, &n) == KVTIER_OK && n == 1 && c.op == KVTIER_OP_EXISTS);
    CHECK(present[0] == KVTIER_ERR_NOT_FOUND && present[1] == KVTIER_OK);
    CHECK(kvtier_cancel(pv, id) == KVTIER_ERR_NOT_FOUND);
    CHECK(strcmp(kvtier_error_name(KVTIER_ERR_CANCELLED), "KVTIER_ERR_CANCELLED") == 0);
  }

  /* Stats and remove. */
  CHECK(kvtier_stats_json(s, &json) == KVTIER_OK && json && strstr(json, "\"tiers\""));
  kvtier_free(json);
  CHECK(kvtier_batch_remove(s, keys, 1, res) == KVTIER_OK && res[0] == KVTIER_OK);
  CHECK(kvtier_batch_exists(s, keys, 3, &hits) == KVTIER_OK && hits == 0);

  /* Bad input: the documented codes. */
  CHECK(kvtier_batch_set(NULL, keys, 1, vals, sizes, res) == KVTIER_ERR_INVALID_ARG);
  CHECK(kvtier_batch_set(s, keys, 0, vals, sizes, res) == KVTIER_ERR_INVALID_ARG);
  CHECK(kvtier_batch_set(s, NULL, 1, vals, sizes, res) == KVTIER_ERR_INVALID_ARG);
  CHECK(res[0] == KVTIER_ERR_INVALID_ARG);
  CHECK(kvtier_batch_get(s, keys, 1, bufs, NULL, gres) == KVTIER_ERR_INVALID_ARG);
  {
    char long_key[KVTIER_MAX_KEY_LEN + 2];
    const char* lk = long_key;
    memset(long_key, 'x', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    CHECK(kvtier_batch_set(s, &lk, 1, vals, sizes, res) == KVTIER_OK);
    CHECK(res[0] == KVTIER_ERR_KEY_TOO_LONG);
  }
  {
    void* fp[1] = {out1}; /* not registered */
    size_t fs[1] = {PAGE};
    const char* k = "c-unreg";
    CHECK(kvtier_batch_set_v1(s, &k, 1, fp, fs, 1, res) == KVTIER_OK);
    CHECK(res[0] == KVTIER_ERR_NOT_REGISTERED);
    CHECK(kvtier_batch_set_v1(s, keys, 2, fp, fs, 1, res) == KVTIER_ERR_INVALID_ARG);
  }
  caps[0] = PAGE - 1;
  CHECK(kvtier_batch_get(s, keys + 1, 1, bufs, caps, gres) == KVTIER_OK);
  CHECK(gres[0] == KVTIER_ERR_BUFFER_TOO_SMALL);
  slots[0] = 1;
  CHECK(kvtier_batch_get_v1_slots(pv, keys + 2, 1, slots, P, res) == KVTIER_OK);
  CHECK(res[0] == KVTIER_ERR_OUT_OF_RANGE);
  CHECK(kvtier_unregister_buffer(s, out1) == KVTIER_ERR_NOT_FOUND);
  kvtier_close(s); /* the view keeps the store open */
  CHECK(kvtier_batch_exists(pv, keys + 1, 2, &hits) == KVTIER_OK && hits == 2);
  kvtier_close(pv);
  kvtier_close(NULL);

  setenv("KVTIER_MEMORY_CAPACITY", "a lot", 1);
  s = NULL;
  CHECK(kvtier_open(NULL, &s) == KVTIER_ERR_CONFIG && s == NULL);
  CHECK(strstr(kvtier_last_error(), "KVTIER_MEMORY_CAPACITY") != NULL);
  free(pool);

  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
