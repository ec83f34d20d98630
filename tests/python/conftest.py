import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Usable from a source tree: the shim next door, the library from the build folder.
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python_shim"))
if "KVTIER_LIBRARY" not in os.environ:
    lib = ROOT / "build" / "capi" / "libkvtier.so"
    if lib.exists():
        os.environ["KVTIER_LIBRARY"] = str(lib)


@pytest.fixture
def kvtier_server():
    """A real kvtier-server on a free loopback port, for the test: (process, "host:port"). The
    test may stop it (SIGSTOP); it is resumed, then terminated, after the test."""
    binary = os.environ.get("KVTIER_TEST_SERVER_BIN")
    if not binary:
        pytest.skip("KVTIER_TEST_SERVER_BIN is not set (ctest sets it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--capacity", "64MiB",
                             "--rdma", "off", "--log-level", "error"])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.02)
    yield proc, f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)
