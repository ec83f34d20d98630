"""The comparison SGLang's users run for HiCache storage backends, through kvtier's adapter:
the generic path (flat page copies + batch_set / batch_get + copy back) against
batch_set_v1 / batch_get_v1 on the host pool; batch_set_v2 / batch_get_v2 of the KV pool plus
one extra (Mamba-like state) pool, as hybrid models call them; and draft pages (`<hash>.draft`
flat pages of a one-layer pool through the generic path, as speculative decoding sends them).
Also the adapter's own per-call overhead, and a row per engine path on the memory tier (vLLM's
secondary tier, LMCache's remote plugin, Mooncake Store's API) against the copy of the same bytes.
The file tier runs twice, on the engine's pool (64 bytes past a page boundary, as SGLang allocates
it) and on an aligned one: its v1 rows print side by side, each against fio's O_DIRECT limit in
the same batches (the job kvtier-bench file runs; "-" where fio is not installed), fio and kvtier
in alternating rounds, the ratio the median of the rounds' own ratios.

usage: /usr/bin/python3 bench/python_bench.py [--tiers memory,file] [--batches 10,50,100]
       [--layouts layer_first,page_first] [--repeats 3] [--dir DIR] [--json FILE]
Run from a source tree after building: it finds build/capi/libkvtier.so (the tests' build), else
build-bench/capi/libkvtier.so (bash bench/run.sh's); or set KVTIER_LIBRARY to the library's path.
Needs numpy (Debian's python3-numpy, in cmake/install-deps.sh's bench list); not torch.
"""

import argparse
import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path
from types import SimpleNamespace

try:
    import numpy as np
