"""Synthetic telemetry for a ``Fleet``: docs/contracts.md section 1 payloads, deterministic.

``readings(fleet, start, end, period_s, scenario)`` is a pure generator of
``(topic, payload_bytes)``: no clock, no socket.  Every value is a function
of the fleet's seed, the site or cell and the timestamp, so a rerun over the
same window publishes the same points (InfluxDB overwrites them in place).

- ``tower`` and ``power`` every ``period_s`` for sites with power
  (``power_connected``, ``on_air``, ``relocating``); ``interference`` every
  15 minutes per cell for sites on air, with per-PRB vectors (273 PRBs, n78
  and n41 cells) during the last ``prb_window_s`` of the run.
- History is sent the way a device flushes a backlog: one JSON array per
  site, stream and ``chunk_s`` window.  With ``chunk_s`` equal to the period
  (live mode) a tower or power message is a single object.
- Scenario anomalies (``Fleet.plan``) start at ``onset`` (by default the last
  quarter... half of the run, at most the last 6 hours) and last to the end.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import orjson

from simulator.fleet import BATTERY_EMPTY_PCT as _BATTERY_EMPTY_PCT
from simulator.fleet import NARROWBAND_PRBS as _NARROWBAND_PRBS
from simulator.fleet import Cell, Fleet, ScenarioPlan, Site, daily_phase, visiting

__all__ = [
    "ANOMALY_MAX_S",
    "INTERFERENCE_PERIOD_S",
    "Chunk",
    "chunks",
    "malformed",
    "onset",
    "readings",
]

ANOMALY_MAX_S = 6 * 3600.0
INTERFERENCE_PERIOD_S = 900
_NARROWBAND_RISE_DB = 25.0
_MASK = (1 << 64) - 1
_ORJSON = orjson.OPT_SERIALIZE_NUMPY


def _epoch(value: datetime | float | int) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def onset(fleet: Fleet, start: datetime | float, end: datetime | float) -> float:
    """When a scenario's anomalies begin: half-way through the run, at most 6 h before its end.

    Never before the end of the bill month, so that the energy the bills
    describe is the undisturbed energy.
    """
    s, e = _epoch(start), _epoch(end)
    return max(s, e - min(ANOMALY_MAX_S, (e - s) / 2), fleet.bill_end.timestamp())


def _unit(key: int, t: int) -> float:
    """A deterministic uniform number in [0, 1) for ``(key, t)`` (splitmix64)."""
    x = (key * 0x9E3779B97F4A7C15 + t * 0xBF58476D1CE4E5B9 + 0x632BE59BD9B4E019) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) / 18446744073709551616.0


def _jitter(key: int, t: int) -> float:
    """Deterministic noise in [-1, 1)."""
    return 2.0 * _unit(key, t) - 1.0


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True, slots=True)
class Chunk:
    """The messages of one ``chunk_s`` window; ``until`` is its last reading's timestamp."""

    until: float
    messages: list[tuple[str, bytes]]
    readings: dict[str, int]  # readings per stream


