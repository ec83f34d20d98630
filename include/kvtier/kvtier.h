/*
 * kvtier: a tiered store for LLM KV-cache pages. The stable C ABI.
 *
 * Conventions (they hold for every call below unless its comment says otherwise):
 *
 *  1. Return codes. Calls return `int`: 0 (KVTIER_OK) on success or a negative KVTIER_ERR_*
 *     code. kvtier_error_name() gives the code's name, kvtier_strerror() a sentence, and
 *     kvtier_last_error() the detail of the last failure on the calling thread.
 *  2. Batches. A batch call takes `n` keys (n >= 1) and fills one result per key. If the call
 *     returns 0 it ran, and each key's result tells how that key fared: bad input in one key
 *     (a NULL, empty or over-long key, a bad fragment) fails that key alone, and
 *     kvtier_last_error() tells the first such failure. If it returns a negative code the call
 *     as a whole was refused (NULL arrays, n == 0, mismatched or impossible counts) or could
 *     not run (out of memory), nothing was read or written, and every result slot (when the
 *     results array is not NULL) holds that code.
 *  3. Keys are NUL-terminated strings of 1..KVTIER_MAX_KEY_LEN bytes. The store hashes them on
 *     entry and keeps no pointer to them after the call returns.
 *  4. Ownership. The caller owns every buffer it passes; the library reads or writes it only
 *     during the call. What the library allocates and hands out (the stats JSON) is released
 *     with kvtier_free(). Zero-copy calls (the _v1 family) read and write the caller's own
 *     memory and require it to lie in a region registered with kvtier_register_buffer().
 *  5. Threads and lifetimes. A store handle may be used from any number of threads at once.
 *     kvtier_close() may come while other threads are inside calls on the handle (an engine
 *     detaching its backend): it waits for them to return, then releases the store; calls that
 *     begin after it fail with KVTIER_ERR_CLOSED, as does a second kvtier_close() (a no-op). The
 *     closed handle's few bytes are kept so a late call reads "closed", not freed memory.
 *     kvtier_unregister_buffer() likewise waits for the calls that may be moving bytes in that
 *     region; calls that begin after it fail the region's keys with KVTIER_ERR_NOT_REGISTERED.
 *     After fork(), a handle opened before it belongs to the parent: in the child every call on
 *     it fails with KVTIER_ERR_CLOSED (kvtier_close() there only forgets it), and the parent is
 *     unaffected; the child opens stores of its own. Every call refuses a NULL handle with
 *     KVTIER_ERR_INVALID_ARG.
 *  6. Nothing is ever written past a buffer's stated size, and no call aborts the process.
 *  7. What a failed read leaves. A key whose get result is not a success was not read: the
 *     caller must not use the bytes of its destination (its buffer's first `capacity` bytes;
 *     for the _v1 calls its fragments). Keys refused by the input checks (INVALID_ARG,
 *     KEY_TOO_LONG, NOT_REGISTERED) are not touched, and a stored size that does not fit
 *     (BUFFER_TOO_SMALL, SIZE_MISMATCH) is found before any byte of that copy moves.
 *     Otherwise a failed key's destination may hold any bytes: reads land in place before they
 *     are checked, so a copy that fails its checksum (reported as KVTIER_ERR_NOT_FOUND when no
 *     other tier has the key) or a transfer cut off midway (IO, UNAVAILABLE, TIMEOUT) leaves
 *     what had arrived. Other keys' destinations, and any byte past a destination's size, are
 *     never written.
 *  8. Destinations of one get batch must not overlap each other. If they do, each key's result
 *     still says truly whether that key was read, but the shared bytes hold an unspecified mix
 *     of the keys' values. Sources of a set batch may overlap (they are only read).
 *  9. ABI. Values of codes and enum constants never change once released; new behaviour gets
 *     new symbols (a _v2 call), never a changed signature. Option structs start with their
 *     own size so they can grow. Each release's new symbols get their own version node
 *     (KVTIER_0 for 0.1 and 0.2, KVTIER_0.3 for the asynchronous calls and
 *     kvtier_batch_size_each).
 * 10. Asynchronous requests (kvtier_submit_*) run on the handle's own worker threads. A request
 *     is *done* once its completion is queued (the handle's fd turns readable; kvtier_drain()
 *     can hand it out), or kvtier_close() returned.
 *     Until then the library may read and write the memory the request names (fragments, the
 *     pool, `results`); from then on nothing of the request touches the caller's memory, ever,
 *     also when it was cancelled or a tier timed out. Conventions 2 to 8 hold for each
 *     request as for the blocking call it mirrors.
 */
