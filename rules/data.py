"""The I/O side of the rules: window aggregates from InfluxDB, registry facts from the twin.

Every query but one aggregates in InfluxDB (``GROUP BY time(...)`` with
``last``, ``mean``, ``max``), so what crosses the wire grows with sites x
windows, not with raw points.  The exception is the bills' energy
(``energy_readings``): interval energy needs each reading's own time.
Errors from InfluxDB or the registry become ``RuleDataError`` here and
nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sqlalchemy import func, or_, select

from connectors.errors import ConnectorError
from connectors.influx import InfluxReader, series_frame
from core.states import State
from core.timeutil import utc_timestamp
from rules.errors import RuleDataError
from rules.rule import Facts, Frames, Rule, Thresholds

__all__ = ["GridHistory", "SiteHistory", "WindowData", "influx_time", "load_facts",
           "load_grid_history", "load_interferers", "load_maintenance", "load_ratings",
           "load_site_history"]

# Beyond this many ids a filter costs more than it saves; the query then reads every series.
_MAX_FILTER_IDS = 500
# Statements answered recently are kept this many: one engine run asks some twice (both bill
# rules read the same energy), and interference baselines only change once a day.  A run
# remembers about 20 settled statements (baseline days, energy chunks, power spans).
_MEMO_SIZE = 64
# Independent statements of one rule asked at once: InfluxDB 1.x answers each statement on
# one core, so two requests in flight keep two cores busy (``rules.query_concurrency``).
DEFAULT_CONCURRENCY = 2


def influx_time(ts: datetime | pd.Timestamp) -> str:
    """An InfluxQL time literal (RFC 3339, UTC)."""
    t = utc_timestamp(ts)
    return "'" + t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "'"


def _between(start: datetime | pd.Timestamp, end: datetime | pd.Timestamp) -> str:
    return f"time >= {influx_time(start)} AND time < {influx_time(end)}"


def _id_filter(tag: str, ids: Iterable[str]) -> str:
    ids = sorted(set(ids))
    if not ids or len(ids) > _MAX_FILTER_IDS:
        return ""
    return f' AND "{tag}" =~ /^({"|".join(re.escape(i) for i in ids)})$/'


def _floor(ts: datetime, minutes: int) -> pd.Timestamp:
    return pd.Timestamp(ts).floor(f"{minutes}min")



def split_meter_peaks(per_meter: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """From peaks per meter (``site_id``, ``meter_id``, ``peak_kw``, ``time``; a meter may
    appear more than once): the peak of each single-meter site (``site_id``, ``peak_kw``,
    ``time``), and the ids of the sites with several meters, whose peak is that of their
    summed means (``with_summed_peaks``).  The one-pass backfill takes the same first
    highest per meter from its day matrices (``rules.backfill._PeakDays``)."""
    per_meter = per_meter.loc[per_meter.groupby(["site_id", "meter_id"])["peak_kw"].idxmax()]
    meters = per_meter.groupby("site_id")["meter_id"].transform("nunique")
    single = per_meter.loc[meters == 1, ["site_id", "peak_kw", "time"]].reset_index(drop=True)
    return single, per_meter.loc[meters > 1, "site_id"].unique()


def with_summed_peaks(single: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame:
    """``single`` plus, per site of ``means`` (15-minute means per meter: ``site_id``,
    ``time``, ``p``), the bucket where the sum over its meters peaks."""
    summed = means.groupby(["site_id", "time"], as_index=False)["p"].sum()
    top = summed.loc[summed.groupby("site_id")["p"].idxmax()].rename(columns={"p": "peak_kw"})
    return pd.concat([single, top[["site_id", "peak_kw", "time"]]], ignore_index=True)

class WindowData:
    """Fetches the frames a rule ``needs`` for its window ending at ``now``."""

    def __init__(self, reader: InfluxReader, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.reader = reader
        self.concurrency = max(1, int(concurrency))
        # Answers kept by statement, as futures: a statement asked while the same one is in
        # flight (two rules fetched at once need the same energy) waits for that answer.
        self._memo: dict[str, Future] = {}
        self._run_memo: dict[str, Future] = {}
        self._lock = threading.Lock()
        # Long-lived workers, so each keeps its one HTTP session (the reader has one per thread).
        self._pool: ThreadPoolExecutor | None = None

    def new_run(self) -> None:
        """Forget the answers kept for one engine run (their windows may still fill up)."""
        with self._lock:
            self._run_memo.clear()

    def close(self) -> None:
        """Stop the query workers (a later query starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _ask(self, q: str) -> pd.DataFrame:
        """One statement's frame, from InfluxDB."""
        try:
            results = self.reader.raw(q)
        except ConnectorError as exc:
            raise RuleDataError(str(exc)) from exc
        if len(results) != 1:
            raise RuleDataError(f"expected one statement, got {len(results)}")
        return series_frame(results[0])

    def _frame(self, q: str, *, memo: bool | str = False) -> pd.DataFrame:
        """The frame of one statement.  ``memo=True`` keeps it for identical statements later
        (for windows settled in the past); ``memo="run"`` only until ``new_run``."""
        return self._frames([q], memo=memo)[0]

    def _frames(self, statements: list[str], *, memo: bool | str | Sequence[bool | str] = False
                ) -> list[pd.DataFrame]:
        """The frames of independent statements, ``concurrency`` of them in flight at once.

        ``memo`` is one setting for all or one per statement (see ``_frame``).  A failed
        statement is not remembered; the first failure is raised once all have ended.
        """
        memos = memo if isinstance(memo, list) else [memo] * len(statements)
        futures: list[Future] = []
        mine: list[tuple[str, Future, bool | str]] = []  # asked here, not found in a memo
        with self._lock:
            for q, m in zip(statements, memos, strict=True):
                store = None if not m else (self._run_memo if m == "run" else self._memo)
                fut = store.get(q) if store is not None else None
                if fut is None:
                    fut = Future()
                    mine.append((q, fut, m))
                    if store is not None:
                        if len(store) >= _MEMO_SIZE:
                            store.pop(next(iter(store)))
                        store[q] = fut
                futures.append(fut)
        if len(mine) > 1 and self.concurrency > 1:
            pool = self._workers()
            for q, fut, m in mine:
                pool.submit(self._answer, q, fut, m)
        else:
            for q, fut, m in mine:
                self._answer(q, fut, m)
        for fut in futures:
            exc = fut.exception()
            if exc is not None:
                raise exc
        return [fut.result() for fut in futures]

    def _answer(self, q: str, fut: Future, memo: bool | str) -> None:
        try:
            fut.set_result(self._ask(q))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            if memo:
                with self._lock:
                    store = self._run_memo if memo == "run" else self._memo
                    if store.get(q) is fut:
                        del store[q]
            fut.set_exception(exc)

    def _workers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                                thread_name_prefix="rules-query")
            return self._pool

    def _frames_by_ids(self, q: str, tag: str, ids: Iterable[str], *, memo: bool | str = False,
                       chunk: int = _MAX_FILTER_IDS) -> pd.DataFrame:
        """``q`` (with a ``{filter}`` slot) for ``ids`` in chunks, so no answer is unbounded."""
        ids = sorted(set(ids))
        parts = self._frames([q.format(filter=_id_filter(tag, ids[i:i + chunk]))
                              for i in range(0, len(ids), chunk)], memo=memo)
        return _concat(parts)

    # For a rule, some frames only need the rows it could flag; a report asks for them all.
    _FOR_RULES: ClassVar[dict[str, str]] = {"power_peak": "flaggable_power_peak",
                                            "interference_baseline": "flaggable_interference_baseline"}

    def fetch(self, rule: Rule, facts: Facts, now: datetime, t: Thresholds) -> dict[str, pd.DataFrame]:
        frames: dict[str, pd.DataFrame] = {}
        for name in rule.needs:
            frames[name] = getattr(self, self._FOR_RULES.get(name, name))(facts, now, t, frames)
        return frames

    # -- one method per frame name ---------------------------------------------------------
    def energy_readings(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """Each meter's cumulative readings around the bills whose period ended in the window.

        Raw readings, not per-hour aggregates: an hour's energy is the counter at its
        boundaries, interpolated between the readings either side (``rules.energy`` says
        why aggregates cannot give those).  From ``max_reading_gap`` before a period to as
        long after it (a reading further out can only end a gap), one statement per bill
        period (and 500 sites): a site is read only around its own bills, and a settled
        month is asked once by a long-lived engine.
        """
        bills = facts.bills
        if bills.empty:
            return pd.DataFrame()
        end = pd.to_datetime(bills["period_end"], utc=True)
        lo = pd.Timestamp(now) - pd.Timedelta(seconds=t.window)
        bills = bills[((end > lo) & (end <= pd.Timestamp(now))).to_numpy()]
        if bills.empty:
            return pd.DataFrame()
        gap = pd.Timedelta(seconds=t.max_reading_gap)
        spans = pd.DataFrame({"start": pd.to_datetime(bills["period_start"], utc=True),
                              "end": pd.to_datetime(bills["period_end"], utc=True),
                              "site_id": bills["site_id"].to_numpy()})
        statements: list[str] = []
        memos: list[bool | str] = []
        for (a, b), group in spans.groupby(["start", "end"], sort=True):
            # Never past ``now``: a backfill step sees only what had been read by then.
            stop = min(b + gap, utc_timestamp(now))
            q = (f'SELECT "energy_kwh" FROM "power" WHERE time >= {influx_time(a - gap)} AND '
                 f'time <= {influx_time(stop)}{{filter}} GROUP BY "site_id", "meter_id"')
            # A bill period a day in the past is settled: the same statement later in the run
            # (the other bill rule) or in the next run gets the same answer.
            settled = stop <= pd.Timestamp(now) - pd.Timedelta(days=1)  # late backlogs have arrived
            ids = sorted(set(group["site_id"]))
            for i in range(0, len(ids), _MAX_FILTER_IDS):
                statements.append(q.format(filter=_id_filter("site_id", ids[i:i + _MAX_FILTER_IDS])))
                memos.append(True if settled else "run")
        parts = [p for p in self._frames(statements, memo=memos) if not p.empty]
        if len(parts) <= 1:
            return parts[0] if parts else pd.DataFrame()
        # Periods of one site that touch (a month and the next) share the readings between.
        return pd.concat(parts, ignore_index=True).drop_duplicates(["site_id", "meter_id", "time"])

    def interference_recent(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        start = _floor(now - timedelta(seconds=t.window), 15)
        q = (f'SELECT mean("ul_interference_dbm") AS "ul_dbm" FROM "interference" WHERE {_between(start, now)}'
             ' GROUP BY time(15m), "site_id", "cell_id", "band" fill(none)')
        return self._frame(q)

    def interference_baseline(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """Hourly means over the whole days before the window: fetched once a day."""
        end = pd.Timestamp(now - timedelta(seconds=t.window)).floor("D")
        start = end - pd.Timedelta(days=t.baseline_days)
        q = (f'SELECT mean("ul_interference_dbm") AS "ul_dbm" FROM "interference" WHERE {_between(start, end)}'
             ' GROUP BY time(1h), "cell_id" fill(none)')
        return self._frame(q, memo=True)

    def flaggable_interference_baseline(self, facts: Facts, now: datetime, t: Any, frames: Frames
                                        ) -> pd.DataFrame:
        """``interference_baseline`` for the rule: every hour only for the cells it may flag.

        A cell's finding needs the baseline of the hours of day in the recent window; its
        overall median (the PRB reference) is only read when it is flagged.  So the hours
        of the window are asked for every cell (a few buckets a day instead of 24), then
        every hour for the flagged cells - the findings are those of the full baseline.
        """
        from rules.interference import flaggable_cells

        recent = frames.get("interference_recent")
        if recent is None or recent.empty:
            return pd.DataFrame()
        end = pd.Timestamp(now - timedelta(seconds=t.window)).floor("D")
        start = end - pd.Timedelta(days=t.baseline_days)
        # The recent hours, then the same clock hours on each earlier day: one range a day
        # (the recent hours are contiguous in time, even across midnight).
        first = recent["time"].min().floor("h")
        last = recent["time"].max().floor("h") + pd.Timedelta(hours=1)
        if last - first >= pd.Timedelta(days=1):
            ranges = [(start, end)]
        else:
            ranges = []
            for k in range(1, t.baseline_days + 3):
                a = max(first - pd.Timedelta(days=k), start)
                b = min(last - pd.Timedelta(days=k), end)
                if a < b:
                    ranges.append((a, b))
        statements = [
            f'SELECT mean("ul_interference_dbm") AS "ul_dbm" FROM "interference" WHERE {_between(a, b)}'
            ' GROUP BY time(1h), "cell_id" fill(none)' for a, b in ranges]
        hourly = _concat(self._frames(statements, memo=True))
        cells = flaggable_cells(recent, hourly, now, t)
        if not cells:
            return hourly
        q = (f'SELECT mean("ul_interference_dbm") AS "ul_dbm" FROM "interference" WHERE {_between(start, end)}'
             '{filter} GROUP BY time(1h), "cell_id" fill(none)')
        full = self._frames_by_ids(q, "cell_id", cells, memo=True)
        if hourly.empty:
            return full
        rest = hourly[~hourly["cell_id"].isin(cells)]
        return pd.concat([rest, full], ignore_index=True) if not full.empty else rest

    def interference_prb(self, facts: Facts, now: datetime, t: Any, frames: Frames) -> pd.DataFrame:
        """Mean per-PRB vector over the window, only for cells near or above the levels."""
        recent = frames.get("interference_recent")
        if recent is None or recent.empty:
            return pd.DataFrame()
        loud = recent.groupby("cell_id")["ul_dbm"].max()
        cells = loud[loud >= t.warning_dbm - t.rise_db].index
        if len(cells) == 0:
            return pd.DataFrame()
        start = _floor(now - timedelta(seconds=t.window), 15)
        q = (f'SELECT mean(/^prb_/) FROM "interference_prb" WHERE {_between(start, now)}'
             f'{_id_filter("cell_id", cells)} GROUP BY "site_id", "cell_id"')
        df = self._frame(q)
        return df.rename(columns=lambda c: c[5:] if c.startswith("mean_prb_") else c)

    @staticmethod
    def _peak_spans(now: datetime, t: Any) -> list[tuple[pd.Timestamp, pd.Timestamp, bool]]:
        """The peak window cut at midnights: (start, end, settled) with the whole days settled."""
        start = _floor(now - timedelta(seconds=t.window), 15)
        # The whole days inside the window are settled and asked once (memo); the partial
        # first day and today are asked every run.
        first_day, today = pd.Timestamp(start).ceil("D"), pd.Timestamp(now).floor("D")
        if first_day < today:
            spans = [(start, first_day, False), (first_day, today, True), (today, now, False)]
        else:
            spans = [(start, now, False)]
        return [(a, b, settled) for a, b, settled in spans if a < b]

    def power_bounds(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """Per site and meter over the peak window: bounds on its peak of 15-minute means.

        ``max_kw``, the highest reading, is above the peak; ``low_kw``, the highest mean of
        the readings of one piece of the window (cut at midnights), is below it: a piece's
        mean is a weighted mean of its 15-minute means.  A fraction of the peak's cost: no
        time buckets, two aggregates.
        """
        spans = self._peak_spans(now, t)
        parts = self._frames([
            'SELECT max("power_kw") AS "max_kw", mean("power_kw") AS "low_kw" '
            f'FROM "power" WHERE {_between(a, b)} GROUP BY "site_id", "meter_id"' for a, b, _ in spans],
            memo=[settled for _, _, settled in spans])
        parts = [p for p in parts if not p.empty]
        if not parts:
            return pd.DataFrame({"site_id": [], "meter_id": [], "max_kw": [], "low_kw": []})
        return (pd.concat(parts, ignore_index=True)
                .groupby(["site_id", "meter_id"], as_index=False)[["max_kw", "low_kw"]].max())

    def flaggable_power_peak(self, facts: Facts, now: datetime, t: Any, frames: Frames) -> pd.DataFrame:
        """``power_peak`` for the reservations rule: only the sites whose findings need their peak.

        Cheap bounds (``power_bounds``) rule out the sites that cannot be flagged, so the
        costly 15-minute buckets are computed for the few that may be; the findings are
        those of ``power_peak`` over every site.
        """
        from rules.reservations import peak_candidates

        if facts is None:
            return self.power_peak(facts, now, t, frames)
        bounds = self.power_bounds(facts, now, t, frames)
        sites = peak_candidates(bounds, facts, now, t)
        if not sites:
            return pd.DataFrame({"site_id": [], "peak_kw": [], "time": []})
        everyone = bounds["site_id"].nunique()
        return self.power_peak(facts, now, t, frames, sites=None if len(sites) > everyone // 2 else sites)

    def power_peak(self, facts: Facts, now: datetime, t: Any, _frames: Frames, *,
                   sites: Iterable[str] | None = None) -> pd.DataFrame:
        """Per site: the maximum over the window of the 15-minute mean power summed over meters.

        InfluxDB gives each meter's peak of its 15-minute means (nested queries; the whole
        days of the window are asked once and remembered); a site with one meter is done.
        Sites with several meters (a swap, a second supply) need the coincident sum, so only
        their 15-minute means are fetched and summed here.
        ``sites`` limits the answer to those sites (all when None).
        """
        start = _floor(now - timedelta(seconds=t.window), 15)
        where = _between(start, now)
        statements, memos = [], []
        chosen = None if sites is None else sorted(set(sites))
        for a, b, settled in self._peak_spans(now, t):
            w = _between(a, b)
            q = (f'SELECT max("p") AS "peak_kw" FROM (SELECT mean("power_kw") AS "p" FROM "power" WHERE {w}'
                 '{filter} GROUP BY time(15m), "site_id", "meter_id" fill(none)) '
                 f'WHERE {w} GROUP BY "site_id", "meter_id"')
            filters = ([""] if chosen is None else
                       [_id_filter("site_id", chosen[i:i + _MAX_FILTER_IDS])
                        for i in range(0, len(chosen), _MAX_FILTER_IDS)])
            statements += [q.format(filter=f) for f in filters]
            memos += [settled] * len(filters)
        parts = [x for x in self._frames(statements, memo=memos) if not x.empty]
        if not parts:
            return pd.DataFrame({"site_id": [], "peak_kw": [], "time": []})
        single, several = split_meter_peaks(pd.concat(parts, ignore_index=True))
        if len(several) == 0:
            return single
        q = (f'SELECT mean("power_kw") AS "p" FROM "power" WHERE {where}'
             '{filter} GROUP BY time(15m), "site_id", "meter_id" fill(none)')
        return with_summed_peaks(single, self._frames_by_ids(q, "site_id", several))

    # ``group_series`` sends statements together in one /query request (InfluxQL takes several,
    # ';'-separated) until they cover this many sites: 500 feeders of 20 sites in 20 requests
    # instead of 500, while a request stays as heavy as one 500-site statement (each must end
    # within ``[influxdb] timeout``).
    _GROUP_BATCH_SITES = _MAX_FILTER_IDS

    def group_series(self, members: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
        """Per group and 15-minute bucket: the sum of its sites' mean power (over their meters).

        ``members``: site_id, group.  InfluxDB does the work: one statement per group of up
        to 500 sites (mean per meter and bucket, then summed per bucket); a larger group is
        asked in chunks of sites, added up here.  Returns group, time, kw.
        """
        cols = ["group", "time", "kw"]
        if members.empty:
            return pd.DataFrame({c: [] for c in cols})
        w = _between(_floor(start, 15), end)
        q = ('SELECT sum("p") AS "kw" FROM (SELECT mean("power_kw") AS "p" FROM "power" '
             f'WHERE {w}{{filter}} GROUP BY time(15m), "site_id", "meter_id" fill(none)) '
             f'WHERE {w} GROUP BY time(15m) fill(none)')
        jobs: list[tuple[str, str, int]] = []  # (group, statement, sites)
        for group, ids in members.groupby("group")["site_id"]:
            ids = sorted(set(ids))
            for i in range(0, len(ids), _MAX_FILTER_IDS):
                chunk = ids[i:i + _MAX_FILTER_IDS]
                jobs.append((str(group), q.format(filter=_id_filter("site_id", chunk)), len(chunk)))
        requests: list[list[tuple[str, str, int]]] = [[]]
        for job in jobs:
            if requests[-1] and sum(j[2] for j in requests[-1]) + job[2] > self._GROUP_BATCH_SITES:
                requests.append([])
            requests[-1].append(job)
        answers = self._frames_multi([[q for _, q, _ in batch] for batch in requests])
        parts = [frame.assign(group=group)[cols]
                 for batch, frames in zip(requests, answers, strict=True)
                 for (group, _, _), frame in zip(batch, frames, strict=True) if not frame.empty]
        if not parts:
            return pd.DataFrame({c: [] for c in cols})
        return pd.concat(parts, ignore_index=True).groupby(["group", "time"], as_index=False)["kw"].sum()

    def group_peaks(self, members: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
        """Coincident peak per group (feeder or substation): the maximum over 15-minute buckets
        of the sum of its sites' power (``group_series``), not the sum of each site's own peak:
        sites peak at different times, and the grid carries their sum at each moment.
        ``members``: site_id, group.  Returns group, peak_kw, time.
        """
        return _peaks(self.group_series(members, start, end))

    def coincident_peaks(self, members: pd.DataFrame, start: datetime, end: datetime
                         ) -> dict[str, pd.DataFrame]:
        """``group_peaks`` of every feeder and every substation from one scan of the data.

        ``members``: site_id, feeder, substation.  The series are asked per (feeder,
        substation) pair and added up per feeder and per substation here: a sum of sums, so
        exact, and InfluxDB reads each site's points once instead of once per level (at 10k
        sites over 7 days the substations' own statements took as long as the feeders').
        Returns ``{"feeder": ..., "substation": ...}`` of group, peak_kw, time.
        """
        if members.empty:
            empty = _peaks(pd.DataFrame({"group": [], "time": [], "kw": []}))
            return {"feeder": empty, "substation": empty.copy()}
        pair = members["feeder"].astype(str) + "\x1f" + members["substation"].astype(str)
        series = self.group_series(pd.DataFrame({"site_id": members["site_id"].to_numpy(),
                                                 "group": pair.to_numpy()}), start, end)
        out = {}
        for k, level in enumerate(("feeder", "substation")):
            by = series.assign(group=series["group"].str.split("\x1f").str[k])
            out[level] = _peaks(by.groupby(["group", "time"], as_index=False)["kw"].sum())
        return out

    def _frames_multi(self, requests: list[list[str]]) -> list[list[pd.DataFrame]]:
        """Each request's statements sent together (one HTTP call), ``concurrency`` requests at once."""
        def ask(batch: list[str]) -> list[pd.DataFrame]:
            try:
                results = self.reader.raw("; ".join(batch))
            except ConnectorError as exc:
                raise RuleDataError(str(exc)) from exc
            if len(results) != len(batch):
                raise RuleDataError(f"expected {len(batch)} statement results, got {len(results)}")
            return [series_frame(r) for r in results]

        if len(requests) > 1 and self.concurrency > 1:
            return list(self._workers().map(ask, requests))
        return [ask(batch) for batch in requests]

    def last_seen(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """Time of the latest tower or power reading per site within the window."""
        where = _between(now - timedelta(seconds=t.window), now)
        parts = self._frames([f'SELECT last("mains_ok") AS "x" FROM "tower" WHERE {where} GROUP BY "site_id"',
                              f'SELECT last("energy_kwh") AS "x" FROM "power" WHERE {where} GROUP BY "site_id"'],
                             memo="run")
        parts = [p[["site_id", "time"]] for p in parts if not p.empty]
        if not parts:
            return pd.DataFrame({"site_id": [], "time": []})
        return pd.concat(parts, ignore_index=True).groupby("site_id", as_index=False)["time"].max()

    def tower_latest(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """The last ``on_battery``, ``mains_ok`` and SOC per site that reported in the window
        (one row per site; its time is not the report's: InfluxQL gives several selectors
        the window's start)."""
        q = ('SELECT last("on_battery") AS "on_battery", last("mains_ok") AS "mains_ok", '
             'last("battery_soc_pct") AS "battery_soc_pct" '
             f'FROM "tower" WHERE {_between(now - timedelta(seconds=t.window), now)} GROUP BY "site_id"')
        return self._frame(q, memo="run")

    def door_readings(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """Every ``door_open`` reading in the window of the sites that reported it open."""
        where = _between(now - timedelta(seconds=t.window), now)
        opened = self._frame(f'SELECT count("door_open") AS "n" FROM "tower" WHERE {where}'
                             ' AND "door_open" = true GROUP BY "site_id"')
        if opened.empty:
            return pd.DataFrame()
        q = f'SELECT "door_open" FROM "tower" WHERE {where}' '{filter} GROUP BY "site_id"'
        return self._frames_by_ids(q, "site_id", opened["site_id"])

    def env_5m(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """5-minute buckets of cabinet temperature, tilt, battery voltage and SOC, and the last
        ``on_battery``/``mains_ok``, only for the sites whose extremes in the window reach the
        calling rule's level (``overtemp_c``, ``limit_deg`` or ``warning_v``)."""
        start = _floor(now - timedelta(seconds=t.window), 5)
        where = _between(start, now)
        bounds = self._frame('SELECT max("cabinet_temp_c") AS "temp_max", max("tilt_deg") AS "tilt_max", '
                             f'min("battery_voltage_v") AS "volt_min" FROM "tower" WHERE {where} '
                             'GROUP BY "site_id"', memo="run")
        if bounds.empty:
            return pd.DataFrame()
        suspect = pd.Series(False, index=bounds.index)
        for column, level, above in (("temp_max", getattr(t, "overtemp_c", None), True),
                                     ("tilt_max", getattr(t, "limit_deg", None), True),
                                     ("volt_min", getattr(t, "warning_v", None), False)):
            if level is not None and column in bounds.columns:
                values = pd.to_numeric(bounds[column], errors="coerce")
                suspect |= (values >= level) if above else (values <= level)
        sites = bounds.loc[suspect.to_numpy(), "site_id"]
        if sites.empty:
            return pd.DataFrame()
        q = ('SELECT mean("cabinet_temp_c") AS "cabinet_temp_c", mean("tilt_deg") AS "tilt_deg", '
             'mean("battery_voltage_v") AS "battery_voltage_v", '
             'mean("battery_soc_pct") AS "battery_soc_pct", last("on_battery") AS "on_battery", '
             f'last("mains_ok") AS "mains_ok" FROM "tower" WHERE {where}'
             '{filter} GROUP BY time(5m), "site_id" fill(none)')
        return self._frames_by_ids(q, "site_id", sites)

    def tower_5m(self, facts: Facts, now: datetime, t: Any, _frames: Frames) -> pd.DataFrame:
        """5-minute buckets, only for the sites whose latest report says on battery or mains down."""
        start = _floor(now - timedelta(seconds=t.window), 5)
        latest = self._frame('SELECT last("on_battery") AS "on_battery", last("mains_ok") AS "mains_ok" '
                             f'FROM "tower" WHERE {_between(start, now)} GROUP BY "site_id"')
        if latest.empty:
            return pd.DataFrame()
        on_battery = latest.get("on_battery", pd.Series(False, index=latest.index)).fillna(False).astype(bool)
        mains_down = ~latest.get("mains_ok", pd.Series(True, index=latest.index)).fillna(True).astype(bool)
        suspects = latest.loc[on_battery | mains_down, "site_id"]
        if suspects.empty:
            return pd.DataFrame()
        q = ('SELECT last("on_battery") AS "on_battery", last("mains_ok") AS "mains_ok", '
             f'mean("battery_soc_pct") AS "battery_soc_pct" FROM "tower" WHERE {_between(start, now)}'
             '{filter} GROUP BY time(5m), "site_id" fill(none)')
        return self._frames_by_ids(q, "site_id", suspects)


def _peaks(series: pd.DataFrame) -> pd.DataFrame:
    """group, peak_kw, time: the highest bucket of each group's series (group, time, kw)."""
    if series.empty:
        return pd.DataFrame({"group": [], "peak_kw": [], "time": []})
    top = series.loc[series.groupby("group")["kw"].idxmax()].rename(columns={"kw": "peak_kw"})
    return top[["group", "peak_kw", "time"]].sort_values("group", kind="stable").reset_index(drop=True)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts[0] if parts else pd.DataFrame())


def load_facts(store: Any) -> Facts:
    """Sites (with the time they entered their state and went on air), reservations, tariffs, bills."""
    from twin.errors import TwinError
    from twin.lifecycle import UNDATED_IMPORT_NOTE
    from twin.models import Bill, LifecycleEvent, Reservation, Site, Tariff

    # An import event without a date says nothing about when the state was reached.
    dated = or_(LifecycleEvent.verb != "import", LifecycleEvent.note.is_(None),
                LifecycleEvent.note != UNDATED_IMPORT_NOTE)
    try:
        with store.session() as s:
            entered = dict(s.execute(
                select(LifecycleEvent.site_id, func.max(LifecycleEvent.at))
                .join(Site, (Site.site_id == LifecycleEvent.site_id) & (Site.state == LifecycleEvent.to_state))
                .where(dated).group_by(LifecycleEvent.site_id)).all())
            on_air = dict(s.execute(
                select(LifecycleEvent.site_id, func.max(LifecycleEvent.at))
                .where(LifecycleEvent.to_state == State.ON_AIR.value, dated).group_by(LifecycleEvent.site_id)).all())
            site_rows = [
                {"site_id": r.site_id, "name": r.name, "lat": r.lat, "lon": r.lon, "state": r.state,
                 "region": r.region,
                 "customer_class": r.customer_class, "supply": r.supply,
                 "replaces_site_id": r.replaces_site_id, "county": r.county,
                 "state_since": _aware(entered.get(r.site_id)), "on_air_since": _aware(on_air.get(r.site_id))}
                for r in s.execute(select(Site.site_id, Site.name, Site.lat, Site.lon, Site.state, Site.region,
                                          Site.customer_class, Site.supply, Site.replaces_site_id,
                                          Site.county))]
            res_rows = [{"site_id": r.site_id, "declared_kw": r.declared_kw, "reserved_kw": r.reserved_kw,
                         "feeder": r.feeder, "substation": r.substation, "status": r.status}
                        for r in s.execute(select(Reservation.site_id, Reservation.declared_kw,
                                                  Reservation.reserved_kw, Reservation.feeder,
                                                  Reservation.substation, Reservation.status))]
            tariff_rows = [{"region": r.region, "customer_class": r.customer_class, "period": r.period or "flat",
                            "hours": r.hours, "effective_from": r.effective_from,
                            "price_cny_per_kwh": r.price_cny_per_kwh}
                           for r in s.execute(select(Tariff.region, Tariff.customer_class, Tariff.period,
                                                     Tariff.hours, Tariff.effective_from,
                                                     Tariff.price_cny_per_kwh))]
            bill_rows = [{"bill_id": r.bill_id, "site_id": r.site_id, "supplier_id": r.supplier_id,
                          "supplier_name": r.supplier_name, "meter_id": r.meter_id,
                          "period_start": r.period_start, "period_end": r.period_end,
                          "billed_kwh": r.billed_kwh, "amount_cny": r.amount_cny}
                         for r in s.execute(select(Bill.bill_id, Bill.site_id, Bill.supplier_id,
                                                   Bill.supplier_name, Bill.meter_id, Bill.period_start,
                                                   Bill.period_end, Bill.billed_kwh, Bill.amount_cny))]
        interferer_rows = load_interferers(store)
        maintenance_rows = load_maintenance(store)
    except TwinError as exc:
        raise RuleDataError(f"registry facts unavailable: {exc}") from exc
    defaults = Facts()
    return Facts(
        sites=pd.DataFrame(site_rows) if site_rows else defaults.sites,
        reservations=pd.DataFrame(res_rows) if res_rows else defaults.reservations,
        tariffs=pd.DataFrame(tariff_rows) if tariff_rows else defaults.tariffs,
        bills=pd.DataFrame(bill_rows) if bill_rows else defaults.bills,
        interferers=pd.DataFrame(interferer_rows) if interferer_rows else defaults.interferers,
        maintenance=pd.DataFrame(maintenance_rows) if maintenance_rows else defaults.maintenance,
    )


def load_maintenance(store: Any) -> list[dict[str, Any]]:
    """The booked maintenance visits (maintenance.csv) as ``Facts.maintenance`` rows."""
    from twin.models import MaintenanceWindow

    with store.session() as s:
        return [{"site_id": r.site_id, "start": _aware(r.start), "end": _aware(r.end),
                 "ticket": r.ticket}
                for r in s.scalars(select(MaintenanceWindow).order_by(MaintenanceWindow.site_id,
                                                                      MaintenanceWindow.start))]


def load_interferers(store: Any) -> list[dict[str, Any]]:
    """The authorised interferers (interferers.csv) as ``Facts.interferers`` rows."""
    from twin.models import Interferer

    def utc(text: str) -> pd.Timestamp:
        return pd.Timestamp(text).tz_convert("UTC")

    with store.session() as s:
        return [{"interferer_id": r.interferer_id, "name": r.name, "lat": r.lat, "lon": r.lon,
                 "radius_m": r.radius_m,
                 "bands": tuple(b for b in (r.bands or "").split(";") if b),
                 "windows": tuple((utc(a), utc(b)) for a, _, b in
                                  (w.partition("/") for w in r.windows.split(";") if w))}
                for r in s.scalars(select(Interferer).order_by(Interferer.interferer_id))]


class SiteHistory:
    """Every site's lifecycle events: the registry's states as they were at a past time.

    A backfill evaluates ``now`` in the past, so a site decommissioned last week must still
    count as on air for the week before.  ``facts_at`` gives ``facts`` with each site's
    ``state``, ``state_since`` and ``on_air_since`` as of ``at``; every other column is
    today's.  A site with no event at or before ``at`` is taken to have been in the state of
    its first event if that is an undated import (when it reached that state is unknown) or
    in today's state if it has no events at all; otherwise (its history starts later) its
    state is unknown (missing), which no rule acts on.
    """

    def __init__(self, events: pd.DataFrame) -> None:
        # columns: site_id, at (UTC), to_state, dated; sorted by (at, id).  Kept as arrays of
        # codes, so a step's states are a few vectorised passes over the events before it.
        self.events = events.reset_index(drop=True)
        self._times = (self.events["at"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
                       .astype("datetime64[ns]"))
        self._site, self._ids = pd.factorize(self.events["site_id"])
        self._state, self._states = pd.factorize(self.events["to_state"])
        self._dated = self.events["dated"].to_numpy(dtype=bool)
        self._on_air = self._states.get_indexer([State.ON_AIR.value])[0]  # -1: nobody went on air
        # per site: the state assumed before its first event, if that is an undated import
        _, first = np.unique(self._site, return_index=True)
        self._before = np.where(self._dated[first], -1, self._state[first])
        self._cache: tuple[int, tuple] | None = None

    def _at(self, at: datetime | pd.Timestamp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per site code: state code (-1: none yet), state_since and on_air_since (NaT: unknown)."""
        t = utc_timestamp(at)
        n = int(np.searchsorted(self._times, t.tz_localize(None).to_datetime64(), side="right"))
        if self._cache is not None and self._cache[0] == n:
            return self._cache[1]  # no event between the previous step and this one
        site, state, dated, times = self._site[:n], self._state[:n], self._dated[:n], self._times[:n]
        last = np.full(len(self._ids), -1, dtype=np.int64)
        np.maximum.at(last, site, np.arange(n))
        now_state = np.where(last >= 0, self._state[np.maximum(last, 0)], -1)
        never = np.datetime64("NaT", "ns")
        since = np.full(len(self._ids), never, dtype="datetime64[ns]")
        into = dated & (state == now_state[site])  # dated entries into the state it is in at ``at``
        np.maximum.at(since.view(np.int64), site[into], times[into].view(np.int64))
        on_air = np.full(len(self._ids), never, dtype="datetime64[ns]")
        went = dated & (state == self._on_air)
        np.maximum.at(on_air.view(np.int64), site[went], times[went].view(np.int64))
        out = (now_state, since, on_air)
        self._cache = (n, out)
        return out

    def version_at(self, at: datetime | pd.Timestamp) -> int:
        """How many events happened by ``at``: ``facts_at`` only changes when this does."""
        t = utc_timestamp(at)
        return int(np.searchsorted(self._times, t.tz_localize(None).to_datetime64(), side="right"))

    def facts_at(self, facts: Facts, at: datetime | pd.Timestamp) -> Facts:
        if facts.sites.empty or self.events.empty:
            return facts
        now_state, since, on_air = self._at(at)
        sites = facts.sites.copy()
        code = self._ids.get_indexer(sites["site_id"])
        has = code >= 0
        c = np.where(has, code, 0)  # rows without history are overwritten below
        state_code = np.where(now_state[c] >= 0, now_state[c], self._before[c])
        labels = np.asarray(self._states, dtype=object)
        # None as the fill of an object array; numpy's stubs only know array-like fills.
        state = np.where(state_code >= 0, labels[np.maximum(state_code, 0)], None)  # type: ignore[call-overload]
        state[~has] = sites["state"].to_numpy(dtype=object)[~has]  # no history at all: today's
        sites["state"] = state
        for col, values in (("state_since", since), ("on_air_since", on_air)):
            then = pd.Series(pd.to_datetime(values[c], utc=True), index=sites.index)
            then[~has] = pd.to_datetime(sites.loc[~has, col], utc=True)
            sites[col] = then
        return Facts(sites=sites, reservations=facts.reservations, tariffs=facts.tariffs, bills=facts.bills,
                     interferers=facts.interferers, maintenance=facts.maintenance)


def load_site_history(store: Any) -> SiteHistory:
    """Every lifecycle event (site, time, state entered, dated or not), for ``SiteHistory``."""
    from twin.errors import TwinError
    from twin.lifecycle import UNDATED_IMPORT_NOTE
    from twin.models import LifecycleEvent

    try:
        with store.session() as s:
            rows = s.execute(select(LifecycleEvent.site_id, LifecycleEvent.at, LifecycleEvent.to_state,
                                    LifecycleEvent.verb, LifecycleEvent.note)
                             .order_by(LifecycleEvent.at, LifecycleEvent.id)).all()
    except TwinError as exc:
        raise RuleDataError(f"registry history unavailable: {exc}") from exc
    events = pd.DataFrame({
        "site_id": [r.site_id for r in rows],
        "at": pd.Series([_aware(r.at) for r in rows], dtype="datetime64[ns, UTC]"),
        "to_state": [r.to_state for r in rows],
        "dated": pd.Series([not (r.verb == "import" and r.note == UNDATED_IMPORT_NOTE) for r in rows],
                           dtype=bool),
    })
    return SiteHistory(events)


def _aware(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    return utc_timestamp(value)


class GridHistory:
    """Reservation and supply changes: ``facts`` with the reservations and supply in force then.

    The twin of ``SiteHistory`` for ``twin.history``: a backfill step or a report on a past
    month sees each site's reservation (reserved kW, feeder, substation, status) and supply
    as they were at its time.  A site with no history keeps today's values; a site whose
    reservation history starts later (with a dated row) had none.  A step between the same
    two changes reuses the previous answer.
    """

    def __init__(self, reservations: pd.DataFrame, supply: pd.DataFrame) -> None:
        self.reservations = reservations
        self.supply = supply
        self._res_times = _sorted_ns(reservations)
        self._supply_times = _sorted_ns(supply)
        self._cache: dict[str, tuple[int, pd.DataFrame]] = {}

    def _in_force(self, name: str, changes: pd.DataFrame, times: np.ndarray, at: pd.Timestamp,
                  assume_first: bool | None) -> pd.DataFrame:
        from twin.history import in_force

        n = int(np.searchsorted(times, at.tz_localize(None).to_datetime64(), side="right"))
        hit = self._cache.get(name)
        if hit is not None and hit[0] == n:
            return hit[1]
        frame = in_force(changes, at, assume_first=assume_first)
        self._cache[name] = (n, frame)
        return frame

    def version_at(self, at: datetime | pd.Timestamp) -> tuple[int, int]:
        """How many reservation and supply changes took effect by ``at``: ``facts_at``
        only changes when this does."""
        t = utc_timestamp(at).tz_localize(None).to_datetime64()
        return (int(np.searchsorted(self._res_times, t, side="right")),
                int(np.searchsorted(self._supply_times, t, side="right")))

    def facts_at(self, facts: Facts, at: datetime | pd.Timestamp) -> Facts:
        t = utc_timestamp(at)
        reservations, sites = facts.reservations, facts.sites
        if not self.reservations.empty:
            cols = ["site_id", "declared_kw", "reserved_kw", "feeder", "substation", "status"]
            then = self._in_force("reservations", self.reservations, self._res_times, t, None)[cols]
            kept = reservations[~reservations["site_id"].isin(self.reservations["site_id"])] \
                if not reservations.empty else reservations
            reservations = (pd.concat([then, kept[cols]], ignore_index=True) if len(kept)
                            else then.reset_index(drop=True))
        if not self.supply.empty and not sites.empty:
            then = self._in_force("supply", self.supply, self._supply_times, t, True)
            supply = sites["site_id"].map(dict(zip(then["site_id"], then["supply"], strict=True)))
            sites = sites.assign(supply=supply.where(supply.notna(), sites["supply"]))
        return dataclasses.replace(facts, sites=sites, reservations=reservations)


def _sorted_ns(changes: pd.DataFrame) -> np.ndarray:
    if changes.empty:
        return np.array([], dtype="datetime64[ns]")
    times = pd.to_datetime(changes["effective_from"], utc=True).dt.tz_localize(None)
    return np.sort(times.to_numpy().astype("datetime64[ns]"))


def load_grid_history(store: Any) -> GridHistory:
    """Every reservation and supply change, for ``GridHistory``."""
    from twin.errors import TwinError
    from twin.history import load_reservation_changes, load_supply_changes

    try:
        with store.session() as s:
            return GridHistory(load_reservation_changes(s), load_supply_changes(s))
    except TwinError as exc:
        raise RuleDataError(f"registry history unavailable: {exc}") from exc


def load_ratings(store: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feeder ratings (feeder, substation, rated_kw) and substation ratings (substation, rated_kw)."""
    from twin.errors import TwinError
    from twin.models import Feeder, Substation

    try:
        with store.session() as s:
            feeders = pd.DataFrame(s.execute(select(Feeder.feeder, Feeder.substation, Feeder.rated_kw)).all(),
                                   columns=["feeder", "substation", "rated_kw"])
            subs = pd.DataFrame(s.execute(select(Substation.substation, Substation.rated_kw)).all(),
                                columns=["substation", "rated_kw"])
    except TwinError as exc:
        raise RuleDataError(f"registry ratings unavailable: {exc}") from exc
    return feeders, subs