class _Player:
    """Plays one fleet under one scenario; holds per-cell PRB shapes and the noise table."""

    def __init__(self, fleet: Fleet, plan: ScenarioPlan, onset_ts: float, end_ts: float,
                 prb_window_s: float) -> None:
        self.fleet = fleet
        self.plan = plan
        self.onset = onset_ts
        self.prb_from = end_ts - prb_window_s
        self.keys = {s.site_id: (zlib.crc32(s.site_id.encode()) << 20) ^ fleet.seed
                     for s in fleet.sites}
        self.cell_keys = {c.cell_id: self.keys[s.site_id] ^ (zlib.crc32(c.cell_id.encode()) << 1)
                          for s in fleet.sites for c in s.cells}
        rng = np.random.default_rng(fleet.seed)
        self.noise = rng.normal(0.0, 0.8, size=(256, 273))
        self.shapes: dict[str, np.ndarray] = {}

    # -- tower ----------------------------------------------------------------------------

    def battery(self, site: Site, t: int) -> float | None:
        """State of charge while mains is lost, or None while mains is present."""
        rate = self.plan.mains_loss_pct_per_h.get(site.site_id)
        if rate is None or t < self.onset:
            return None
        return max(0.0, 100.0 - rate * (t - self.onset) / 3600.0)

    def silent(self, site: Site, t: int) -> bool:
        if t >= self.onset and site.site_id in self.plan.silent:
            return True
        soc = self.battery(site, t)
        return soc is not None and soc <= _BATTERY_EMPTY_PCT

    def tower(self, site: Site, t: int, ts: str) -> dict:
        key = self.keys[site.site_id]
        ambient = 16.0 + 7.0 * math.cos(daily_phase(t, 15.0))
        if site.kind == "indoor":
            temp = 23.0 + 1.5 * math.cos(daily_phase(t, 15.0)) + 0.4 * _jitter(key, t)
        else:
            temp = ambient + 6.0 + 0.4 * site.base_kw + 0.8 * _jitter(key, t)
        load_kw = Fleet.power_kw(site, t)
        soc = self.battery(site, t)
        doc = {
            "ts": ts,
            "mains_ok": soc is None,
            "on_battery": soc is not None,
            "generator_running": False,
            "battery_voltage_v": round(53.5 + 0.1 * _jitter(key + 1, t) if soc is None
                                       else 45.0 + 7.0 * soc / 100.0, 2),
            "battery_soc_pct": round(100.0 if soc is None else soc, 1),
            "rectifier_load_a": round(load_kw * 850.0 / 53.5 * (1 + 0.02 * _jitter(key + 2, t)), 1),
            "cabinet_temp_c": round(min(89.0, max(-39.0, temp)), 1),
            "humidity_pct": round(min(98.0, max(5.0, 65.0 - 15.0 * math.cos(daily_phase(t, 15.0))
                                                + 3.0 * _jitter(key + 3, t))), 1),
            "door_open": visiting(site.site_id, self.fleet.seed, t),
        }
        if site.kind == "pole":
            doc["tilt_deg"] = round(0.4 + 0.05 * abs(_jitter(key + 5, t)), 2)
        return doc

    # -- power ----------------------------------------------------------------------------

    def power(self, site: Site, t: int, ts: str) -> dict:
        key = self.keys[site.site_id]
        if self.battery(site, t) is not None:
            # No grid power: the meter stands still at its reading when mains was lost.
            return {"ts": ts, "meter_id": site.meter_id,
                    "energy_kwh": round(Fleet.energy_kwh(site, self.onset), 3),
                    "power_kw": 0.0, "voltage_v": 0.0, "current_a": 0.0}
        kw = Fleet.power_kw(site, t) * (1 + 0.03 * _jitter(key + 6, t))
        volts = 400.0 + 4.0 * _jitter(key + 7, t)
        pf = 0.96 + 0.02 * _jitter(key + 8, t)
        return {
            "ts": ts,
            "meter_id": site.meter_id,
            "energy_kwh": round(Fleet.energy_kwh(site, t), 3),
            "power_kw": round(kw, 3),
            "voltage_v": round(volts, 1),
            "current_a": round(kw * 1000.0 / (math.sqrt(3) * volts * pf), 2),
            "power_factor": round(pf, 3),
        }

    # -- interference ---------------------------------------------------------------------

    def _shape(self, cell: Cell) -> np.ndarray:
        shape = self.shapes.get(cell.cell_id)
        if shape is None:
            rng = np.random.default_rng(zlib.crc32(cell.cell_id.encode()) ^ self.fleet.seed)
            shape = rng.normal(0.0, 0.4, size=cell.prbs)
            shape[:4] += 1.0  # band edges pick up a little adjacent-channel energy
            shape[-4:] += 1.0
            self.shapes[cell.cell_id] = shape
        return shape

    def interference(self, site: Site, cell: Cell, t: int, ts: str) -> dict:
        key = self.cell_keys[cell.cell_id]
        level = (cell.floor_dbm + 1.5 * math.cos(daily_phase(t, 14.0)) + 0.6 * _jitter(key, t))
        active = t >= self.onset
        rise = self.plan.jammer_rise_db.get(cell.cell_id, 0.0) if active else 0.0
        narrow_at = self.plan.narrowband.get(cell.cell_id) if active else None
        level += rise
        traffic = (1 + math.cos(daily_phase(t, 20.0))) / 2
        doc = {
            "ts": ts,
            "cell_id": cell.cell_id,
            "band": cell.band,
            "ul_prb_usage_pct": round(min(100.0, max(0.0, 10 + 55 * traffic
                                                     + 5 * _jitter(key + 1, t))), 1),
            "period_s": INTERFERENCE_PERIOD_S,
        }
        if cell.prbs and t >= self.prb_from:
            row = self.noise[int(_unit(key + 2, t) * 256)]
            prb = level + self._shape(cell) + row[: cell.prbs]
            if narrow_at is not None:
                prb[narrow_at:narrow_at + _NARROWBAND_PRBS] += _NARROWBAND_RISE_DB
            prb = np.clip(np.round(prb, 1), -139.9, -40.1)
            mean = 10.0 * math.log10(float(np.mean(np.power(10.0, prb / 10.0))))
            doc["ul_interference_dbm"] = round(min(-40.1, max(-139.9, mean)), 1)
            doc["prb_dbm"] = prb
        else:
            if narrow_at is not None and cell.prbs:
                n = cell.prbs
                level += 10 * math.log10((n - _NARROWBAND_PRBS
                                          + _NARROWBAND_PRBS * 10 ** (_NARROWBAND_RISE_DB / 10)) / n)
            doc["ul_interference_dbm"] = round(min(-40.1, max(-139.9, level)), 1)
        return doc