except ImportError:
    sys.exit("python_bench: needs numpy (Debian: apt-get install python3-numpy)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_shim"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
BUILDS = ("build", "build-bench")  # the tests' build, then bench/run.sh's
if "KVTIER_LIBRARY" not in os.environ:
    for build in BUILDS:
        if (ROOT / build / "capi/libkvtier.so").exists():
            os.environ["KVTIER_LIBRARY"] = str(ROOT / build / "capi/libkvtier.so")
            break

from hostpool import HostPool, StatePool, slots_for  # noqa: E402  (the engine-shaped pool of the tests)

try:
    from kvtier.sglang import KvtierStorage  # noqa: E402
except ImportError as e:
    hint = (
        f"\npython_bench: found no {' or '.join(b + '/capi/libkvtier.so' for b in BUILDS)}: build "
        "one (bash bench/run.sh builds build-bench/) or set KVTIER_LIBRARY to libkvtier.so's path"
    )
    sys.exit(f"python_bench: {e}" + ("" if "KVTIER_LIBRARY" in os.environ else hint))

STATE_BYTES = 4096  # one extra-pool page (a Mamba state row) per KV page in the v2 rows

SHAPES = {
    "MHA": dict(mla=False, page_size=64, layer_num=28, head_num=8, head_dim=128),
    "MLA": dict(mla=True, page_size=64, layer_num=61, kv_cache_dim=576),
}


def measure(repeats, warmup, nbytes, prep, body, check, limit=None):
    """The median of `repeats` timed runs of body (prep and check untimed) after `warmup`. With
    `limit` (a function that runs the limit once and returns its GB/s, or None) the timed runs
    alternate with it, a limit's run, the warm-up and a timed run per round: the disk's speed
    drifts by a third from one run to the next, both runs of a round see the same drift, so
    `ratio` is the median of the rounds' own ratios; `fio_gbps` the limit's median (None when
    never measured)."""
    runs, lim = [], []

    def run(timed):
        prep()
        c0, t0 = time.process_time(), time.perf_counter()
        body()
        t1, c1 = time.perf_counter(), time.process_time()
        check()
        if timed:
            runs.append((t1 - t0, c1 - c0))

    for _ in range(warmup):
        run(False)
    for _ in range(repeats):
        if limit is not None:
            lim.append(limit())
            for _ in range(warmup):  # fio left this process idle: warm up again
                run(False)
        run(True)
    paired = [(nbytes / t / 1e9 / g, g) for (t, _), g in zip(runs, lim) if g]
    runs.sort()
    sec, cpu = runs[len(runs) // 2]

    def median(xs):  # of GB/s-like figures: the lower one of an even count (the slower run's)
        return sorted(xs)[(len(xs) - 1) // 2] if xs else None

    fig = dict(ms=sec * 1e3, gbps=nbytes / sec / 1e9, cpu_s_per_gb=cpu / (nbytes / 1e9),
               min_ms=runs[0][0] * 1e3, max_ms=runs[-1][0] * 1e3)
    if limit is not None:
        fig.update(fio_gbps=median([g for _, g in paired]), ratio=median([q for q, _ in paired]))
    return fig


def drop_page_cache():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass  # not root: the reads are warm


def memcpy_gbps(nbytes):
    a = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


FIO_DEPTH = 32  # the file tier's default queue depth (KVTIER_FILE_QUEUE_DEPTH)


def fio_job(path, block, batch, rw):
    """One fio job as kvtier-bench file runs it (bench/file_limits.cpp): O_DIRECT through io_uring,
    batches of `batch` blocks, each written batch ended by an fdatasync; GB/s, or None."""
    batches = min(max((64 << 20) // (block * batch), 4), 1024)
    cmd = ["fio", "--name=kvtier", f"--filename={path}", "--ioengine=io_uring", "--direct=1",
           f"--bs={block}", f"--iodepth={FIO_DEPTH}", f"--rw={rw}",
           f"--size={block * batch * batches}", f"--fdatasync={batch}", "--end_fsync=1",
           "--output-format=json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out[out.index("{"):])["jobs"][0][rw]["bw_bytes"] / 1e9
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError, IndexError):
        return None


def fio_limits(folder, block, batch):
    """fio's durable write of a new file and cold read of `batch` blocks of `block` bytes in
    `folder`, one job per call: (write, read, done); `done` removes its files. (None, None, done)
    without fio."""
    new, laid = os.path.join(folder, "fio-new.dat"), os.path.join(folder, "fio.dat")

    def done():
        for path in (new, laid):
            with contextlib.suppress(OSError):
                os.remove(path)

    if shutil.which("fio") is None:
        return None, None, done

    def write():  # a new file, as kvtier's write follows a clear (truncated files)
        with contextlib.suppress(OSError):
            os.remove(new)
        return fio_job(new, block, batch, "write")

    def read():  # the file laid down by the first read
        if not os.path.exists(laid) and not fio_job(laid, block, batch, "write"):
            return None
        drop_page_cache()
        return fio_job(laid, block, batch, "read")

    return write, read, done


def bench_shape(args, tier, shape, layout, rows, misalign=64):
    B = max(args.batches)
    spec = SHAPES[shape]
    pool = HostPool(size=2 * B * spec["page_size"], layout=layout, misalign=misalign, **spec)
    room = str(3 * B * len(pool.page_bytes(0)))
    cfg = dict(tp_rank=0, tp_size=1, is_mla_model=spec["mla"], model_name="bench",
               extra_config={"interface_v1": 1, "tiers": tier, "memory_capacity": room,
                             "file_capacity": room, "file_dir": args.dir})
    backend = KvtierStorage(cfg, {})
    backend.register_mem_pool_host(pool)
    state = StatePool(2 * B, STATE_BYTES, seed=1)
    backend.register_mem_host_pool_v2(state, "mamba")
    draft = HostPool(size=2 * B * spec["page_size"], layout=layout, misalign=64,
                     **dict(spec, layer_num=1), seed=2)
    P = pool.page_size
    page = len(pool.page_bytes(0))
    limit = memcpy_gbps(min(B, 64) * page)  # the C++ bench copies the same amount
    for batch in args.batches:
        keys = [f"{shape}-{layout}-{batch}-{i:06d}" for i in range(batch)]
        # fio in the same batches, in rounds with kvtier's v1 runs (file rows only).
        fio_write, fio_read, fio_done = (fio_limits(args.dir, page, batch) if tier == "file"
                                         else (None, None, lambda: None))
        src, dst = slots_for(range(batch), P), slots_for(range(B, B + batch), P)
        src_meta = pool.get_page_buffer_meta(src)
        dst_meta = pool.get_page_buffer_meta(dst)
        per = len(src_meta[0]) // batch
        flat = [np.empty(page, dtype=np.uint8) for _ in keys]
        nbytes = batch * page
        views = {}

        def frag_views(meta):
            key = id(meta)
            if key not in views:  # numpy views onto the pool's fragments, built once
                base = pool.data_ptr()
                views[key] = [pool.bytes[p - base:p - base + s] for p, s in zip(*meta)]
            return views[key]

        def old_write():
            fv = frag_views(src_meta)
            for i in range(batch):  # the engine's per-page flatten
                np.concatenate(fv[i * per:(i + 1) * per], out=flat[i])
            assert backend.batch_set(keys, flat)

        def old_read():
            got = backend.batch_get(keys, flat)
            assert all(g is not None for g in got)
            fv = frag_views(dst_meta)
            for i in range(batch):  # and per-page copy back
                off = 0
                for v in fv[i * per:(i + 1) * per]:
                    v[:] = flat[i][off:off + v.size]
                    off += v.size

        def new_write():
            assert all(backend.batch_set_v1(keys, src))

        def new_read():
            assert all(backend.batch_get_v1(keys, dst))

        def transfers(slots, rows):
            return [SimpleNamespace(name="kv", keys=keys, host_indices=slots),
                    SimpleNamespace(name="mamba", keys=keys, host_indices=rows)]

        src_rows, dst_rows = np.arange(batch), np.arange(B, B + batch)

        def v2_write():
            assert all(all(v) for v in backend.batch_set_v2(transfers(src, src_rows)).values())

        def v2_read():
            assert all(all(v) for v in backend.batch_get_v2(transfers(dst, dst_rows)).values())

        drafts = [f"{k}.draft" for k in keys]
        draft_src = [draft.get_data_page(p * P) for p in range(batch)]
        draft_dst = [draft.get_dummy_flat_data_page() for _ in keys]

        def draft_write():
            assert backend.batch_set(drafts, draft_src)

        def draft_read():
            assert all(g is not None for g in backend.batch_get(drafts, draft_dst))

        def scribble():
            for v in frag_views(dst_meta):
                v.fill(0xA5)
            state.kv_buffer[B:B + batch] = 0xA5
            for d in draft_dst:
                d.fill(0xA5)
            if tier == "file":
                drop_page_cache()  # cold reads

        def verify(path):
            same = all(np.array_equal(a, b) for a, b in zip(frag_views(src_meta),
                                                            frag_views(dst_meta)))
            if path == "v2":
                same &= np.array_equal(state.kv_buffer[:batch], state.kv_buffer[B:B + batch])
            if path == "draft":
                same = all(np.array_equal(a, b) for a, b in zip(draft_src, draft_dst))
            if not same:
                sys.exit(f"read-back differs ({path} {shape} {layout} batch {batch})")

        def written():
            if backend.batch_exists(keys) != batch:
                sys.exit("a write did not store every key")

        results = {}
        paths = (("generic", old_write, old_read, nbytes),
                 ("v1", new_write, new_read, nbytes),
                 ("v2", v2_write, v2_read, nbytes + batch * STATE_BYTES),
                 ("draft", draft_write, draft_read, batch * len(draft.page_bytes(0))))
        for path, write, read, moved in paths:
            check = {"draft": lambda: None, "generic": lambda: old_read()}.get(path, written)
            v1 = path == "v1"  # the rows with fio beside them (file_pools)
            results[path, "write"] = measure(args.repeats, 1, moved, backend.clear, write, check,
                                             fio_write if v1 else None)
            backend.clear()
            write()  # each path reads what it wrote (generic and v1 pages may differ in order)
            results[path, "read"] = measure(args.repeats, 1, moved, scribble, read,
                                            lambda p=path: verify(p), fio_read if v1 else None)
        fio_done()
        for (path, op), fig in results.items():
            fig.update(tier=tier, pool=shape, layout=layout, batch=batch, path=path, op=op,
                       speedup=fig["gbps"] / results["generic", op]["gbps"], memcpy_gbps=limit,
                       misalign=misalign)
            rows.append(fig)
        print(f"\r\033[K{tier} {shape} {layout} batch {batch} done", end="", file=sys.stderr)
    backend.close()


def file_pools(rows):
    """The file rows of the v1 path: the engine's unaligned pool beside an aligned one, each with
    fio from its own rounds."""
    print("\nfile tier, v1: the engine's pool (64 B past a page boundary) beside an aligned pool; "
          "read: cold (page cache dropped), write: until durable; each against fio in alternating "
          "rounds (a fio job, then a kvtier run); GB/s: medians, ratio: the median of the rounds' "
          "ratios" + ("" if shutil.which("fio") else " (fio not installed)"))
    hdr = ("pool", "layout", "batch", "op", "unaligned", "fio", "ratio", "aligned", "fio",
           "ratio", "un/al")
    print("%-4s %-12s %5s %-5s %9s %6s %6s %8s %6s %6s %6s" % hdr)

    def fmt(x):
        return "-" if x is None else "%.2f" % x

    for r in rows:
        if r.get("tier") != "file" or r.get("path") != "v1" or r["misalign"] != 64:
            continue
        al = [x for x in rows if x.get("tier") == "file" and x.get("path") == "v1" and
              x["misalign"] == 0 and all(x[k] == r[k] for k in ("pool", "layout", "batch", "op"))]
        a = al[0] if al else None
        print("%-4s %-12s %5d %-5s %9.2f %6s %6s %8s %6s %6s %6s" % (
            r["pool"], r["layout"], r["batch"], r["op"], r["gbps"], fmt(r.get("fio_gbps")),
            fmt(r.get("ratio")), fmt(a and a["gbps"]), fmt(a and a.get("fio_gbps")),
            fmt(a and a.get("ratio")), fmt(a and r["gbps"] / a["gbps"])))


def overhead(rows):
    """Adapter + binding cost of one 128-key batch_get_v1 on a layer_first MHA pool, with every
    key missing so that no data moves: what the Python side adds to each call."""
    spec = dict(SHAPES["MHA"], layer_num=28)
    pool = HostPool(size=128 * 64, layout="layer_first", **spec)
    backend = KvtierStorage(dict(tp_rank=0, tp_size=1, is_mla_model=False, model_name="o",
                                 extra_config={"tiers": "memory"}), {})
    backend.register_mem_pool_host(pool)
    keys = [f"{i:064x}" for i in range(128)]
    idx = slots_for(range(128), 64)
    for _ in range(200):
        backend.batch_get_v1(keys, idx)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        backend.batch_get_v1(keys, idx)
        times.append(time.perf_counter() - t0)
    us = statistics.median(times) * 1e6
    rows.append(dict(kind="overhead", call="batch_get_v1", keys=128, layout="layer_first",
                     median_us=us, p99_us=sorted(times)[int(len(times) * 0.99)] * 1e6))
    backend.close()
    return us


ENGINE_BLOCK, ENGINE_BLOCKS = 256 << 10, 64  # a batch of 16 MiB per engine path


def engines(args, rows):
    """Each engine's own path into kvtier's memory tier, stores then loads of 64 blocks of
    256 KiB, every load compared byte for byte; the limit is a copy of the same bytes. vLLM's
    load twice: with no lookup before it (kvtier reads its tiers into the primary buffer), and
    as vLLM drives a hit (lookups until every block is staged, then the load copies from the
    staging memory)."""
    import asyncio

    import engine_apis
    from kvtier.mooncake import MooncakeDistributedStore

    n, size = ENGINE_BLOCKS, ENGINE_BLOCK
    nbytes = n * size
    limit = memcpy_gbps(nbytes)
    rng = np.random.default_rng(3)
    run_id = [0]

    def fresh(tag):  # new keys for every run: a write never finds its keys stored
        run_id[0] += 1
        return [f"{tag}-{run_id[0]}-{i}" for i in range(n)]

    def row(engine, op, fig):
        rows.append(dict(kind="engine", engine=engine, op=op, blocks=n, block=size,
                         memcpy_gbps=limit, **fig))

    # vLLM: the primary buffer's rows, stores and loads as jobs polled like the scheduler does.
    engine_apis._install_vllm()
    primary = rng.integers(0, 256, (2 * n, size), dtype=np.uint8)
    tier = engine_apis.create_secondary_tier(
        {"type": "KvtierSecondaryTier", "module_path": "kvtier.vllm", "tiers": "memory",
         "memory_capacity": str(64 * nbytes)}, memoryview(primary), None)
    ids = [0]

    def job(keys, rows_):
        ids[0] += 1
        return engine_apis.TransferJob(ids[0], keys, rows_, False, engine_apis.ReqContext("b"))

    # A scheduler step: 1 ms at most, woken early by the store's fd. A load from the staging
    # memory ends on the tier's own copier thread, which the fd does not see: with a 100 ms step
    # each lookup + load below took 100 ms more.
    woken = select.poll()
    woken.register(tier._store.fileno(), select.POLLIN)
    step_ms = 1

    def wait(tier, jid):
        while True:
            for r in tier.get_finished_jobs():
                assert r.job_id == jid and r.success
                return
            woken.poll(step_ms)

    state = {}

    def v_prep():  # an empty store: its freed blocks are reused, no first touch is timed
        tier._store.clear()
        state["keys"] = [k.encode() for k in fresh("vllm")]

    def v_store():
        j = job(state["keys"], np.arange(n))
        tier.submit_store(j)
        wait(tier, j.job_id)

    row("vllm", "store", measure(args.repeats, 1, nbytes, v_prep, v_store, lambda: None))

    def v_load():
        j = job(state["keys"], np.arange(n, 2 * n))
        tier.submit_load(j)
        wait(tier, j.job_id)

    def v_check():
        assert np.array_equal(primary[n:], primary[:n]), "vLLM load: wrong bytes"

    def v_prep_load():
        primary[n:] = 0

    v_prep()
    v_store()
    row("vllm", "load (no lookup)", measure(args.repeats, 1, nbytes, v_prep_load, v_load, v_check))

    Lookup = engine_apis.LookupResult

    def v_lookup_load():  # as vLLM asks: lookups until every block is HIT (staged), then the load
        req, todo = engine_apis.ReqContext("b"), state["keys"]
        while todo:
            answers = [tier.lookup(k, req) for k in todo]
            assert Lookup.MISS not in answers, "vLLM lookup: MISS of a stored block"
            todo = [k for k, a in zip(todo, answers) if a != Lookup.HIT]
            if todo:  # RETRY: asked again at the next step, once a staging read is done
                woken.poll(step_ms)
        assert tier.staged_blocks() == n
        v_load()  # from the staging memory

    def v_check_staged():
        v_check()
        assert tier.staged_blocks() == 0, "vLLM load: staged blocks left after the load"

    row("vllm", "lookup + load", measure(args.repeats, 1, nbytes, v_prep_load, v_lookup_load,
                                         v_check_staged))
    tier.shutdown()

    # LMCache: chunks from its allocator, batched_put / batched_get on one event loop.
    engine_apis._install_lmcache()
    loop = asyncio.new_event_loop()
    backend = engine_apis.LocalCPUBackend()
    cfg = SimpleNamespace(remote_storage_plugins=["kvtier"], extra_config={
        "remote_storage_plugin.kvtier.module_path": "kvtier.lmcache",
        "remote_storage_plugin.kvtier.class_name": "KvtierConnectorAdapter"})
    shape = (2, 4, size // (2 * 4 * 64 * 2), 64)  # bf16: `size` bytes

    async def make():
        return engine_apis.create_connector(
            f"kvtier://?tiers=memory&memory_capacity={64 * nbytes}", asyncio.get_running_loop(),
            backend, cfg, SimpleNamespace(model_name="bench"))

    conn = loop.run_until_complete(make())
    objs = []
    for _ in range(n):
        o = backend.allocate(shape, "bfloat16", engine_apis.MemoryFormat.KV_2LTD)
        o._buf[:] = rng.integers(0, 256, o._buf.size, dtype=np.uint8)
        objs.append(o)

    def l_prep():
        conn._store.clear()
        state["lkeys"] = [engine_apis.CacheEngineKey("bench", 1, 0, hash(k) & (2**63 - 1))
                          for k in fresh("lmcache")]

    row("lmcache", "put", measure(args.repeats, 1, nbytes, l_prep, lambda: loop.run_until_complete(
        conn.batched_put(state["lkeys"], objs)), lambda: None))

    def l_get():
        state["got"] = loop.run_until_complete(conn.batched_get(state["lkeys"]))

    def l_check():
        for g, o in zip(state["got"], objs):
            assert g is not None and np.array_equal(g._buf, o._buf), "LMCache get: wrong bytes"
            g.ref_count_down()  # back to the allocator, as LMCache does once it used a chunk

    row("lmcache", "get", measure(args.repeats, 1, nbytes, lambda: None, l_get, l_check))
    loop.run_until_complete(conn.close())
    loop.close()

    # Mooncake Store's API: registered buffers, batch_put_from / batch_get_into.
    mc = MooncakeDistributedStore({"tiers": "memory", "memory_capacity": str(64 * nbytes)})
    assert mc.setup("localhost", "", 0, 0, "tcp", "", "", None) == 0
    src = rng.integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    for a in (src, dst):
        assert mc.register_buffer(a.ctypes.data, a.nbytes) == 0
    sptrs = [src.ctypes.data + i * size for i in range(n)]
    dptrs = [dst.ctypes.data + i * size for i in range(n)]

    def m_prep():
        mc.remove_all()
        state["mkeys"] = fresh("mooncake")

    row("mooncake", "put", measure(args.repeats, 1, nbytes, m_prep, lambda: mc.batch_put_from(
        state["mkeys"], sptrs, [size] * n), lambda: None))

    def m_check():
        assert np.array_equal(src, dst), "Mooncake get: wrong bytes"

    def m_prep_get():
        dst[:] = 0

    row("mooncake", "get", measure(args.repeats, 1, nbytes, m_prep_get, lambda: mc.batch_get_into(
        state["mkeys"], dptrs, [size] * n), m_check))
    mc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiers", default="memory,file")
    ap.add_argument("--dir", help="folder for the file tier (default: a new one in /var/tmp)")
    ap.add_argument("--batches", default="10,50,100")
    ap.add_argument("--layouts", default="layer_first,page_first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    made = None
    if not args.dir:
        made = args.dir = tempfile.mkdtemp(prefix="kvtier-pybench-", dir="/var/tmp")
    rows = []
    for tier in args.tiers.split(","):
        for shape in SHAPES:
            for layout in args.layouts.split(","):
                bench_shape(args, tier, shape, layout, rows)
                if tier == "file":  # and an aligned pool beside the engine's
                    bench_shape(args, tier, shape, layout, rows, misalign=0)
    us = overhead(rows)
    engines(args, rows)
    print("\r\033[K", end="", file=sys.stderr)
    print("SGLang adapter: generic path (flat page copies + batch_set/batch_get) versus v1 "
          "(zero-copy on the host pool), v2 (KV + a 4 KiB state page per key) and draft pages "
          "(generic, one layer); medians, every read verified byte for byte")
    hdr = ("tier", "pool", "layout", "batch", "path", "op", "ms", "GB/s", "CPUs/GB", "x generic",
           "memcpy", "ratio")
    print("%-7s %-4s %-12s %5s %-8s %-5s %8s %7s %8s %9s %7s %6s" % hdr)
    for r in rows:
        if "path" not in r or r.get("misalign") == 0:
            continue
        print("%-7s %-4s %-12s %5d %-8s %-5s %8.2f %7.2f %8.3f %9.2f %7.2f %6.2f" % (
            r["tier"], r["pool"], r["layout"], r["batch"], r["path"], r["op"], r["ms"],
            r["gbps"], r["cpu_s_per_gb"], r["speedup"], r["memcpy_gbps"],
            r["gbps"] / r["memcpy_gbps"]))
    # layer_first against page_first, v1, same tier/pool/batch/op.
    print("\nv1 layer_first / page_first (SGLang's default layout against the contiguous one):")
    for r in rows:
        if r.get("path") == "v1" and r["layout"] == "layer_first" and r["misalign"]:
            pf = [x for x in rows if x.get("path") == "v1" and x["layout"] == "page_first" and
                  all(x[k] == r[k] for k in ("tier", "pool", "batch", "op", "misalign"))]
            if pf:
                print("  %-7s %s batch %3d %-5s %.2f" % (r["tier"], r["pool"], r["batch"],
                                                        r["op"], r["gbps"] / pf[0]["gbps"]))
    print("\nv2 (KV + one state pool) / v1, same tier/pool/layout/batch/op (target >= 0.9):")
    for r in rows:
        if r.get("path") == "v2" and r["misalign"]:
            v1 = [x for x in rows if x.get("path") == "v1" and
                  all(x[k] == r[k] for k in ("tier", "pool", "layout", "batch", "op", "misalign"))]
            print("  %-7s %s %-11s batch %3d %-5s %.2f" % (
                r["tier"], r["pool"], r["layout"], r["batch"], r["op"], r["gbps"] / v1[0]["gbps"]))
    file_pools(rows)
    print(f"\nadapter overhead: 128-key batch_get_v1, layer_first MHA, all keys missing: "
          f"{us:.1f} us per call (median of 2000)")
    print(f"\nengine paths, memory tier: {ENGINE_BLOCKS} blocks of {ENGINE_BLOCK >> 10} KiB per "
          "batch, medians, every read verified byte for byte; vLLM's lookup + load: lookups until "
          "HIT (each block staged), then the load from the staging memory")
    print("%-9s %-16s %8s %7s %8s %7s %6s" % ("engine", "op", "ms", "GB/s", "CPUs/GB", "memcpy",
                                              "ratio"))
    for r in rows:
        if r.get("kind") == "engine":
            print("%-9s %-16s %8.2f %7.2f %8.3f %7.2f %6.2f" % (
                r["engine"], r["op"], r["ms"], r["gbps"], r["cpu_s_per_gb"], r["memcpy_gbps"],
                r["gbps"] / r["memcpy_gbps"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if made:
        shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main()
