"""The package ships its own copy of the contract files the demo needs; they must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.specs import SPECS

DATA = Path(__file__).resolve().parents[2] / "policyflow" / "data"
#: Where each folder's originals are: shared/specs, except Gatekeeper's (tests/data/gatekeeper/SOURCES.md).
ORIGINALS = {"gatekeeper": Path(__file__).resolve().parents[1] / "data" / "gatekeeper"}


@pytest.mark.parametrize("shipped", sorted(DATA.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_copy_is_byte_for_byte_the_upstream_file(shipped: Path) -> None:
    original = ORIGINALS.get(shipped.parent.name, SPECS / shipped.parent.name) / shipped.name
    assert shipped.read_bytes() == original.read_bytes()