MAX_MESSAGE_BYTES = 256 * 1024
MAX_MESSAGE_READINGS = 5000


def _backlog(topic: str, docs: list[dict]) -> list[tuple[str, bytes]]:
    """One message for ``docs`` (an object if there is one), split while it is too big.

    The collector refuses messages over 1 MiB or 10 000 readings, so a long
    ``chunk_s`` becomes several arrays rather than one rejected message.
    """
    if len(docs) == 1:
        return [(topic, orjson.dumps(docs[0], option=_ORJSON))]
    if len(docs) <= MAX_MESSAGE_READINGS:
        payload = orjson.dumps(docs, option=_ORJSON)
        if len(payload) <= MAX_MESSAGE_BYTES:
            return [(topic, payload)]
    half = len(docs) // 2
    return _backlog(topic, docs[:half]) + _backlog(topic, docs[half:])


def _aligned(start: float, end: float, step: int) -> range:
    first = int(math.ceil(start / step) * step)
    return range(first, math.ceil(end), step)


def chunks(
    fleet: Fleet,
    start: datetime | float,
    end: datetime | float,
    period_s: int = 60,
    scenario: str = "normal",
    *,
    chunk_s: int | None = None,
    onset_ts: float | None = None,
    run_end_ts: float | None = None,
    prb_window_s: float = ANOMALY_MAX_S,
    site_ids: Collection[str] | None = None,
) -> Iterator[Chunk]:
    """The messages of ``[start, end)`` grouped by ``chunk_s`` windows, oldest first.

    Timestamps are multiples of ``period_s`` (interference: of 15 minutes), so
    reruns over overlapping windows produce identical points.  A run played
    in phases (history, then live) passes the whole run's ``onset_ts`` and
    ``run_end_ts`` to each phase so that anomalies and PRB vectors line up.
    ``site_ids`` limits the output to those sites (tests, one-site replays).
    """
    period_s = int(period_s)
    if period_s < 1:
        raise ValueError("period_s must be at least 1 second")
    chunk_s = int(chunk_s or period_s)
    if chunk_s % period_s:
        raise ValueError("chunk_s must be a multiple of period_s")
    s, e = _epoch(start), _epoch(end)
    plan = fleet.plan(scenario)
    run_end = e if run_end_ts is None else run_end_ts
    player = _Player(fleet, plan, onset(fleet, s, run_end) if onset_ts is None else onset_ts,
                     run_end, prb_window_s)
    sites = fleet.publishing
    if site_ids is not None:
        wanted = set(site_ids)
        sites = tuple(x for x in sites if x.site_id in wanted)
    for c0 in _aligned(s - (s % chunk_s), e, chunk_s):
        lo, hi = max(s, c0), min(e, c0 + chunk_s)
        ticks = _aligned(lo, hi, period_s)
        iticks = _aligned(lo, hi, INTERFERENCE_PERIOD_S)
        stamps = {t: _iso(t) for t in ticks}
        stamps.update({t: _iso(t) for t in iticks if t not in stamps})
        messages: list[tuple[str, bytes]] = []
        counts = {"tower": 0, "power": 0, "interference": 0}
        last = None
        for site in sites:
            sid = site.site_id
            alive = [t for t in ticks if not player.silent(site, t)]
            if alive:
                tower = [player.tower(site, t, stamps[t]) for t in alive]
                power = [player.power(site, t, stamps[t]) for t in alive]
                messages += _backlog(f"sites/{sid}/tower", tower)
                messages += _backlog(f"sites/{sid}/power", power)
                counts["tower"] += len(tower)
                counts["power"] += len(power)
                last = max(last or 0, alive[-1])
            if site.on_air and site.cells:
                docs = [player.interference(site, cell, t, stamps[t])
                        for t in iticks if not player.silent(site, t) for cell in site.cells]
                if docs:
                    messages += _backlog(f"sites/{sid}/interference", docs)
                    counts["interference"] += len(docs)
                    last = max(last or 0, iticks[-1])
        if messages:
            yield Chunk(until=float(last if last is not None else hi), messages=messages,
                        readings=counts)


