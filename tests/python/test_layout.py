"""kvtier's native page meta equals the engine's formula, byte for byte, for every pool row of
DESIGN.md's table; v1 token-slot calls move exactly those bytes."""

import numpy as np
import pytest

import kvtier
from hostpool import ALL_POOLS, HostPool, pool_id, slots_for


@pytest.mark.parametrize("spec", ALL_POOLS, ids=pool_id)
def test_native_meta_equals_the_engine_formula(spec):
    pool = HostPool(size=64, **spec)
    with kvtier.Store("tiers=memory") as store:
        pool.register_with(store)
        idx = slots_for([0, 3, 7, 5], pool.page_size)
        assert store.page_buffer_meta(idx) == pool.get_page_buffer_meta(idx)
        # Every page start of the pool, in a shuffled order.
        pages = np.random.default_rng(1).permutation(pool.size // pool.page_size)
        idx = slots_for(pages, pool.page_size)
        assert store.page_buffer_meta(idx) == pool.get_page_buffer_meta(idx)


@pytest.mark.parametrize("spec", ALL_POOLS, ids=pool_id)
def test_slot_calls_move_the_engines_flat_pages(spec):
    pool = HostPool(size=64, **spec)
    with kvtier.Store("tiers=memory") as store:
        pool.register_with(store)
        P = pool.page_size
        keys = [f"{pool_id(spec)}-{i:04d}" for i in range(3)]
        src = [2, 5, 6]
        before = [pool.page_bytes(p * P) for p in src]
        assert store.batch_set_v1_slots(keys, slots_for(src, P)) == [0, 0, 0]
        # The copying interface sees the engine's flat page.
        flat = [bytearray(len(before[0])) for _ in keys]
        assert store.batch_get(keys, flat) == [len(before[0])] * 3
        assert [bytes(f) for f in flat] == before
        # Read back into other pages; only those pages change.
        snapshot = pool.bytes.copy()
        dst = [0, 1, 7]
        assert store.batch_get_v1_slots(keys, slots_for(dst, P)) == [0, 0, 0]
        for d, want in zip(dst, before):
            assert pool.page_bytes(d * P) == want
        changed = np.flatnonzero(pool.bytes != snapshot)
        expect = set()
        for d in dst:
            ptrs, sizes = pool.get_page_buffer_meta(slots_for([d], P))
            for p, s in zip(ptrs, sizes):
                expect.update(range(p - pool.data_ptr(), p - pool.data_ptr() + s))
        assert set(changed.tolist()) <= expect
