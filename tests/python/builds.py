"""What this build of libkvtier has: a test of a tier it was built without skips, saying why."""
import tempfile

import pytest

from kvtier.errors import UNSUPPORTED, KvtierError
from kvtier.store import Store


def _file_tier_missing() -> str:
    """Why KVTIER_TIERS=file cannot open here ("" when it can)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            Store({"tiers": "file", "file_dir": folder}).close()
        except KvtierError as e:
            if e.code != UNSUPPORTED:
                raise
            return str(e)
    return ""


_WHY = _file_tier_missing()
needs_file_tier = pytest.mark.skipif(bool(_WHY), reason=_WHY or "the file tier is built")
