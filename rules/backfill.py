"""One-pass backfill data: a rule's window frames sliced from range fetches kept in memory.

Stepping a rule through history asked InfluxDB its window's statements at every
step: 2 400 steps of interference for 60 cells took 6-10 minutes, nearly all of it
round trips and re-aggregating the same buckets (a 2-hour window at 15-minute steps
reads each bucket 8 times; the 7-day baseline, with its per-step ranges, ~9
statements a step).  ``RangeData`` stands in for ``WindowData`` during a backfill:
for a rule declared ``one_pass`` it fetches each time-bucketed aggregate once, in
chunks along the range (only the chunks covering the current step's window are
held, so memory is bounded by window + chunk, not by the range), and hands every
step the buckets inside its window.  A step's frames are then row for row those
the step path would have asked for, so its findings and flags are the same:
``tests/rules/test_backfill_equivalence.py`` compares the two flag tables on
random data through real InfluxDB.

The next chunk is read ahead in a thread while the steps use the held one (InfluxDB
answers on one core while Python evaluates on the other), and the cells a step may
flag are screened from the held buckets with one vectorised level test per chunk
and baseline day, so the rule walks a few cells a step instead of every row.

The other one-pass rules (docs/rules.md has the table): ``reservations`` gets every
site's exact peak from the range's 15-minute means; ``site_offline`` and ``lifecycle``
get ``last_seen`` as a running maximum over raw reading times read once; the tower rules
screen each step from 5-minute buckets and ask the step path only when a site passes.
Chunks are asked as CSV (``csv_frame``); interference's buckets from the raw readings
where that gives the same rows (``_QuartersFromReadings``).  All of it measured in
bench/RESULTS.md: every rule over a month at 10 000 sites and cells in 4 min, against
~3 h step by step.

Exact only where a bucket is whole: a step at a time that is not on a bucket
boundary (``--until`` now) would see a partial last bucket, so that step takes the
step path.  Frames that are not buckets (per-PRB means over the window) are still
asked per step, but only for the cells the step flags (usually none).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from rules.data import WindowData, _between, _id_filter, with_summed_peaks
from rules.errors import RuleDataError
from rules.rule import Facts, Frames, Rule

__all__ = ["RangeData"]

# Chunk of buckets fetched at once: 10 000 cells x 24 15-minute buckets is ~240k rows
# (~60 MB as a frame) per interference chunk.
DEFAULT_CHUNK = timedelta(hours=6)

_RECENT = ('SELECT mean("ul_interference_dbm") AS "ul_dbm" FROM "interference" WHERE {where}'
           ' GROUP BY time(15m), "site_id", "cell_id", "band" fill(none)')
_HOURLY = ('SELECT mean("ul_interference_dbm") AS "ul_dbm" FROM "interference" WHERE {where}'
           ' GROUP BY time(1h), "cell_id" fill(none)')


# The tower's 5-minute screens: what a step of the tower rules asks first, per bucket.  The
# rows of a site with any of these fields in a bucket (fill(none) drops a bucket only when
# every field is empty).
_TOWER = ('SELECT max("cabinet_temp_c") AS "temp_max", max("tilt_deg") AS "tilt_max", '
          'min("battery_voltage_v") AS "volt_min", last("on_battery") AS "on_battery", '
          'last("mains_ok") AS "mains_ok", count("battery_soc_pct") AS "soc_n" FROM "tower" '
          'WHERE {where} GROUP BY time(5m), "site_id" fill(none)')
_DOOR = ('SELECT count("door_open") AS "n" FROM "tower" WHERE {where} AND "door_open" = true'
         ' GROUP BY time(5m), "site_id" fill(none)')
_FIVE = pd.Timedelta(minutes=5)
# The reservations rule's peak: each meter's 15-minute means (what the step path's nested
# statements take the maximum of).
_POWER15 = ('SELECT mean("power_kw") AS "p" FROM "power" WHERE {where}'
            ' GROUP BY time(15m), "site_id", "meter_id" fill(none)')
_QUARTER = pd.Timedelta(minutes=15)


_RAW_RECENT = ('SELECT "ul_interference_dbm" AS "ul_dbm" FROM "interference" WHERE {where}'
               ' GROUP BY "cell_id"')
# Beyond this many series the series list is not read (the buckets are then asked as above).
_MAX_SERIES = 200_000


class _QuartersFromReadings:
    """``_RECENT``'s buckets from the raw readings, when that gives the same rows.

    InfluxDB 1.6 takes ~6 CPU-seconds to answer a day of ``_RECENT`` for 10 000 cells (one
    CSV row per bucket, tags repeated on each), and 2.5 for the raw readings grouped by cell
    alone: a month's backfill spent ~3 minutes of InfluxDB's core on those buckets.  Cells
    report every 15 minutes, so a bucket mostly holds one reading, and the mean of one
    reading is that reading, to the bit.  So: when every ``cell_id`` of ``interference`` is
    one series (``SHOW SERIES``: its ``site_id`` and ``band`` are then the cell's), a chunk
    is read raw, each reading's time floored to its bucket, and the site and band put back;
    a chunk where any cell has two readings in one bucket is asked as ``_RECENT`` instead,
    and so is every chunk after it (the cells report more often than the buckets).
    """

    def __init__(self, data: WindowData) -> None:
        self.data = data
        self.cells: pd.Index | None = None
        self.tags: np.ndarray | None = None  # per cell of ``cells``: (band, site_id)
        self.usable: bool | None = None  # None: not decided yet

    def _decide(self) -> bool:
        reader = getattr(self.data, "reader", None)
        if reader is None or not hasattr(reader, "raw"):
            return False
        try:
            results = reader.raw('SHOW SERIES FROM "interference"')
        except Exception:  # noqa: BLE001 - the buckets are asked the plain way then
            return False
        keys = [row[0] for res in results for ser in res.get("series") or () for row in ser.get("values") or ()]
        if not keys or len(keys) > _MAX_SERIES:
            return False
        cells, bands, sites = [], [], []
        for key in keys:
            if "\\" in key or '"' in key:
                return False  # escaped characters: not split here
            parts = key.split(",")
            tags = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            if parts[0] != "interference" or len(tags) != len(parts) - 1 or sorted(tags) != ["band", "cell_id",
                                                                                               "site_id"]:
                return False
            cells.append(tags["cell_id"])
            bands.append(tags["band"])
            sites.append(tags["site_id"])
        index = pd.Index(cells)
        if not index.is_unique:
            return False  # a cell in two series (two bands or sites): grouping by cell would merge them
        self.cells = index
        self.tags = np.array(list(zip(bands, sites, strict=True)), dtype=object)
        return True

    def __call__(self, a: pd.Timestamp, b: pd.Timestamp) -> pd.DataFrame | None:
        if self.usable is None:
            self.usable = self._decide()
        if not self.usable:
            return None
        assert self.cells is not None and self.tags is not None
        raw = csv_frame(self.data, _RAW_RECENT.format(where=_between(a, b)))
        if raw.empty:
            return None  # asked the plain way: it tells an empty answer from a failed one
        if "cell_id" not in raw.columns or "ul_dbm" not in raw.columns:
            return None
        where = self.cells.get_indexer(raw["cell_id"])
        if (where < 0).any():
            return None  # a cell newer than the series list
        bucket = raw["time"].dt.floor("15min")
        ns = pd.DatetimeIndex(bucket).asi8
        order = np.lexsort((ns, where))
        if ((np.diff(where[order]) == 0) & (np.diff(ns[order]) == 0)).any():
            self.usable = False  # two readings of a cell in one bucket: its mean is InfluxDB's to give
            return None
        out = pd.DataFrame({"time": bucket, "ul_dbm": raw["ul_dbm"].to_numpy(dtype=float),
                            "band": self.tags[where, 0], "cell_id": raw["cell_id"].to_numpy(dtype=object),
                            "site_id": self.tags[where, 1]})
        return out.sort_values(["time", "band", "cell_id", "site_id"], kind="stable").reset_index(drop=True)


def _ts(value: datetime | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


class _Buckets:
    """One bucketed statement over a moving span: chunks fetched ahead, dropped once behind."""

    def __init__(self, data: WindowData, template: str, bucket: pd.Timedelta, chunk: pd.Timedelta, *,
                 read: Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame | None] | None = None) -> None:
        self.data = data
        self.template = template
        # A cheaper way to the same buckets, tried first (None: ask ``template``).
        self.read = read
        self.bucket = bucket
        self.chunk = max(chunk, bucket).ceil(bucket)
        self.parts: list[tuple[pd.Timestamp, pd.Timestamp, pd.DataFrame]] = []
        self.fetches = 0
        # The longest span asked so far: rules with different windows share one statement
        # (door 1 h, mains failure 6 h), and a shorter ask must not drop what a longer needs.
        self.keep = pd.Timedelta(0)
        self._joined: tuple[pd.DataFrame, np.ndarray] | None = None
        # The next chunk, asked while the steps use this one: (start, end, its frame).
        self._ahead: tuple[pd.Timestamp, pd.Timestamp, Future] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def between(self, start: pd.Timestamp, end: pd.Timestamp, limit: pd.Timestamp) -> pd.DataFrame:
        """The buckets in [start, end); both on bucket boundaries.  ``limit``: fetch no further."""
        self.keep = max(self.keep, end - start)
        if not self.parts or start < self.parts[0][0] or start >= self.parts[-1][1]:
            self.parts, self._joined = [], None  # first use, a step back, or past what is held
            hi = start
        else:
            hi = self.parts[-1][1]
        while hi < end:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[0] == hi and ahead[1] >= end:
                b, frame = ahead[1], ahead[2].result()
            else:
                b = max(min(hi + self.chunk, limit.ceil(self.bucket)), end)
                frame = self._chunk(hi, b)
            self.parts.append((hi, b, frame))
            self._joined, hi = None, b
        if self._ahead is None and hi < limit:  # InfluxDB reads the next chunk meanwhile
            b = min(hi + self.chunk, limit.ceil(self.bucket))
            self._ahead = (hi, b, self._pool().submit(self._chunk, hi, b))
        kept = [p for p in self.parts if p[1] > min(start, end - self.keep)]
        if len(kept) != len(self.parts):
            self.parts, self._joined = kept, None
        if self._joined is None:
            frames = [f for _, _, f in self.parts if not f.empty]
            joined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (
                frames[0].reset_index(drop=True) if frames else pd.DataFrame())
            times = (pd.DatetimeIndex(joined["time"]).asi8 if not joined.empty
                     else np.array([], dtype=np.int64))
            self._joined = (joined, times)
        joined, times = self._joined
        if joined.empty:
            return joined
        i, j = np.searchsorted(times, [start.value, end.value], side="left")
        return joined.iloc[i:j]

    def _chunk(self, a: pd.Timestamp, b: pd.Timestamp) -> pd.DataFrame:
        frame = self.read(a, b) if self.read is not None else None
        if frame is None:
            frame = csv_frame(self.data, self.template.format(where=_between(a, b)))
        self.fetches += 1
        return frame.sort_values("time", kind="stable") if not frame.empty else frame

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill-ahead")
        return self._executor

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[2].cancel()
        self._ahead = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    @property
    def joined(self) -> pd.DataFrame:
        """The buckets held, in time order (as of the last ``between``)."""
        return self._joined[0] if self._joined is not None else pd.DataFrame()

    @property
    def times(self) -> np.ndarray:
        """Their times, ns since the epoch."""
        return self._joined[1] if self._joined is not None else np.array([], dtype=np.int64)


def csv_frame(data: WindowData, q: str) -> pd.DataFrame:
    """One statement's frame, asked as CSV: the same frame as ``WindowData._frame`` (columns
    ``time``, the fields, then the tags in InfluxDB's order), built without a Python object
    per point.

    Measured on a 6-hour chunk of 10 000 cells' 15-minute buckets (240 k rows): the JSON
    answer decoded by orjson, then a frame from its rows, held the GIL ~4x longer than
    ``pandas.read_csv`` on the CSV answer (InfluxDB 1.6 answers ``Accept: application/csv``
    with ``name,tags,time,<fields>`` and the tags as one ``k=v,k=v`` string per row, parsed
    here once per distinct series).  A tag value holding ``,`` or ``=`` cannot be split
    back, so such an answer is asked again the JSON way; so is an empty one (InfluxDB's CSV
    says nothing of a failed statement).
    """
    import io

    from connectors.errors import QueryError

    reader = getattr(data, "reader", None)
    if reader is None or not hasattr(reader, "csv"):
        return data._frame(q)
    try:
        body = reader.csv(q)
    except QueryError as exc:
        raise RuleDataError(str(exc)) from exc
    if body is None:
        # InfluxDB 1.6 answers a failed statement in CSV with HTTP 200 and an empty body,
        # like a statement without rows: both are asked again as JSON, which tells them apart.
        return data._frame(q)
    frame = pd.read_csv(io.BytesIO(body), dtype={"name": str, "tags": str, "time": np.int64},
                        keep_default_na=False, na_values=[""])
    if frame.empty:
        return pd.DataFrame()
    fields = list(frame.columns[3:])
    codes, series = pd.factorize(frame["tags"].fillna(""), sort=False)
    parsed = []
    for text in series:
        pairs = [p.split("=", 1) for p in text.split(",")] if text else []
        if any(len(p) != 2 for p in pairs) or "\\" in text or '"' in text:
            return data._frame(q)
        parsed.append(dict(pairs))
    keys = list(dict.fromkeys(k for tags in parsed for k in tags))
    if any(list(tags) != keys for tags in parsed):
        return data._frame(q)  # the same tag keys on every series, or the JSON way
    out = pd.DataFrame({"time": pd.to_datetime(frame["time"].to_numpy(), unit="ns", utc=True)})
    for f in fields:
        column = frame[f]
        booleans = {"true", "false", True, False}
        if column.dtype == bool or (column.dtype == object and column.notna().any()
                                    and set(column.dropna().unique()) <= booleans):
            flags = column.map({"true": True, "false": False, True: True, False: False})
            out[f] = flags.astype(bool) if flags.notna().all() else flags.astype(object).where(flags.notna(), None)
        else:
            out[f] = pd.to_numeric(column, errors="coerce").astype(float)
    for k in keys:
        values = np.array([tags[k] for tags in parsed], dtype=object)
        out[k] = values[codes]
    out.attrs["measurement"] = frame["name"].iloc[-1]
    return out


# ``last_seen``: each reading's own time is the answer, so raw points (one field, which InfluxDB
# returns only where it is set, as ``last`` counts only those): power is hourly, the tower
# every few minutes, hence the chunk lengths (~60 k rows each at 10 000 sites).
_SEEN = (('SELECT "mains_ok" FROM "tower" WHERE {where} GROUP BY "site_id"', pd.Timedelta(hours=1)),
         ('SELECT "energy_kwh" FROM "power" WHERE {where} GROUP BY "site_id"', pd.Timedelta(hours=6)))


class _LastSeen:
    """Every site's latest reading before a moving ``now``, from raw chunks read once, in order.

    The step path asks ``last()`` over ``[now - window, now)`` of the tower and the power
    measurements; here each reading is read once, and a step keeps the latest time per site
    seen before ``now`` (a running maximum), then the sites whose latest is in the window.
    Memory: one time per site, and one chunk per statement (and the one read ahead).
    """

    def __init__(self, data: WindowData, until: pd.Timestamp) -> None:
        self.data = data
        self.until = until
        self.fetches = 0
        self._reset(None)
        self._executor: ThreadPoolExecutor | None = None

    def _reset(self, start: pd.Timestamp | None) -> None:
        self.start = start  # readings at or after it are consumed (or held) so far
        self.consumed = start  # readings before it are in ``_last``
        self._sites = pd.Index([], dtype=object)
        self._last = np.empty(0, dtype=np.int64)
        self._names: Any = None
        self._rank = np.empty(0, dtype=np.intp)
        self._index: pd.Index | None = None
        # per statement: held rows (times ns, site codes) not consumed yet, fetched up to
        self._held: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.intp))
                                                           for _ in _SEEN]
        self._upto: list[pd.Timestamp | None] = [start for _ in _SEEN]
        self._ahead: list[tuple[pd.Timestamp, pd.Timestamp, Future] | None] = [None for _ in _SEEN]

    def frame(self, now: pd.Timestamp, window: pd.Timedelta) -> pd.DataFrame | None:
        """site_id, time of the latest reading in ``[now - window, now)``; None when ``now``
        is before what has been consumed (a step back: the step path answers)."""
        start = now - window
        if self.start is None or start < self.start:
            if self.consumed is not None and now < self.consumed:
                return None
            self._reset(start)
        elif now < self.consumed:
            return None
        for k in range(len(_SEEN)):
            self._consume(k, now)
        self.consumed = now
        keep = np.flatnonzero(self._last >= start.value)
        if len(keep) == 0:
            return pd.DataFrame({"site_id": [], "time": []})
        if self._names is None or len(self._names) != len(self._sites):  # sites seen: sorted once
            self._names = pd.array(np.asarray(self._sites, dtype=object), dtype="str")
            self._rank = np.argsort(np.argsort(np.asarray(self._sites, dtype=object), kind="stable"))
        keep = keep[np.argsort(self._rank[keep], kind="stable")]
        out = pd.DataFrame({"site_id": self._names[keep],
                            "time": pd.to_datetime(self._last[keep], unit="ns", utc=True)})
        # The same answer as arrays over every site seen so far, for ``last_seen_at``: the
        # index is one object for as long as no new site appears, so the rules align their
        # sites to it once rather than build and search a new index every step.
        if self._index is None or len(self._index) != len(self._sites):
            self._index = pd.Index(np.asarray(self._sites, dtype=object))
        out.attrs["last_seen"] = (self._index, self._last.copy(), start.value)
        return out

    def _consume(self, k: int, now: pd.Timestamp) -> None:
        template, chunk = _SEEN[k]
        while True:
            times, codes = self._held[k]
            n = int(np.searchsorted(times, now.value, side="left"))
            if n:
                np.maximum.at(self._last, codes[:n], times[:n])
                self._held[k] = (times[n:], codes[n:])
            upto = self._upto[k]
            if upto is None or upto >= now:
                return
            b = min(upto + chunk, self.until)
            b = max(b, now)
            ahead, self._ahead[k] = self._ahead[k], None
            if ahead is not None and ahead[0] == upto and ahead[1] >= now:
                b, frame = ahead[1], ahead[2].result()
            else:
                frame = self._chunk(template, upto, b)
            self._hold(k, frame)
            self._upto[k] = b
            if b < self.until and self._ahead[k] is None:
                nb = min(b + chunk, self.until)
                self._ahead[k] = (b, nb, self._pool().submit(self._chunk, template, b, nb))

    def _hold(self, k: int, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        ids = frame["site_id"].to_numpy(dtype=object)
        where = self._sites.get_indexer(ids)
        if (where < 0).any():
            self._sites = self._sites.append(pd.Index(pd.unique(ids[where < 0])))
            self._last = np.concatenate([self._last, np.full(len(self._sites) - len(self._last), -1,
                                                             dtype=np.int64)])
            where = self._sites.get_indexer(ids)
        times = pd.DatetimeIndex(frame["time"]).asi8
        order = np.argsort(times, kind="stable")
        old_t, old_c = self._held[k]
        self._held[k] = (np.concatenate([old_t, times[order]]), np.concatenate([old_c, where[order]]))

    def _chunk(self, template: str, a: pd.Timestamp, b: pd.Timestamp) -> pd.DataFrame:
        self.fetches += 1
        return csv_frame(self.data, template.format(where=_between(a, b)))

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill-seen")
        return self._executor

    def close(self) -> None:
        for ahead in self._ahead:
            if ahead is not None:
                ahead[2].cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class _PeakDays:
    """Each meter's highest 15-minute mean over a moving window, from one matrix per day.

    A day of held buckets becomes a (quarter of the day x meter) matrix once (``-inf`` where
    a meter has no bucket), and a whole day's maximum per meter is kept beside it; a step
    then takes the whole days' maxima and the window's partial days' rows, each reduced
    with one ``argmax`` along time, and keeps per meter the first highest in time order -
    what ``groupby(...).idxmax()`` over the time-ordered buckets gave, at ~300 ms a step for
    10 000 meters, and what the step path's ``max()`` over InfluxDB's buckets answers.
    """

    DAY = pd.Timedelta(days=1)

    def __init__(self) -> None:
        self.keys = pd.Index([], dtype=object)  # "site_id\x1fmeter_id", in order of first sight
        self.site_of: list[str] = []
        self.meter_of: list[str] = []
        # day -> (rows it was built from, matrix, the day's maximum and its quarter per meter)
        self.days: dict[pd.Timestamp, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _day(self, buckets: _Buckets, day: pd.Timestamp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        times = buckets.times
        i, j = np.searchsorted(times, [day.value, (day + self.DAY).value], side="left")
        held = self.days.get(day)
        if held is None or held[0] != j - i:
            rows = buckets.joined.iloc[i:j]
            names = pd.Index(rows["site_id"].astype(str).to_numpy(dtype=object) + "\x1f"
                             + rows["meter_id"].astype(str).to_numpy(dtype=object))
            where = self.keys.get_indexer(names)
            if (where < 0).any():
                new = pd.unique(names[where < 0])
                self.keys = self.keys.append(pd.Index(new))
                for name in new:
                    sid, mid = name.split("\x1f", 1)
                    self.site_of.append(sid)
                    self.meter_of.append(mid)
                where = self.keys.get_indexer(names)
            quarter = (times[i:j] - day.value) // _QUARTER.value
            matrix = np.full((96, len(self.keys)), -np.inf)
            values = rows["p"].to_numpy(dtype=float, copy=True)
            values[np.isnan(values)] = -np.inf  # no mean: as absent (``idxmax`` skips NaN)
            matrix[quarter, where] = values
            top = matrix.argmax(axis=0)
            held = (j - i, matrix, matrix[top, np.arange(matrix.shape[1])], top)
            self.days[day] = held
        return held[1], held[2], held[3]

    def peaks(self, buckets: _Buckets, start: pd.Timestamp, now: pd.Timestamp) -> pd.DataFrame:
        first = start.floor("D")
        self.days = {d: v for d, v in self.days.items() if d >= first}
        pieces: list[tuple[pd.Timestamp, int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        day = first
        while day < now:
            matrix, top_v, top_q = self._day(buckets, day)
            qa = (max(start, day) - day) // _QUARTER
            qb = (min(now, day + self.DAY) - day) // _QUARTER
            if qa == 0 and qb == 96:
                values, quarters = top_v, top_q
            else:
                part = matrix[qa:qb]
                quarters = part.argmax(axis=0)
                values = part[quarters, np.arange(part.shape[1])]
                quarters = quarters + qa
            pieces.append((day, qa, qb, matrix, values, quarters))
            day += self.DAY
        # In time order, a meter's value replaces the best so far only when higher: the
        # first highest stays.  A day built before a meter was first seen has no column for it.
        best = np.full(len(self.keys), -np.inf)
        at = np.zeros(len(self.keys), dtype=np.int64)
        for day, _, _, _, values, quarters in pieces:
            n = len(values)
            better = np.flatnonzero(values > best[:n])
            best[better] = values[better]
            at[better] = day.value + quarters[better] * _QUARTER.value
        present = np.flatnonzero(best > -np.inf)
        if len(present) == 0:
            return pd.DataFrame({"site_id": [], "peak_kw": [], "time": []})
        sites = np.array(self.site_of, dtype=object)[present]
        meters = np.array(self.meter_of, dtype=object)[present]
        order = np.lexsort((meters, sites))
        present, sites, meters = present[order], sites[order], meters[order]
        counts = pd.Series(sites).map(pd.Series(sites).value_counts()).to_numpy()
        one = counts == 1
        single = pd.DataFrame({"site_id": sites[one], "peak_kw": best[present[one]],
                               "time": pd.to_datetime(at[present[one]], unit="ns", utc=True)})
        if one.all():
            return single
        # Sites with several meters: their 15-minute means, time-ordered and meter-ordered as
        # InfluxDB answers them, summed per bucket by the step path's own function.
        cols = present[~one]
        parts = []
        for day, qa, qb, matrix, _, _ in pieces:
            width = matrix.shape[1]
            sub = np.full((qb - qa, len(cols)), -np.inf)
            inside = cols < width
            sub[:, inside] = matrix[qa:qb, cols[inside]]
            r, c = np.nonzero(sub > -np.inf)
            parts.append(pd.DataFrame({
                "time": pd.to_datetime(day.value + (r + qa) * _QUARTER.value, unit="ns", utc=True),
                "p": sub[r, c], "site_id": sites[~one][c], "meter_id": meters[~one][c]}))
        return with_summed_peaks(single, pd.concat(parts, ignore_index=True))


class RangeData:
    """``WindowData`` for a backfill: the ``one_pass`` rules' frames sliced from range fetches.

    Every other rule, and a step of a one-pass rule off a bucket boundary, is fetched by
    the wrapped ``WindowData`` exactly as a live run would.
    """

    def __init__(self, data: WindowData, until: datetime, *, chunk: timedelta = DEFAULT_CHUNK) -> None:
        self.data = data
        self.until = _ts(until)
        self.chunk = pd.Timedelta(chunk)
        self.concurrency = data.concurrency
        self._lock = threading.Lock()
        self._recent = _Buckets(data, _RECENT, pd.Timedelta(minutes=15), self.chunk,
                                read=_QuartersFromReadings(data))
        self._hourly = _Buckets(data, _HOURLY, pd.Timedelta(hours=1), pd.Timedelta(days=1))
        self._tower = _Buckets(data, _TOWER, _FIVE, pd.Timedelta(hours=3))
        self._door = _Buckets(data, _DOOR, _FIVE, pd.Timedelta(hours=6))
        self._seen = _LastSeen(data, self.until)
        self._power = _Buckets(data, _POWER15, _QUARTER, pd.Timedelta(days=1))
        self._peaks = _PeakDays()
        self._baseline: tuple[tuple[pd.Timestamp, pd.Timestamp], pd.DataFrame] | None = None
        self._meets_key: tuple | None = None
        self._meets_rows = self._codes = np.array([])
        self._meets_joined: pd.DataFrame | None = None
        self._cells = pd.Index([], dtype=object)
        self._part_rows: dict[int, tuple] = {}
        self._table = np.empty((0, 24))
        self._table_key: tuple | None = None
        self._table_baseline: pd.DataFrame | None = None
        self.sliced_steps = 0
        self.stepped = 0

    def new_run(self) -> None:
        self.data.new_run()

    def close(self) -> None:
        """Stop the read-ahead (the wrapped ``WindowData`` stays open: it is the engine's)."""
        for buckets in (self._recent, self._hourly, self._tower, self._door, self._seen, self._power):
            buckets.close()

    @property
    def fetches(self) -> int:
        """Range statements asked so far (chunks of buckets)."""
        return sum(b.fetches for b in (self._recent, self._hourly, self._tower, self._door, self._seen,
                                       self._power))

    def fetch(self, rule: Rule, facts: Facts, now: datetime, t: Any) -> dict[str, pd.DataFrame]:
        at = _ts(now)
        if not rule.one_pass:
            self.stepped += 1
            return self.data.fetch(rule, facts, now, t)
        if any(n.startswith("interference") for n in rule.needs):
            if at != at.floor("15min"):
                self.stepped += 1
                return self.data.fetch(rule, facts, now, t)
            with self._lock:
                self.sliced_steps += 1
                frames: dict[str, pd.DataFrame] = {}
                for name in rule.needs:
                    frames[name] = getattr(self, name)(facts, at, t, frames)
                return frames
        # The tower rules: each frame screened from the range's 5-minute buckets; a step whose
        # screen passes nobody gets the empty frame the step path answers, any other step the
        # step path itself (a conservative screen, so the frames are the step path's).
        with self._lock:
            frames = {}
            screened = True
            for name in rule.needs:
                frame = self._screened(name, facts, at, t, frames)
                if frame is None:
                    screened = False
                    frame = getattr(self.data, self.data._FOR_RULES.get(name, name))(facts, now, t, frames)
                frames[name] = frame
            if screened:
                self.sliced_steps += 1
            else:
                self.stepped += 1
            return frames

    def _screened(self, name: str, facts: Facts, now: pd.Timestamp, t: Any, frames: Frames
                  ) -> pd.DataFrame | None:
        """``name``'s frame when the range's buckets show it is empty at ``now``; None when
        the step path must be asked (the screen passes a site, or the window is not whole
        5-minute buckets)."""
        window = pd.Timedelta(seconds=t.window)
        start = now - window
        if name == "last_seen":
            return self._seen.frame(now, window)
        if name == "power_peak":
            return self._power_peak(now, t)
        if now != now.floor(_FIVE) or start != start.floor(_FIVE):
            return None
        if name == "door_readings":
            door = self._door.between(start, now, self.until)
            return pd.DataFrame() if door.empty else None
        if name not in ("tower_latest", "tower_5m", "env_5m"):
            return None
        tower = self._tower.between(start, now, self.until)
        if tower.empty:
            return pd.DataFrame()
        if name == "tower_latest":  # a site with any of the three fields in the window has a row
            return None
        if name == "tower_5m":
            on_battery = tower.get("on_battery", pd.Series(dtype=object))
            mains_ok = tower.get("mains_ok", pd.Series(dtype=object))
            # a site whose last report says on battery or mains down has such a bucket
            suspect = (on_battery == True).any() or (mains_ok == False).any()  # noqa: E712 - None stays out
            return None if suspect else pd.DataFrame()
        suspect = False
        for column, level, above in (("temp_max", getattr(t, "overtemp_c", None), True),
                                     ("tilt_max", getattr(t, "limit_deg", None), True),
                                     ("volt_min", getattr(t, "warning_v", None), False)):
            if level is not None and column in tower.columns:
                values = pd.to_numeric(tower[column], errors="coerce")
                suspect |= bool(((values >= level) if above else (values <= level)).any())
        return None if suspect else pd.DataFrame()

    def _power_peak(self, now: pd.Timestamp, t: Any) -> pd.DataFrame | None:
        """``power_peak`` of every site from the range's 15-minute means; None off the grid.

        The step path's frame holds only the sites whose findings need their peak (cheap
        bounds leave out the rest, ``WindowData.flaggable_power_peak``); this one holds every
        site's exact peak, which gives those sites the same peaks and the others none they
        could be flagged on.  As in the step path, a meter's peak is its first highest
        15-minute mean over the window, and a site with several meters takes the highest sum
        of their means (``_PeakDays``).
        """
        start = (now - pd.Timedelta(seconds=t.window)).floor(_QUARTER)
        if now != now.floor(_QUARTER):
            return None
        held = self._power.between(start, now, self.until)
        if held.empty:
            return pd.DataFrame({"site_id": [], "peak_kw": [], "time": []})
        return self._peaks.peaks(self._power, start, now)

    # -- the frames that can be sliced, named as in ``WindowData`` --------------------------
    def interference_recent(self, facts: Facts, now: pd.Timestamp, t: Any, _frames: Frames) -> pd.DataFrame:
        """The window's buckets of the cells that may be flagged at ``now``: the rule flags a
        cell for a run of periods that ends with its latest one, no earlier than two periods
        before ``now``, at a level or a rise over its baseline - so a cell with no such bucket
        since then cannot be flagged, and is left out with all its rows (the findings are
        those of the whole frame).  At 10 000 cells the rule then walks a few cells a step
        instead of 80 000 rows."""
        start = (now - pd.Timedelta(seconds=t.window)).floor("15min")
        recent = self._recent.between(start, now, self.until)
        if recent.empty:
            return recent
        baseline = self.interference_baseline(facts, now, t, _frames)
        meets = self._meets(t, baseline)
        rows = slice(*np.searchsorted(self._recent.times, [start.value, now.value], side="left"))
        late = (now - 2 * pd.Timedelta(minutes=15)).value
        codes, ok, times = self._codes[rows], meets[rows], self._recent.times[rows]
        wanted = np.unique(codes[ok & (times >= late)])
        if len(wanted) == 0:
            return recent.iloc[:0]
        return recent[np.isin(codes, wanted)]

    def _meets(self, t: Any, baseline: pd.DataFrame) -> np.ndarray:
        """Per row of the held buckets: at the warning level, or ``rise_db`` over the baseline
        of its cell and hour of day (the rule's test of one period, for every row at once)."""
        from rules.interference import _baselines

        joined = self._recent.joined
        key = (id(joined), id(baseline), t.warning_dbm, t.rise_db, t.min_baseline_days)
        if self._meets_key == key:
            return self._meets_rows
        # Per held chunk, once: its rows' cell codes (in a table of every cell seen), hours
        # and levels; per chunk and baseline day, once: which rows meet a level.
        parts = [f for _, _, f in self._recent.parts if not f.empty]
        live = {id(f) for f in parts}
        self._part_rows = {k: v for k, v in self._part_rows.items() if k in live}
        for f in parts:
            if id(f) not in self._part_rows:
                where = self._cells.get_indexer(f["cell_id"])
                if (where < 0).any():
                    self._cells = self._cells.append(pd.Index(pd.unique(f["cell_id"][where < 0])))
                    where = self._cells.get_indexer(f["cell_id"])
                self._part_rows[id(f)] = (f, where, f["time"].dt.hour.to_numpy(),
                                          f["ul_dbm"].to_numpy(dtype=float), {})
        base_key = (id(baseline), len(self._cells), t.warning_dbm, t.rise_db, t.min_baseline_days)
        if self._table_key != base_key:
            table = np.full((len(self._cells), 24), np.nan)
            base_hour, _ = _baselines(baseline, t)
            rows = base_hour.cells.get_indexer(self._cells)
            table[rows >= 0] = base_hour.table[rows[rows >= 0]]
            self._table, self._table_key, self._table_baseline = table, base_key, baseline
        pieces_codes, pieces_meets = [], []
        for f in parts:
            _, codes, hours, levels, memo = self._part_rows[id(f)]
            meets = memo.get(base_key)
            if meets is None:
                base = self._table[codes, hours]
                with np.errstate(invalid="ignore"):
                    meets = (levels >= t.warning_dbm) | (~np.isnan(base) & (levels - base >= t.rise_db))
                memo.clear()
                memo[base_key] = meets
            pieces_codes.append(codes)
            pieces_meets.append(meets)
        codes = np.concatenate(pieces_codes) if pieces_codes else np.array([], dtype=np.intp)
        meets = np.concatenate(pieces_meets) if pieces_meets else np.array([], dtype=bool)
        self._codes, self._meets_rows, self._meets_key = codes, meets, key
        self._meets_joined = joined  # keeps ``id(joined)`` unique while the key holds it
        return meets

    def interference_baseline(self, facts: Facts, now: pd.Timestamp, t: Any, _frames: Frames) -> pd.DataFrame:
        """Every cell's hourly means over the baseline days: the same frame object for every
        step of a day, so the rule's baselines are computed once a day (``interference``)."""
        end = (now - pd.Timedelta(seconds=t.window)).floor("D")
        start = end - pd.Timedelta(days=t.baseline_days)
        if self._baseline is not None and self._baseline[0] == (start, end):
            return self._baseline[1]
        frame = self._hourly.between(start, end, max(end, self.until.floor("D")))
        self._baseline = ((start, end), frame)
        return frame

    def interference_prb(self, facts: Facts, now: pd.Timestamp, t: Any, frames: Frames) -> pd.DataFrame:
        """Per-PRB means over the window, asked only for the loud cells the step flags: the
        rule reads no other cell's vector, and a cell's mean does not depend on the others."""
        from rules.interference import flaggable_cells

        recent = frames.get("interference_recent")
        if recent is None or recent.empty:
            return pd.DataFrame()
        loud = recent.groupby("cell_id")["ul_dbm"].max()
        loud_cells = set(loud[loud >= t.warning_dbm - t.rise_db].index)
        if not loud_cells:
            return pd.DataFrame()
        cells = sorted(loud_cells & flaggable_cells(recent, frames.get("interference_baseline"), now, t))
        if not cells:
            return pd.DataFrame()
        return self._prb(now, t, cells)

    def _prb(self, now: pd.Timestamp, t: Any, cells: Iterable[str]) -> pd.DataFrame:
        start = (now - pd.Timedelta(seconds=t.window)).floor("15min")
        q = (f'SELECT mean(/^prb_/) FROM "interference_prb" WHERE {_between(start, now)}'
             f'{_id_filter("cell_id", cells)} GROUP BY "site_id", "cell_id"')
        df = self.data._frame(q)
        return df.rename(columns=lambda c: c[5:] if c.startswith("mean_prb_") else c)
