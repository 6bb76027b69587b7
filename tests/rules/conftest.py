"""Fixtures of the rule tests: a registry on SQLite in the test's directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[object]:
    from twin.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'twin.sqlite'}")
    yield store
    store.close()