#ifndef KVTIER_KVTIER_H_
#define KVTIER_KVTIER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVTIER_BUILDING_LIBRARY)
#define KVTIER_API __attribute__((visibility("default")))
#else
#define KVTIER_API
#endif

/* ---- Version ------------------------------------------------------------------------------ */

#define KVTIER_VERSION_MAJOR 0
#define KVTIER_VERSION_MINOR 3
#define KVTIER_VERSION_PATCH 0
#define KVTIER_VERSION_NUMBER \
  (KVTIER_VERSION_MAJOR * 10000 + KVTIER_VERSION_MINOR * 100 + KVTIER_VERSION_PATCH)

/* @return : KVTIER_VERSION_NUMBER of the library actually loaded. */
KVTIER_API unsigned kvtier_version_number(void);
/* @return : "MAJOR.MINOR.PATCH" of the library actually loaded; static storage. */
KVTIER_API const char* kvtier_version_string(void);

/* ---- Codes (frozen) ----------------------------------------------------------------------- */

#define KVTIER_OK 0
#define KVTIER_ERR_NOT_FOUND -1        /* the key is in no tier (a miss, not a failure) */
#define KVTIER_ERR_INVALID_ARG -2      /* NULL, n == 0, mismatched counts, empty value */
#define KVTIER_ERR_KEY_TOO_LONG -3     /* key longer than KVTIER_MAX_KEY_LEN (or empty) */
#define KVTIER_ERR_NOT_REGISTERED -4   /* a fragment outside registered memory */
#define KVTIER_ERR_BUFFER_TOO_SMALL -5 /* the value does not fit the caller's buffer */
#define KVTIER_ERR_SIZE_MISMATCH -6    /* v1 get: stored value size != fragments' total */
#define KVTIER_ERR_CONFIG -7           /* a KVTIER_* setting is invalid */
#define KVTIER_ERR_NO_SPACE -8         /* no tier could take the value (capacity, ENOSPC) */
#define KVTIER_ERR_IO -9               /* an I/O error in a tier */
#define KVTIER_ERR_CORRUPT -10         /* stored bytes failed their checksum */
#define KVTIER_ERR_UNAVAILABLE -11     /* a remote server cannot be reached */
#define KVTIER_ERR_TIMEOUT -12         /* a server, or a process sharing the file tier, too slow */
#define KVTIER_ERR_NO_MEMORY -13       /* the library could not allocate */
#define KVTIER_ERR_UNSUPPORTED -14     /* not built in, or not possible with this tier (also: a file
                                          tier folder held by another pid namespace) */
#define KVTIER_ERR_NO_LAYOUT -15       /* a slot call before kvtier_register_layout() */
#define KVTIER_ERR_OUT_OF_RANGE -16    /* a token slot outside the pool or not page-aligned */
#define KVTIER_ERR_BUSY -17            /* a server at a limit (connections, leases) */
#define KVTIER_ERR_INTERNAL -18        /* a bug: please report it with kvtier_last_error() */
#define KVTIER_ERR_DENIED -19          /* a server refused token or protocol; an unsafe folder */
#define KVTIER_ERR_CLOSED -20          /* the handle, or a peer's endpoint, is closed; or opened before fork() */
#define KVTIER_ERR_CANCELLED -21       /* an asynchronous request was cancelled (kvtier_cancel) */

#define KVTIER_MAX_KEY_LEN 1024

/* @return : the code's name, e.g. "KVTIER_ERR_NOT_FOUND"; static storage; never NULL. */
KVTIER_API const char* kvtier_error_name(int code);
/* @return : a one-line description of the code; static storage; never NULL. */
KVTIER_API const char* kvtier_strerror(int code);
/* @return : detail of the last failure on this thread ("" if none); valid until the next
 *           kvtier call on this thread. */
KVTIER_API const char* kvtier_last_error(void);

/* Releases memory the library handed out. NULL is fine. */
KVTIER_API void kvtier_free(void* ptr);

/* ---- Store -------------------------------------------------------------------------------- */

typedef struct kvtier_store kvtier_store_t;

