"""Reservation and supply history: values with an ``effective_from``, and what was in force when.

A reservation (reserved kW, feeder, substation, status) or a site's supply (``direct`` or
``transfer``) changes: the grid company raises a reservation, a landlord's resold power
is replaced by a direct connection (转供电改直供电).  Each change is a row of
``reservation_changes`` / ``supply_changes`` with the time it takes effect; the current
values (``reservations``, ``sites.supply``) are a copy of the rows in force now, so
lists and today's rules need no history scan, while a backfill or a report on a past
month asks ``in_force`` for the values of its time.

What a row without a date means (the CSV files of contract version 1 had none): for a
site with no history yet it is its first row, in force "since always" (stored from
``SINCE_ALWAYS``, 1970, with ``dated = False``: the reservation predates the registry,
and a dated change imported later, even one dated before the import, follows it);
for a site with history it is a change at the import time if its values differ from
those in force, and nothing otherwise.  So re-importing the same file changes nothing,
and an undated file never rewrites the past.  A dated row is upserted by (site, date).
Before a site's first row, a supply is always assumed to be that row's (a site has
some supply); a reservation only if that row is undated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import pandas as pd
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.timeutil import parse_instant, utc_timestamp
from twin.models import Reservation, ReservationChange, Site, SupplyChange
from twin.store import upsert_insert

__all__ = [
    "RESERVATION_VALUES",
    "SINCE_ALWAYS",
    "SUPPLY_VALUES",
    "in_force",
    "load_reservation_changes",
    "load_supply_changes",
    "record_reservations",
    "record_supply",
]

RESERVATION_VALUES = ("declared_kw", "reserved_kw", "feeder", "substation", "status")
SUPPLY_VALUES = ("supply",)
_CHUNK = 1000
# The effective date of a site's first, undated row (parse_instant refuses earlier dates).
SINCE_ALWAYS = datetime(1970, 1, 1, tzinfo=UTC)


def in_force(changes: pd.DataFrame, at: datetime | pd.Timestamp, *,
             assume_first: bool | None = None) -> pd.DataFrame:
    """One row per site: its row in force at ``at`` (the last with ``effective_from <= at``).

    ``changes``: site_id, effective_from (UTC), the values, and ``dated`` for reservations.
    A site whose history starts after ``at`` gets its first row if that row is assumed
    back (``assume_first=True``: always; ``None``: where ``dated`` is False), else none.
    Vectorised: a sort and two group picks, about 10 ms for 10 000 sites.
    """
    if changes.empty:
        return changes.iloc[:0]
    t = utc_timestamp(at)
    ordered = changes.sort_values(["site_id", "effective_from"], kind="stable")
    eff = pd.to_datetime(ordered["effective_from"], utc=True)
    last = ordered[(eff <= t).to_numpy()].groupby("site_id", sort=False).tail(1)
    first = ordered.groupby("site_id", sort=False).head(1)
    first = first[~first["site_id"].isin(last["site_id"]).to_numpy()]
    if assume_first is None:
        first = first[~first["dated"].astype(bool).to_numpy()] if "dated" in first else first.iloc[:0]
    elif not assume_first:
        first = first.iloc[:0]
    return pd.concat([last, first]).sort_values("site_id", kind="stable").reset_index(drop=True)


def _frame(rows: Iterable[Any], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(r) for r in rows], columns=list(columns))
    if len(frame):
        frame["effective_from"] = pd.to_datetime(frame["effective_from"], utc=True)
    return frame


_RES_COLUMNS = ("site_id", "effective_from", "dated", *RESERVATION_VALUES)
_SUPPLY_COLUMNS = ("site_id", "effective_from", "supply")


def load_reservation_changes(session: Session, site_ids: Iterable[str] | None = None
                             ) -> pd.DataFrame:
    """Every reservation change (of ``site_ids``, or of all sites), sorted by site and date."""
    return _load(session, ReservationChange, _RES_COLUMNS, site_ids)


def load_supply_changes(session: Session, site_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Every supply change (of ``site_ids``, or of all sites), sorted by site and date."""
    return _load(session, SupplyChange, _SUPPLY_COLUMNS, site_ids)


def _load(session: Session, model: Any, columns: Sequence[str],
          site_ids: Iterable[str] | None) -> pd.DataFrame:
    cols = [getattr(model, c) for c in columns]
    order = (model.site_id, model.effective_from)
    if site_ids is None:
        return _frame(session.execute(select(*cols).order_by(*order)), columns)
    ids = sorted(set(site_ids))
    if len(ids) > 20 * _CHUNK:  # one scan beats many IN lists (a 100 000-site import)
        every = _frame(session.execute(select(*cols).order_by(*order)), columns)
        return every[every["site_id"].isin(ids).to_numpy()].reset_index(drop=True) if len(every) \
            else every
    rows: list[Any] = []
    for i in range(0, len(ids), _CHUNK):
        rows += session.execute(select(*cols).where(model.site_id.in_(ids[i:i + _CHUNK]))
                                .order_by(*order)).all()
    return _frame(rows, columns)



def _effective(value: Any, zone: str | tzinfo) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return parse_instant(str(value), zone)


def _combine(history: pd.DataFrame, changes: pd.DataFrame) -> pd.DataFrame:
    """``history`` with ``changes`` applied: a change replaces the row of the same site and date."""
    if changes.empty:
        return history
    if history.empty:
        return changes
    both = pd.concat([history, changes], ignore_index=True)
    return both.drop_duplicates(["site_id", "effective_from"], keep="last")


