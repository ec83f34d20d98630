import os
import sys
from pathlib import Path

# Usable from a source tree: the shim next door, the library from the build folder.
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python_shim"))
if "KVTIER_LIBRARY" not in os.environ:
    lib = ROOT / "build" / "capi" / "libkvtier.so"
    if lib.exists():
        os.environ["KVTIER_LIBRARY"] = str(lib)