/* Opens a store. Settings come from the KVTIER_* environment variables; `config`, when not
 * NULL, overrides them: "NAME=value" pairs separated by ';' or newlines, NAME with or without
 * the KVTIER_ prefix, any case (e.g. "tiers=memory;memory_capacity=1GiB").
 * @return : 0 and *out set, or KVTIER_ERR_CONFIG (the detail names the setting and value), or
 *           another code; *out is NULL on failure. */
KVTIER_API int kvtier_open(const char* config, kvtier_store_t** out);
/* Closes a store: waits for the calls in flight on the handle, then releases what the handle
 * holds (the tiers close with the last handle on them); later calls on it fail with
 * KVTIER_ERR_CLOSED (convention 5). NULL, and a second close, are fine. */
KVTIER_API void kvtier_close(kvtier_store_t* store);

/* ---- Page identity ------------------------------------------------------------------------ */

/* A page's bytes depend on more than its key: the model and the engine's ranks (put them in
 * KVTIER_NAMESPACE) and the page format (pool kind, layout, dtype, dims). Each handle carries a
 * page format that is mixed into every key id of every call made through it (set, get, v1,
 * slots, exists, remove), so pages of one format never read as pages of another, in any tier,
 * in any process, across restarts: a handle with another format sees misses.
 *
 * Opens another handle on the same store: the same tiers, namespace and registered buffers,
 * with no page format and no layout of its own yet. Use one handle per pool (the KV pool, a
 * draft pool, a Mamba state pool, ...). Each is closed with kvtier_close(); the tiers close
 * with the last handle. kvtier_clear() on any handle clears the whole namespace.
 * @return : 0 and *out set, or KVTIER_ERR_INVALID_ARG. */
KVTIER_API int kvtier_open_view(kvtier_store_t* store, kvtier_store_t** out);

/* Sets this handle's page format to `format` (any text that names how the page's bytes are
 * laid out, up to 4096 bytes; NULL or "" means none, the format of a fresh handle). Replaces
 * the format a kvtier_register_layout() set; the layout itself stays for the slot calls.
 * Not to be called while other threads use the handle. */
KVTIER_API int kvtier_set_page_format(kvtier_store_t* store, const char* format);

/* ---- Copying interface -------------------------------------------------------------------- */

/* Stores values[i] (sizes[i] bytes, >= 1) under keys[i]. A key that exists already counts as
 * written and keeps its value. The values are copied; they need not be registered.
 * results[i] : 0 or a negative code. */
KVTIER_API int kvtier_batch_set(kvtier_store_t* store, const char* const* keys, size_t n,
                                const void* const* values, const size_t* sizes, int* results);

/* Reads keys[i] into buffers[i], which holds capacities[i] bytes.
 * results[i] : the value's size in bytes, KVTIER_ERR_NOT_FOUND, KVTIER_ERR_BUFFER_TOO_SMALL
 *              (nothing written to that buffer), or another negative code. A failed key's
 *              buffer may hold bytes of a damaged copy (convention 7). */
KVTIER_API int kvtier_batch_get(kvtier_store_t* store, const char* const* keys, size_t n,
                                void* const* buffers, const size_t* capacities, int64_t* results);

/* *hits : how many keys, from keys[0] on, are present without a gap (the engine's prefix
 * semantics: it stops at the first miss). A bad key (empty, too long) ends the run like a miss;
 * the call still returns 0 and kvtier_last_error() names the key. */
KVTIER_API int kvtier_batch_exists(kvtier_store_t* store, const char* const* keys, size_t n,
                                   size_t* hits);

/* results[i] : 0 (removed from every tier) or KVTIER_ERR_NOT_FOUND. */
KVTIER_API int kvtier_batch_remove(kvtier_store_t* store, const char* const* keys, size_t n,
                                   int* results);

/* present[i] : 0 (keys[i] is in some tier), KVTIER_ERR_NOT_FOUND, or the key's own code
 * (e.g. KVTIER_ERR_KEY_TOO_LONG). One call answers every key, where kvtier_batch_exists stops
 * at the first miss (for per-pool hit policies that look at the last pages of a prefix). */
KVTIER_API int kvtier_batch_exists_each(kvtier_store_t* store, const char* const* keys, size_t n,
                                        int* present);

