"""kvtier's drop-in for Mooncake Store's Python API: `mooncake.store` answered by kvtier.

Opt-in: this folder is on the path only when the user puts it there (PYTHONPATH, first; its
path is kvtier.mooncake.dropin_path()). If a real Mooncake is installed further down the path,
importing this refuses (ImportError, naming it) unless KVTIER_MOONCAKE_DROPIN=1 says that
shadowing it is meant: a stale PYTHONPATH must not silently replace a real Mooncake."""

import importlib.machinery
import os
import sys

_DROPIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _real_mooncake():
    """Where another `mooncake` package on sys.path is, or None."""
    others = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _DROPIN]
    spec = importlib.machinery.PathFinder.find_spec("mooncake", others)
    if spec is None:
        return None
    return spec.origin or ", ".join(spec.submodule_search_locations or [])


_real = _real_mooncake()
if _real and os.environ.get("KVTIER_MOONCAKE_DROPIN") != "1":
    raise ImportError(
        f"kvtier's Mooncake drop-in ({_DROPIN}) is first on the path, but a real Mooncake is "
        f"installed ({_real}); set KVTIER_MOONCAKE_DROPIN=1 to use kvtier in its place, or "
        "take the drop-in off the path")
