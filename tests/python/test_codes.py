"""The Python package's codes are kvtier.h's: every KVTIER_ERR_* of the header, by name and
value, is in kvtier.errors and nothing else is, and the library names each one as the header
does."""

import re
from pathlib import Path

from kvtier import errors

HEADER = Path(__file__).resolve().parents[2] / "include" / "kvtier" / "kvtier.h"


def header_codes():
    text = HEADER.read_text()
    found = dict(
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^#define KVTIER_(OK|ERR_[A-Z_]+)\s+(-?\d+)", text, re.M)
    )
    assert len(found) >= 20, "the header's codes were not found: the pattern is stale"
    return {name.removeprefix("ERR_"): value for name, value in found.items()}


def package_codes():
    return {
        name: value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, int)
    }


def test_every_header_code_is_in_the_package_with_its_value():
    assert package_codes() == header_codes()


def test_the_library_names_each_code_as_the_header_does():
    for name, value in header_codes().items():
        expected = "KVTIER_OK" if name == "OK" else "KVTIER_ERR_" + name
        assert errors.error_name(value) == expected