/* sizes[i] : the size in bytes of keys[i]'s stored value (>= 1), KVTIER_ERR_NOT_FOUND, or the
 * key's own code; for a caller that must size a buffer before kvtier_batch_get (a get with no
 * size, such as Mooncake Store's get(key)). Nothing is copied to the caller and nothing is
 * promoted; it costs a lookup per tier (on the remote tier a round trip to each server that
 * carries the keys and their sizes, not the values). A key removed and written again in between
 * may have another size by the get: that get says so (KVTIER_ERR_BUFFER_TOO_SMALL).
 * Since 0.3. */
KVTIER_API int kvtier_batch_size_each(kvtier_store_t* store, const char* const* keys, size_t n,
                                      int64_t* sizes);

/* Drops every key of this store's namespace from every tier.
 * @return : 0, or KVTIER_ERR_TIMEOUT when another process on the file tier's folder held its
 *           lock, or writes in flight there did not end, within KVTIER_FILE_LOCK_TIMEOUT_MS. */
KVTIER_API int kvtier_clear(kvtier_store_t* store);

/* *json : a NUL-terminated JSON object with, per tier, keys, bytes, capacity, hits, misses,
 * evictions and errors; release it with kvtier_free(). */
KVTIER_API int kvtier_stats_json(kvtier_store_t* store, char** json);

/* ---- Zero-copy interface ------------------------------------------------------------------ */

/* Registers [addr, addr+len) as memory the _v1 calls may read and write in place, typically the
 * engine's pinned host pool. Any alignment is accepted (4 KiB-aligned pages let file and RDMA
 * tiers skip their bounce buffers). Regions may not overlap. The memory must stay valid until
 * kvtier_unregister_buffer() or kvtier_close(). */
KVTIER_API int kvtier_register_buffer(kvtier_store_t* store, void* addr, size_t len);
/* Removes the region that starts at addr; KVTIER_ERR_NOT_FOUND if there is none. Returns once
 * no call is moving bytes in it (convention 5): the memory may be freed then. */
KVTIER_API int kvtier_unregister_buffer(kvtier_store_t* store, void* addr);

/* Stores each key from its fragments, in place. The fragments are exactly what the engine's
 * get_page_buffer_meta returns: n_frags pointers and sizes, n_frags / n per key in order (n_frags
 * must be a multiple of n). A key's value is its fragments concatenated, so kvtier_batch_get
 * reads it back as one flat page. Every fragment must lie in a registered region, or that key
 * fails with KVTIER_ERR_NOT_REGISTERED and none of its bytes is read. The fragments are only
 * read during the call; the engine may reuse them once it returns.
 * results[i] : 0 (also when the key existed already) or a negative code. */
KVTIER_API int kvtier_batch_set_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                                   void* const* frag_ptrs, const size_t* frag_sizes, size_t n_frags,
                                   int* results);

/* Reads each key into its fragments, in place; the bytes are there when the call returns.
 * results[i] : 0, KVTIER_ERR_NOT_FOUND, KVTIER_ERR_SIZE_MISMATCH (the stored value is not
 *              exactly the fragments' total; nothing written), KVTIER_ERR_NOT_REGISTERED
 *              (nothing written), or another negative code. The bytes land in the fragments
 *              before their checksum is checked: a key that fails (also as NOT_FOUND) may
 *              leave a damaged copy there (convention 7); use only the keys that succeeded. */
KVTIER_API int kvtier_batch_get_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                                   void* const* frag_ptrs, const size_t* frag_sizes, size_t n_frags,
                                   int* results);

/* ---- Native page meta --------------------------------------------------------------------- */

#define KVTIER_POOL_MHA 0
#define KVTIER_POOL_MLA 1

#define KVTIER_LAYOUT_LAYER_FIRST 0
#define KVTIER_LAYOUT_PAGE_FIRST 1
#define KVTIER_LAYOUT_PAGE_FIRST_DIRECT 2

/* The engine's host pool, described once. The buffer shapes (E = dtype_size):
 *   MHA layer_first (2, L, S, H, D)   MHA page_first (2, S, L, H, D)
 *   MHA page_first_direct (2, S/P, L, P, H, D)
 *   MLA layer_first (L, S, 1, C)      MLA page_first(_direct) (S, L, 1, C) / (S/P, L, P, 1, C) */
