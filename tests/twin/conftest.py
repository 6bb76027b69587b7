"""Fixtures of the twin tests: an open registry on SQLite and on PostgreSQL, and a few sites."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from twin.models import LifecycleEvent, Site
from twin.store import Store, open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(twin_url: str) -> Iterator[Store]:
    s = open_store(twin_url)
    yield s
    s.close()


def add_site(store: Store, site_id: str, state: str = "planned", *, county: str = "Xinjin",
             supply: str = "direct", replaces: str | None = None, at: datetime = T0,
             planned_year: int | None = 2026, kind: str = "macro") -> None:
    """Register a site directly (with its first lifecycle event), bypassing the importer."""
    with store.session() as s:
        s.add(Site(site_id=site_id, name=f"Site {site_id}", lat=30.6, lon=104.0, county=county,
                   kind=kind, supply=supply, region="Sichuan", customer_class="industrial",
                   state=state, replaces_site_id=replaces, planned_year=planned_year))
        s.flush()
        s.add(LifecycleEvent(site_id=site_id, from_state=None, to_state=state, verb="register",
                             at=at, actor="test"))
