"""Prefill -> decode endpoints from Python: numpy and torch pools, whole pages and layers, the
FastDeploy-shaped communicator, bad ids and a wrong token."""

import numpy as np
import pytest

import kvtier
from kvtier.transfer import Endpoint, RDMACommunicator

L, P, H, D, PAGES = 3, 4, 2, 8, 32


def pool(seed, lib=np):
    """An MHA page_first pool (2, S, L, H, D) of bf16-sized random elements."""
    data = np.random.default_rng(seed).integers(0, 1 << 16, (2, PAGES * P, L, H, D),
                                                 dtype=np.uint16)
    if lib is np:
        return data
    import torch

    return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)


def page(buf, p, layer=None):
    arr = buf.view(np.uint16) if isinstance(buf, np.ndarray) else \
        buf.view(__import__("torch").int16).numpy().view(np.uint16)
    part = arr[:, p * P:(p + 1) * P]
    return (part if layer is None else part[:, :, layer]).tobytes()


def endpoint(buf, token="t", **kw):
    return Endpoint(buf, layout="page_first", page_size=P, layer_num=L, head_num=H,
                    head_dim=D, config=f"p2p_token={token};p2p_transport=tcp", **kw)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_pages_and_layers_move_between_two_endpoints(lib):
    if lib == "torch":
        pytest.importorskip("torch", reason="python3-torch is not installed")
    mod = np if lib == "numpy" else None
    prefill_pool, decode_pool = pool(1, mod), pool(2, mod)
    with endpoint(prefill_pool) as prefill, endpoint(decode_pool) as decode:
        before = {p: page(decode_pool, p) for p in range(PAGES)}
        peer = prefill.connect(decode.address)
        assert peer.write_pages([1, 2, 3], [10, 11, 12]) == [0, 0, 0]
        for src, dst in ((1, 10), (2, 11), (3, 12)):
            assert page(decode_pool, dst) == page(prefill_pool, src)
        for layer in range(L):
            assert peer.write_pages([5], [20], layer=layer) == [0]
            assert page(decode_pool, 20, layer) == page(prefill_pool, 5, layer)
            if layer + 1 < L:  # the layers not sent yet are still the old ones
                assert page(decode_pool, 20, layer + 1) != page(prefill_pool, 5, layer + 1)
        assert page(decode_pool, 20) == page(prefill_pool, 5)
        # whole pages count layer_num, each layer 1; a page nothing was written into, 0
        assert decode.layers_landed([10, 11, 12, 20, 0]) == [L, L, L, L, 0]
        assert prefill.layers_landed([1]) == [0]  # reads from a pool are not counted
        assert peer.read_pages([30], [0]) == [0]
        assert page(prefill_pool, 30) == page(decode_pool, 0)
        untouched = [p for p in range(PAGES) if p not in (10, 11, 12, 20)]
        assert all(page(decode_pool, p) == before[p] for p in untouched)
        assert peer.write_pages([1, 99], [-1, 2]) == [kvtier.codes.OUT_OF_RANGE] * 2
        assert page(decode_pool, 2) == before[2]
        peer.close()


def test_fastdeploy_shaped_communicator():
    prefill_pool, decode_pool = pool(3), pool(4)
    with endpoint(prefill_pool) as prefill, endpoint(decode_pool) as decode:
        ip, port = decode.address.rsplit(":", 1)
        comm = RDMACommunicator(prefill)
        assert not comm.is_connected(ip, port)
        assert comm.write_cache(ip, port, [1], [2], 0) == kvtier.codes.UNAVAILABLE
        assert comm.connect(ip, int(port)) and comm.is_connected(ip, int(port))
        for layer in range(L):
            assert comm.write_cache(ip, int(port), [4, 5], [6, 7], layer) == 0
        assert page(decode_pool, 6) == page(prefill_pool, 4)
        assert page(decode_pool, 7) == page(prefill_pool, 5)
        assert comm.write_cache(ip, int(port), [4], [PAGES], None) == kvtier.codes.OUT_OF_RANGE


def test_wrong_token_and_bad_pools_are_refused():
    with endpoint(pool(5)) as decode, endpoint(pool(6), token="nope") as intruder:
        with pytest.raises(kvtier.KvtierError) as e:
            intruder.connect(decode.address)
        assert e.value.name == "KVTIER_ERR_DENIED"
    with pytest.raises(kvtier.KvtierError):
        endpoint(pool(7)[:, ::2])  # not contiguous
    with pytest.raises(kvtier.KvtierError):
        Endpoint(pool(8), layout="sideways", page_size=P, layer_num=L, head_num=H, head_dim=D)


def test_a_peer_of_a_closed_endpoint_refuses_and_touches_nothing():
    prefill_pool, decode_pool = pool(9), pool(10)
    with endpoint(decode_pool) as decode:
        prefill = endpoint(prefill_pool)
        peer = prefill.connect(decode.address)
        assert peer.read_pages([1], [2]) == [0]
        prefill.close()
        before = prefill_pool.copy()
        assert peer.read_pages([3, 4], [5, 6]) == [kvtier.codes.CLOSED] * 2
        assert peer.write_pages([3], [5]) == [kvtier.codes.CLOSED]
        assert not peer.connected
        assert (prefill_pool == before).all()
        peer.close()


def test_an_open_endpoint_beyond_loopback_needs_a_token():
    with pytest.raises(kvtier.KvtierError) as e:
        Endpoint(pool(11), layout="page_first", page_size=P, layer_num=L, head_num=H,
                 head_dim=D, config="p2p_listen=0.0.0.0:0;p2p_transport=tcp")
    assert e.value.name == "KVTIER_ERR_CONFIG"
