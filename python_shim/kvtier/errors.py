"""Codes (the values of kvtier.h, frozen; tests/python/test_codes.py ties them to the header)
and the exception that carries one."""

from . import _native

OK = 0
NOT_FOUND = -1
INVALID_ARG = -2
KEY_TOO_LONG = -3
NOT_REGISTERED = -4
BUFFER_TOO_SMALL = -5
SIZE_MISMATCH = -6
CONFIG = -7
NO_SPACE = -8
IO = -9
CORRUPT = -10
UNAVAILABLE = -11
TIMEOUT = -12
NO_MEMORY = -13
UNSUPPORTED = -14
NO_LAYOUT = -15
OUT_OF_RANGE = -16
BUSY = -17
INTERNAL = -18
DENIED = -19
CLOSED = -20
CANCELLED = -21


def error_name(code: int) -> str:
    return _native.lib.kvtier_error_name(code).decode()


def last_error() -> str:
    return _native.lib.kvtier_last_error().decode(errors="replace")


class KvtierError(Exception):
    """A kvtier call failed: `.code` is the negative code, `.name` its name."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        self.name = error_name(code)
        self.detail = detail
        super().__init__(f"{self.name} ({code}): {detail or _native.lib.kvtier_strerror(code).decode()}")


def check(code: int) -> None:
    if code != OK:
        raise KvtierError(code, last_error())