typedef struct kvtier_pool_layout {
  size_t struct_size;    /* sizeof(kvtier_pool_layout_t): lets the struct grow */
  void* base;            /* the pool buffer's first byte */
  int32_t pool_kind;     /* KVTIER_POOL_MHA or KVTIER_POOL_MLA */
  int32_t layout;        /* KVTIER_LAYOUT_* */
  uint32_t page_size;    /* P: tokens per page */
  uint32_t layer_num;    /* L */
  uint32_t head_num;     /* H (MHA) */
  uint32_t head_dim;     /* D (MHA) */
  uint32_t kv_cache_dim; /* C (MLA) */
  uint32_t dtype_size;   /* E: bytes per element */
  uint64_t pool_tokens;  /* S: pool size in tokens, a multiple of page_size */
  /* Since 0.2 (callers of 0.1 pass the smaller struct_size and get NULL here): */
  const char* dtype_name; /* the element type by name ("bfloat16", "float16", "float8_e4m3fn");
                             NULL or "": by dtype_size only. Copied during the call. */
} kvtier_pool_layout_t;

/* Registers the engine's pool layout on this handle (one per handle; a second call replaces
 * it). The whole pool must lie in a registered region. It also sets the handle's page format
 * (see kvtier_set_page_format) to the layout's: pool kind, layout, dtype_name, dtype_size,
 * page_size, layer_num and head_num/head_dim or kv_cache_dim; base and pool_tokens are not
 * part of it (they move no byte of a page). */
KVTIER_API int kvtier_register_layout(kvtier_store_t* store, const kvtier_pool_layout_t* layout);

/* *per_page : fragments per page for the registered layout (MHA: 2 or 2L; MLA: 1 or L). */
KVTIER_API int kvtier_page_fragments(kvtier_store_t* store, size_t* per_page);

/* The engine's get_page_buffer_meta, in C: for the pages that start at slots[0], slots[P],
 * slots[2P], ... (n_slots a multiple of P) writes n_slots/P * per_page pointers and sizes, in
 * the engine's order. `capacity` is the length of ptrs and sizes.
 * @return : 0, KVTIER_ERR_NO_LAYOUT, KVTIER_ERR_OUT_OF_RANGE, KVTIER_ERR_BUFFER_TOO_SMALL,
 *           KVTIER_ERR_INVALID_ARG (n_slots not whole pages, or so many that the fragment
 *           arrays could not exist). */
KVTIER_API int kvtier_get_page_buffer_meta(kvtier_store_t* store, const int64_t* slots,
                                           size_t n_slots, void** ptrs, size_t* sizes,
                                           size_t capacity);

/* kvtier_batch_set_v1 / kvtier_batch_get_v1 on token slots: `slots` is the engine's host_indices
 * (n * page_size int64 token slots; page i starts at slots[i * page_size]). The fragments are
 * computed from the registered layout. A page that starts off a page boundary or outside the
 * pool fails its key with KVTIER_ERR_OUT_OF_RANGE. */
KVTIER_API int kvtier_batch_set_v1_slots(kvtier_store_t* store, const char* const* keys, size_t n,
                                         const int64_t* slots, size_t n_slots, int* results);
KVTIER_API int kvtier_batch_get_v1_slots(kvtier_store_t* store, const char* const* keys, size_t n,
                                         const int64_t* slots, size_t n_slots, int* results);

/* ---- Asynchronous batches (since 0.3) ---------------------------------------------------- */

/* The blocking _v1 calls and kvtier_batch_exists_each, submitted to run on kvtier's own worker
 * threads (KVTIER_ASYNC_THREADS per handle, started at its first submit) so that a caller that
 * must never block (a scheduler thread, an event loop) can start a batch and learn of its end
 * through a file descriptor.
 *
 * One completion queue per handle: every request submitted on a handle completes there, and
 * kvtier_async_fd() is readable (poll/epoll/select, POLLIN) exactly while that queue holds
 * completions not yet drained. Open a view (kvtier_open_view) for a queue of one's own.
 *
 * What a request owns, and until when:
 *  - keys, the fragment pointer/size arrays and the slot array are copied during the submit:
 *    the caller may reuse them when it returns;
 *  - the fragments (or the registered pool the slots address) and `results` must stay valid
 *    and in place until the request is done (convention 10). A get writes the fragments, a set
 *    reads them, every request writes `results`, all before its completion is queued.
 *  - Registered memory: a request checks its fragments when it starts running, not at submit.
 *    kvtier_unregister_buffer() waits for running requests that use the region; a request that
 *    starts after it fails those keys with KVTIER_ERR_NOT_REGISTERED without touching them.
 *
 * Cancellation and timeouts: kvtier_cancel() on a request still queued completes it at once
 * (status KVTIER_ERR_CANCELLED, every result KVTIER_ERR_CANCELLED, nothing touched). A request
 * already running cannot be stopped midway: it is marked, runs to its end as the blocking call
 * would (which a tier's timeout bounds, e.g. KVTIER_REMOTE_TIMEOUT_MS for a stopped server),
 * and only then completes with status KVTIER_ERR_CANCELLED; its results then say what each key
 * got (a get's key that is not 0 was not read and its fragments hold unspecified bytes, a set's
 * key that is 0 was stored). A request whose tier timed out completes with that key's
 * KVTIER_ERR_TIMEOUT once no byte of it is in flight. Either way, once it is done nothing of it
 * lands in the caller's memory any more.
 *
 * Lifetimes: kvtier_close() refuses new submits, completes the queued requests without running
 * them (their results KVTIER_ERR_CLOSED), waits for the running ones, drops completions not
 * drained and closes the fd: when it returns every request of the handle is done. After
 * fork(), a child's submits on an inherited handle fail with KVTIER_ERR_CLOSED (convention 5). */