def readings(
    fleet: Fleet,
    start: datetime | float,
    end: datetime | float,
    period_s: int = 60,
    scenario: str = "normal",
    *,
    chunk_s: int | None = None,
    onset_ts: float | None = None,
    run_end_ts: float | None = None,
    prb_window_s: float = ANOMALY_MAX_S,
    site_ids: Collection[str] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """Every ``(topic, payload)`` of ``[start, end)``, oldest first (see ``chunks``)."""
    for chunk in chunks(fleet, start, end, period_s, scenario, chunk_s=chunk_s,
                        onset_ts=onset_ts, run_end_ts=run_end_ts, prb_window_s=prb_window_s,
                        site_ids=site_ids):
        yield from chunk.messages


def malformed(fleet: Fleet, now: datetime | float) -> list[tuple[str, bytes, str]]:
    """One hostile message per rejection class the collector must survive: ``(topic, payload, reason)``.

    The reason is the code ``connectors.reading.parse_message`` gives it; none
    of these may crash a collector or corrupt a neighbouring point.
    """
    t = int(_epoch(now)) // 60 * 60
    site = (fleet.publishing or fleet.sites)[0]
    other = fleet.sites[-1].site_id if len(fleet.sites) > 1 else "ZZ9999"
    sid = site.site_id
    ts = _iso(t)
    dump = orjson.dumps
    return [
        (f"sites/{sid}/tower", b'{"ts": "' + ts.encode() + b'", "mains_ok": tru', "bad_json"),
        (f"sites/{sid}/tower", b"\xff\xfe\x00garbage", "bad_encoding"),
        (f"sites/{sid}/tower", dump({"ts": ts, "mains_ok": "yes"}), "schema"),
        (f"sites/{sid}/tower", dump({"ts": ts, "mains_ok": True, "battery_soc_pct": 140.0}), "schema"),
        (f"sites/{sid}/power", dump({"ts": ts, "meter_id": "M 1,x=2", "energy_kwh": 1.0}), "schema"),
        (f"sites/{sid}/tower", dump({"site_id": other, "ts": ts, "mains_ok": True}), "site_mismatch"),
        (f"sites/{sid}/tower", dump({"ts": t + 3600, "mains_ok": True}), "future_ts"),
        (f"sites/{sid}/tower", b"42", "not_a_reading"),
        (f"sites/{sid}/tower", b"[]", "empty"),
        (f"sites/{sid}/weather", dump({"ts": ts, "rain_mm": 1.0}), "unknown_stream"),
        ("sites/bad site,id=1/tower", dump({"ts": ts, "mains_ok": True}), "bad_site_id"),
    ]
