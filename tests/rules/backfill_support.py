"""The one-pass equivalence check shared by the backfill property tests.

Each test file builds a fleet (its readings as line protocol and a registry); this writes the
readings to a fresh InfluxDB database, backfills the same range into two copies of the
registry, step by step and in one pass, and asserts that every step's outcome and the whole
flag table are equal.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from connectors.influx import InfluxWriter
from core.settings import load_settings
from rules.engine import Engine
from rules.flag import FlagBook


def add_site(s: Any, k: int, site_id: str, state: str, since: datetime, *, verb: str = "import",
             replaces: str | None = None) -> None:
    """A test site (the k-th, spread north along a line) and the lifecycle event that put it
    in ``state`` at ``since``, in session ``s``."""
    from twin.models import LifecycleEvent, Site

    s.add(Site(site_id=site_id, name=site_id, lat=31.0 + 0.1 * k, lon=121.0, county="Pudong", kind="macro",
               supply="direct", region="SH", customer_class="C", state=state, replaces_site_id=replaces))
    s.flush()
    s.add(LifecycleEvent(site_id=site_id, to_state=state, verb=verb, at=since, actor="test"))


def _backfill(url: str, influx_url: str, db: str, *, one_pass: bool, rules: Sequence[Any],
              rule_settings: dict[str, Any], live_at: datetime, since: datetime, until: datetime):
    from twin.store import open_store

    store = open_store(url)
    try:
        settings_ = load_settings(None, influxdb={"url": influx_url, "database": db}, twin={"url": url},
                                  rules=rule_settings)
        engine = Engine(store, rules=settings_.rules, influxdb=settings_.influxdb, write_influx=False)
        engine.run(live_at, rules)  # flags the backfill keeps
        outcomes = engine.backfill(since, until, rules, one_pass=one_pass)
        flags = FlagBook(store).list()
        return ([(o.rule, o.now, o.status, o.findings, o.opened, o.updated, o.resolved, o.error)
                 for o in outcomes], [{k: v for k, v in f.items() if k != "id"} for f in flags])
    finally:
        store.close()


def one_pass_equals_stepped(influxdb, tmp_path, *, lines: list[str], registry: Callable[[str], None],
                            rules: Sequence[Any], rule_settings: dict[str, Any], live_at: datetime,
                            since: datetime, until: datetime) -> list[dict]:
    """Backfill ``rules`` over ``since``..``until`` both ways (after a live run at ``live_at``
    whose flags the backfill must keep) and assert the same outcomes and flags; returns the
    flags."""
    db = f"t_{uuid.uuid4().hex[:12]}"
    influxdb.query(f'CREATE DATABASE "{db}"')
    tag = uuid.uuid4().hex[:8]
    try:
        if lines:
            writer = InfluxWriter(influxdb.url, database=db)
            assert not writer.write("\n".join(lines).encode()).rejected
            writer.close()
        urls = [f"sqlite:///{tmp_path / f'{name}-{tag}.sqlite'}" for name in ("stepped", "one-pass")]
        for url in urls:
            registry(url)
        kwargs = {"rules": rules, "rule_settings": rule_settings, "live_at": live_at,
                  "since": since, "until": until}
        stepped = _backfill(urls[0], influxdb.url, db, one_pass=False, **kwargs)
        sliced = _backfill(urls[1], influxdb.url, db, one_pass=True, **kwargs)
        assert not [o for o in stepped[0] if o[2] == "error"]
        assert sliced[0] == stepped[0]  # every step's findings and flag changes
        assert sliced[1] == stepped[1]  # the full flag table, evidence included
        return sliced[1]
    finally:
        influxdb.query(f'DROP DATABASE "{db}"')