def _plan(history: pd.DataFrame, rows: list[dict[str, Any]], values: Sequence[str], now: datetime,
          zone: str | tzinfo, assume_first: bool | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the change rows to upsert for ``rows`` of a file, the history with them applied).

    Dated rows first, then the undated ones, compared with the values in force ``now``
    in one vectorised pass (100 000 sites: well under a second).
    """
    columns = ["site_id", "effective_from", "dated", *values]
    dated: dict[tuple[str, datetime], dict[str, Any]] = {}
    undated: dict[str, dict[str, Any]] = {}
    for r in rows:
        at = _effective(r.get("effective_from"), zone)
        if at is None:
            undated[r["site_id"]] = r
        else:
            dated[(r["site_id"], at)] = r  # two spellings of one instant: the later row wins
    changes = pd.DataFrame([{"site_id": sid, "effective_from": at, "dated": True,
                             **{v: r[v] for v in values}} for (sid, at), r in dated.items()],
                           columns=columns)
    changes["effective_from"] = pd.to_datetime(changes["effective_from"], utc=True)
    merged = _combine(history, changes)
    if undated:
        wanted = pd.DataFrame([{"site_id": sid, **{v: r[v] for v in values}}
                               for sid, r in undated.items()], columns=["site_id", *values])
        known = merged[merged["site_id"].isin(wanted["site_id"]).to_numpy()] if len(merged) \
            else merged
        current = (in_force(known, now, assume_first=assume_first)[["site_id", *values]]
                   if len(known) else pd.DataFrame(columns=["site_id", *values]))
        both = wanted.merge(current, on="site_id", how="left", suffixes=("", "_now"))
        same = pd.Series(True, index=both.index)
        for v in values:
            a, b = both[v], both[f"{v}_now"]
            if pd.api.types.is_numeric_dtype(a):
                eq = (pd.to_numeric(a) - pd.to_numeric(b, errors="coerce")).abs() < 1e-9
            else:
                eq = a.astype(object) == b.astype(object)
            same &= eq.fillna(False).astype(bool)
        has = both["site_id"].isin(known["site_id"]) if len(known) else \
            pd.Series(False, index=both.index)
        new = both.loc[~same.to_numpy(), ["site_id", *values]].copy()
        new["effective_from"] = pd.to_datetime(
            pd.Series([now if h else SINCE_ALWAYS for h in has[~same.to_numpy()]], dtype=object,
                      index=new.index), utc=True)
        new["dated"] = False
        new = new.reindex(columns=columns)
        changes = pd.concat([c for c in (changes, new) if len(c)], ignore_index=True) \
            if len(new) else changes
        merged = _combine(merged, new)
    return changes, merged


def _upsert_changes(session: Session, dialect: str, model: Any, frame: pd.DataFrame,
                    values: Sequence[str], now: datetime) -> None:
    if frame.empty:
        return
    changes = [{**r, "effective_from": r["effective_from"].to_pydatetime(), "dated": bool(r["dated"])}
               for r in frame.to_dict(orient="records")]
    table = model.__table__
    cols = ["site_id", "effective_from", *(["dated"] if "dated" in table.c else []), *values]
    stmt = upsert_insert(dialect, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["site_id", "effective_from"],
        set_={c: stmt.excluded[c] for c in [*cols[2:], "recorded_at"]})
    ordered = sorted(changes, key=lambda c: (c["site_id"], c["effective_from"]))
    for i in range(0, len(ordered), _CHUNK):
        session.execute(stmt, [{**{c: r[c] for c in cols}, "recorded_at": now}
                               for r in ordered[i:i + _CHUNK]])


def record_reservations(session: Session, dialect: str, rows: list[dict[str, Any]],
                        now: datetime, zone: str | tzinfo) -> None:
    """Add the rows of a reservations file to the history; refresh ``reservations`` from it."""
    if not rows:
        return
    sites = {r["site_id"] for r in rows}
    changes, history = _plan(load_reservation_changes(session, sites), rows, RESERVATION_VALUES,
                             now, zone, None)
    _upsert_changes(session, dialect, ReservationChange, changes, RESERVATION_VALUES, now)
    current = in_force(history[history["site_id"].isin(sites).to_numpy()], now)
    gone = sorted(sites - set(current["site_id"]))  # only future reservations: none in force
    for i in range(0, len(gone), _CHUNK):
        session.execute(delete(Reservation).where(Reservation.site_id.in_(gone[i:i + _CHUNK])))
    if len(current):
        cols = ["site_id", *RESERVATION_VALUES]
        stmt = upsert_insert(dialect, Reservation.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["site_id"],
            set_={c: stmt.excluded[c] for c in [*RESERVATION_VALUES, "updated_at"]})
        records = [{**dict(zip(cols, r, strict=True)), "updated_at": now}
                   for r in current[cols].itertuples(index=False, name=None)]
        for i in range(0, len(records), _CHUNK):
            session.execute(stmt, records[i:i + _CHUNK])


def record_supply(session: Session, dialect: str, rows: list[dict[str, Any]], now: datetime,
                  zone: str | tzinfo) -> None:
    """Add the supply of the rows of a sites file to the history; set ``sites.supply`` from it."""
    if not rows:
        return
    sites = {r["site_id"] for r in rows}
    changes, history = _plan(load_supply_changes(session, sites), rows, SUPPLY_VALUES, now, zone,
                             True)
    _upsert_changes(session, dialect, SupplyChange, changes, SUPPLY_VALUES, now)
    current = in_force(history[history["site_id"].isin(sites).to_numpy()], now, assume_first=True)
    written = {r["site_id"]: r["supply"] for r in rows}
    for supply, group in current.groupby("supply"):
        ids = sorted(sid for sid in group["site_id"] if written.get(sid) != supply)
        for i in range(0, len(ids), _CHUNK):
            session.execute(update(Site).where(Site.site_id.in_(ids[i:i + _CHUNK]))
                            .values(supply=supply))
