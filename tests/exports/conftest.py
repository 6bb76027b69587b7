"""Fixtures of the exports tests: an open registry on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from twin.store import Store, open_store


@pytest.fixture
def store(twin_url: str) -> Iterator[Store]:
    s = open_store(twin_url)
    yield s
    s.close()