#define KVTIER_OP_SET_V1 1
#define KVTIER_OP_GET_V1 2
#define KVTIER_OP_SET_V1_SLOTS 3
#define KVTIER_OP_GET_V1_SLOTS 4
#define KVTIER_OP_EXISTS 5

/* One finished request, as kvtier_drain() hands it out. */
typedef struct kvtier_completion {
  uint64_t id;        /* what the submit call set in *id */
  uint64_t user_data; /* what the caller passed to the submit call */
  int32_t op;         /* KVTIER_OP_* */
  int32_t status;     /* what the blocking call would have returned (0: results[i] hold each
                         key's code), or KVTIER_ERR_CANCELLED (see above) */
} kvtier_completion_t;

/* Submits a batch; the arguments before `user_data` are those of the blocking call of the same
 * name (kvtier_batch_set_v1, kvtier_batch_get_v1, kvtier_batch_set_v1_slots,
 * kvtier_batch_get_v1_slots, kvtier_batch_exists_each), and `results` (`present`) is filled as
 * that call fills it, by the time the request completes. Never waits for I/O.
 * @return : 0 and *id set (ids are unique per handle, never 0), or the code of a refusal
 *           (nothing queued; results[i] hold it, as convention 2 says): KVTIER_ERR_INVALID_ARG
 *           (NULL arrays, n == 0, counts that do not split), KVTIER_ERR_BUSY (KVTIER_ASYNC_DEPTH
 *           requests submitted and not drained: drain, then submit again), KVTIER_ERR_CLOSED,
 *           KVTIER_ERR_NO_MEMORY. Per-key failures, and whole-call refusals that need the
 *           handle's layout (KVTIER_ERR_NO_LAYOUT, a slot count that is not n * page_size),
 *           arrive in the completion. */
KVTIER_API int kvtier_submit_set_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                                    void* const* frag_ptrs, const size_t* frag_sizes,
                                    size_t n_frags, int* results, uint64_t user_data,
                                    uint64_t* id);
KVTIER_API int kvtier_submit_get_v1(kvtier_store_t* store, const char* const* keys, size_t n,
                                    void* const* frag_ptrs, const size_t* frag_sizes,
                                    size_t n_frags, int* results, uint64_t user_data,
                                    uint64_t* id);
KVTIER_API int kvtier_submit_set_v1_slots(kvtier_store_t* store, const char* const* keys,
                                          size_t n, const int64_t* slots, size_t n_slots,
                                          int* results, uint64_t user_data, uint64_t* id);
KVTIER_API int kvtier_submit_get_v1_slots(kvtier_store_t* store, const char* const* keys,
                                          size_t n, const int64_t* slots, size_t n_slots,
                                          int* results, uint64_t user_data, uint64_t* id);
KVTIER_API int kvtier_submit_exists(kvtier_store_t* store, const char* const* keys, size_t n,
                                    int* present, uint64_t user_data, uint64_t* id);

/* *fd : the handle's completion fd (an eventfd), readable while completions wait. Owned by the
 * handle and closed by kvtier_close(); only poll it (reading it is kvtier_drain's job). */
KVTIER_API int kvtier_async_fd(kvtier_store_t* store, int* fd);

/* Hands out up to `capacity` completions, oldest first, into out[0..*n). Waits up to timeout_ms
 * (0: not at all) for the first when none is there; *n may be 0. Any thread may drain; each
 * completion is handed out once. When it returns 0, kvtier_last_error() is the detail of the
 * first of out[0..*n) whose request has one, as "request <id>: " and what the blocking call
 * would have left there (its first failed key; a miss is not a failure), or "" if none has.
 * Drain one completion at a time to read each request's detail.
 * @return : 0, KVTIER_ERR_INVALID_ARG (NULL, capacity 0, timeout_ms < 0), KVTIER_ERR_CLOSED. */
KVTIER_API int kvtier_drain(kvtier_store_t* store, kvtier_completion_t* out, size_t capacity,
                            int timeout_ms, size_t* n);

/* Cancels request `id` (see above for what it may still do). Does not wait.
 * @return : 0 (its completion will say KVTIER_ERR_CANCELLED: at once if it was queued, when its
 *           I/O ends if it was running), KVTIER_ERR_NOT_FOUND (it has completed already, or no
 *           such request), KVTIER_ERR_CLOSED. */
KVTIER_API int kvtier_cancel(kvtier_store_t* store, uint64_t id);

/* ---- Prefill -> decode transfer, with no store in between --------------------------------- */

/* An endpoint owns one engine host pool (described by a kvtier_pool_layout_t whose whole pool is
 * the endpoint's to expose) and listens for peers; a peer connection writes pages straight into
 * the other endpoint's pool or reads them from it, addressed by page (block) ids: page b is the
 * page that starts at token slot b * page_size. Both pools must have the same page format (pool
 * kind, layout, dtype_name, dims); they may differ in size. A peer can touch only the pool the
 * other side opened its endpoint with, and only after presenting its token. Transports: RDMA
 * one-sided WRITE/READ between the two pools where both hosts have a device, else TCP, where
 * the receiving side stages a write and copies it into its pool only while the writer's call is
 * still running: pages land whole, and never after the writer was told they failed. */
typedef struct kvtier_endpoint kvtier_endpoint_t;
typedef struct kvtier_peer kvtier_peer_t;
typedef struct kvtier_transfer kvtier_transfer_t;

/* Opens an endpoint on `pool` (which must stay valid and in place until the endpoint is
 * closed). Settings as for kvtier_open: KVTIER_P2P_LISTEN (host:port, port 0: a free one),
 * KVTIER_P2P_TOKEN, KVTIER_P2P_TRANSPORT (auto|rdma|tcp), KVTIER_P2P_TIMEOUT_MS (silence a
 * call is given), KVTIER_P2P_MAX_PEERS (connections served at once), KVTIER_P2P_ALLOW_NO_TOKEN,
 * from the environment, overridden by `config` ("p2p_listen=0.0.0.0:7600;p2p_token=...");
 * other kvtier settings in it are checked and ignored.
 * @return : 0 and *out set, KVTIER_ERR_CONFIG (also: a listen address beyond loopback with no
 *           token, unless KVTIER_P2P_ALLOW_NO_TOKEN=on), KVTIER_ERR_INVALID_ARG (a bad layout),
 *           KVTIER_ERR_UNAVAILABLE (cannot listen), KVTIER_ERR_UNSUPPORTED (rdma required). */
KVTIER_API int kvtier_endpoint_open(const char* config, const kvtier_pool_layout_t* pool,
                                    kvtier_endpoint_t** out);
/* Writes the "host:port" the endpoint listens on into buf (capacity bytes, NUL included).
 * @return : 0, or KVTIER_ERR_BUFFER_TOO_SMALL. */
KVTIER_API int kvtier_endpoint_address(const kvtier_endpoint_t* endpoint, char* buf,
                                       size_t capacity);
/* Stops listening and drops every connection peers made to it. Calls in flight on peers opened
 * from it end with KVTIER_ERR_CLOSED and are waited for; once it returns the pool is never
 * touched again and may be freed. Those peers stay valid until closed, and refuse every call
 * with KVTIER_ERR_CLOSED. NULL is fine. */
KVTIER_API void kvtier_endpoint_close(kvtier_endpoint_t* endpoint);

/* For each of n page ids of this endpoint's pool, the layers peers have written into it whole
 * since the endpoint opened (a whole-page write counts layer_num, a one-layer write 1), counted
 * only once all of their bytes are in the pool: a page whose count rose by layer_num since a
 * transfer into it began has arrived whole, and its bytes are visible to the thread that saw
 * the count. Writes over TCP only (an RDMA write is one-sided: its writer's results say).
 * @return : 0 and layers[0..n) set, KVTIER_ERR_INVALID_ARG (NULL, n is 0 or too large),
 *           KVTIER_ERR_OUT_OF_RANGE (an id outside the pool; the detail names it). */
KVTIER_API int kvtier_endpoint_layers_landed(const kvtier_endpoint_t* endpoint,
                                             const int64_t* pages, size_t n, uint64_t* layers);

/* Connects to the endpoint at `address` ("host:port"); token and page format are checked on
 * both sides. @return : 0, KVTIER_ERR_DENIED (token or format), KVTIER_ERR_UNAVAILABLE,
 * KVTIER_ERR_TIMEOUT. */
KVTIER_API int kvtier_endpoint_connect(kvtier_endpoint_t* endpoint, const char* address,
                                       kvtier_peer_t** out);
/* Closes the connection. Calls in flight on it (blocking ones in other threads, async
 * transfers) end with KVTIER_ERR_CLOSED and are waited for; an async transfer's handle stays
 * valid until kvtier_transfer_free. The peer must not be used after this returns. NULL is fine. */
KVTIER_API void kvtier_peer_close(kvtier_peer_t* peer);
/* 1 if the peer's connection is up (a failed transfer drops it; the next call reconnects). */
KVTIER_API int kvtier_peer_connected(kvtier_peer_t* peer);

/* Moves n pages: local_pages[i] -> remote_pages[i] (write) or remote_pages[i] -> local_pages[i]
 * (read). layer < 0: whole pages; else only that layer of each page (stream a layer while the
 * next is computed). Thread-safe; transfers on one peer run one at a time.
 * results[i] : 0, KVTIER_ERR_OUT_OF_RANGE (an id outside its pool, or a layer past the last:
 *              nothing moved for that page), KVTIER_ERR_UNAVAILABLE / KVTIER_ERR_TIMEOUT (the
 *              peer died, or made no progress for KVTIER_P2P_TIMEOUT_MS: a transfer that keeps
 *              moving may last longer), KVTIER_ERR_CLOSED (the peer or its endpoint is closed).
 *              When the call returns no byte of it is still in flight toward either pool;
 *              over TCP a written page whose code is not 0 keeps its old bytes in the peer's
 *              pool (over RDMA some of them may have landed before the call returned). */
KVTIER_API int kvtier_peer_write_pages(kvtier_peer_t* peer, const int64_t* local_pages,
                                       const int64_t* remote_pages, size_t n, int32_t layer,
                                       int* results);
KVTIER_API int kvtier_peer_read_pages(kvtier_peer_t* peer, const int64_t* local_pages,
                                      const int64_t* remote_pages, size_t n, int32_t layer,
                                      int* results);

/* The same, in the background: returns at once with a transfer handle. The id arrays are copied;
 * `results` must stay valid until the transfer is freed and is filled when it completes.
 * @return : 0 and *out set, or a code (nothing started). */
KVTIER_API int kvtier_peer_write_pages_async(kvtier_peer_t* peer, const int64_t* local_pages,
                                             const int64_t* remote_pages, size_t n,
                                             int32_t layer, int* results,
                                             kvtier_transfer_t** out);
KVTIER_API int kvtier_peer_read_pages_async(kvtier_peer_t* peer, const int64_t* local_pages,
                                            const int64_t* remote_pages, size_t n,
                                            int32_t layer, int* results,
                                            kvtier_transfer_t** out);
/* A file descriptor that becomes readable (poll/epoll/select) when the transfer completes;
 * owned by the transfer. */
KVTIER_API int kvtier_transfer_fd(const kvtier_transfer_t* transfer);
/* Waits up to timeout_ms (< 0: without limit) for the transfer to complete.
 * @return : 0 when it has completed (*status, when not NULL, is what the blocking call would
 *           have returned; results holds each page's code), KVTIER_ERR_TIMEOUT while it runs. */
KVTIER_API int kvtier_transfer_wait(kvtier_transfer_t* transfer, int timeout_ms, int* status);
/* Waits for completion, then frees the handle. NULL is fine. */
KVTIER_API void kvtier_transfer_free(kvtier_transfer_t* transfer);

#ifdef __cplusplus
}
#endif

#endif /* KVTIER_KVTIER_H_ */
