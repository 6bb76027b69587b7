"""``sitetwin simulate``: publish realistic telemetry for a seeded fleet (docs/contracts.md section 3).

Two phases, either or both:

- history (``--backfill 7d`` or ``--start TS``): the readings of the past
  window, sent as device backlogs (JSON arrays) as fast as the broker takes them;
- live (``--duration 10m``): readings paced on the wall clock, ``--speed X``
  simulated seconds per real second; compressed runs end at "now", so no
  timestamp is ever in the future.

The same ``--seed`` and month give the same fleet and the same anomalies
(``--json`` prints them under ``expected``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from simulator.fleet import SCENARIOS, Fleet
from sitetwin.config import Settings, parse_duration
from sitetwin.errors import UserError
from sitetwin.output import emit

if TYPE_CHECKING:
    from connectors.publisher import PublishStats

__all__ = ["Simulation", "register", "simulate"]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timestamp(text: str) -> float:
    try:
        if text.replace(".", "", 1).isdigit():
            return float(text)
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time or epoch seconds: {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "simulate", help="publish realistic telemetry for a synthetic fleet",
        description="Publish docs/contracts.md section 1 telemetry for N synthetic sites over MQTT "
                    "(QoS 1). See docs/simulator.md.")
    p.add_argument("--sites", type=_positive_int, required=True, metavar="N",
                   help="sites in the fleet (those with power publish, about 3 in 4)")
    p.add_argument("--duration", type=_duration, metavar="DURATION",
                   help="live run time on the wall clock, e.g. 10m")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="simulated seconds per real second in the live phase (default 1)")
    p.add_argument("--scenario", choices=SCENARIOS, default="normal",
                   help="anomalies to inject (default normal)")
    p.add_argument("--seed", type=int, default=1, help="fleet and noise seed (default 1)")
    history = p.add_mutually_exclusive_group()
    history.add_argument("--backfill", type=_duration, metavar="DURATION",
                         help="first publish this much history ending now, as fast as possible")
    history.add_argument("--start", type=_timestamp, metavar="TS",
                         help="first publish history from TS (ISO 8601 or epoch) to now")
    p.add_argument("--period", type=_duration, default=60.0, metavar="DURATION",
                   help="tower and power reporting period (default 60s; interference: 15m)")
    p.add_argument("--history-period", type=_duration, metavar="DURATION",
                   help="reporting period of the history only (default: --period), e.g. 15m "
                        "to load a month quickly")
    p.add_argument("--chunk", type=_duration, default=3600.0, metavar="DURATION",
                   help="history per backlog message (default 1h)")
    p.add_argument("--rate", type=float, metavar="MSG/S", help="at most this many messages per second")
    p.add_argument("--max-inflight", type=_positive_int, default=1000, metavar="N",
                   help="unacknowledged messages at most (default 1000)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--transport", choices=("wire", "paho"), default="wire",
                   help="wire: lean MQTT 5 publisher (default, ~8x faster); paho: paho-mqtt")
    p.add_argument("--client-id", help="MQTT client id (default: generated)")
    p.add_argument("--malformed", type=int, default=0, metavar="N",
                   help="finally publish N rounds of hostile messages, one per rejection reason")
    p.add_argument("--write-registry", metavar="DIR",
                   help="also write the registry CSVs (sites, reservations, tariffs, bills, targets,"
                        " feeders, substations, conversions) to DIR")
    p.add_argument("--no-publish", action="store_true",
                   help="only build the fleet (with --write-registry), publish nothing")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Tally:
    """Counts what was published and draws a progress line on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.messages = 0
        self.readings = {"tower": 0, "power": 0, "interference": 0}
        self.sim_ts = 0.0
        self.last_draw = 0.0
        self.tty = sys.stderr.isatty()

    def add(self, chunk) -> None:
        self.messages += len(chunk.messages)
        for k, v in chunk.readings.items():
            self.readings[k] += v
        self.sim_ts = chunk.until

    def draw(self, phase: str, stats: PublishStats, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last_draw < (0.5 if self.tty else 5.0)):
            return
        self.last_draw = now
        line = (f"simulate {phase}: {stats.acked:,}/{stats.published:,} msgs acked, "
                f"{sum(self.readings.values()):,} readings, sim time {_iso(self.sim_ts)}, "
                f"{stats.msgs_per_s:,.0f} msgs/s")
        end = "\n" if final or not self.tty else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


@dataclass(frozen=True, kw_only=True)
class Simulation:
    """What to simulate: the CLI's options, for callers such as ``sitetwin demo``.

    Times are epoch seconds, durations seconds.  ``duration_s`` is the live
    phase on the wall clock; ``history_from`` starts a history phase that ends
    where the live phase begins (or now).
    """

    sites: int
    seed: int = 1
    scenario: str = "normal"
    duration_s: float = 0.0
    speed: float = 1.0
    history_from: float | None = None
    period_s: int = 60
    history_period_s: int | None = None
    chunk_s: int = 3600
    rate: float | None = None
    max_inflight: int = 1000
    qos: int = 1
    transport: str = "wire"
    client_id: str | None = None
    malformed: int = 0
    write_registry: str | None = None
    publish: bool = True


def simulate(settings: Settings, sim: Simulation, *, progress: bool = True) -> dict[str, Any]:
    """Build the fleet, write its CSVs if asked, publish history then live readings; a summary."""
    from connectors.publisher import Publisher, WirePublisher
    from simulator.telemetry import ANOMALY_MAX_S, chunks, malformed, onset

    if not sim.duration_s and sim.history_from is None and sim.publish:
        raise UserError("give --duration (live), --backfill/--start (history), or both")
    if sim.speed <= 0:
        raise UserError("--speed must be positive")
    for name, value in (("period", sim.period_s), ("history-period", sim.history_period_s)):
        if value is not None and (value < 1 or value != int(value)):
            raise UserError(f"--{name} must be a whole number of seconds, at least 1s")
    period = int(sim.period_s)
    history_period = int(sim.history_period_s or period)
    chunk_s = max(history_period, int(sim.chunk_s) // history_period * history_period)
    now = time.time()
    duration = sim.duration_s or 0.0
    if sim.history_from is not None and sim.history_from >= now:
        raise UserError("--start must be in the past")
    run_end = now + duration
    live_start = run_end - duration * sim.speed if sim.speed >= 1 else now
    live_end = live_start + duration * sim.speed
    run_start = min(x for x in (sim.history_from, live_start) if x is not None)
    fleet = Fleet.build(sim.sites, seed=sim.seed, now=datetime.fromtimestamp(run_end, UTC))
    onset_ts = onset(fleet, run_start, max(run_end, live_end))
    summary: dict[str, Any] = {
        "sites": len(fleet.sites),
        "publishing_sites": len(fleet.publishing),
        "cells": len(fleet.cells),
        "scenario": sim.scenario,
        "seed": sim.seed,
        "start": _iso(run_start),
        "end": _iso(max(run_end, live_end)),
        "anomalies_from": _iso(onset_ts),
        "bill_period": [_iso(fleet.bill_start.timestamp()), _iso(fleet.bill_end.timestamp())],
        "expected": {k: {"kind": a.kind, "site_ids": list(a.site_ids), "cell_ids": list(a.cell_ids),
                         "bill_ids": list(a.bill_ids), "detail": a.detail}
                     for k, a in fleet.expected_anomalies(sim.scenario).items()},
    }
    if sim.write_registry:
        paths = fleet.write_csvs(sim.write_registry)
        summary["registry"] = {k: str(v) for k, v in paths.items()}
    if not sim.publish:
        return summary

    tally = _Tally(enabled=progress)
    make = WirePublisher if sim.transport == "wire" else Publisher
    publisher = make(settings.mqtt, client_id=sim.client_id, qos=sim.qos,
                     max_inflight=sim.max_inflight, rate=sim.rate)
    phase = "history"
    publisher.progress = lambda stats: tally.draw(phase, stats)
    publisher.connect()
    try:
        common: dict[str, Any] = {"onset_ts": onset_ts, "run_end_ts": max(run_end, live_end),
                  "prb_window_s": ANOMALY_MAX_S}
        if sim.history_from is not None:
            end = min(now, live_start) if duration else now
            for chunk in chunks(fleet, sim.history_from, end, history_period, sim.scenario,
                                chunk_s=chunk_s, **common):
                publisher.publish_all(chunk.messages)
                tally.add(chunk)
            publisher.flush()
            tally.draw(phase, publisher.stats(), final=True)
        if duration:
            phase = "live"
            began = time.monotonic()
            start = live_start if sim.history_from is None else min(live_start, now)
            for chunk in chunks(fleet, start, live_end, period, sim.scenario, chunk_s=period,
                                **common):
                wait = began + max(0.0, chunk.until - live_start) / sim.speed - time.monotonic()
                if wait > 0:
                    publisher.idle(wait)
                publisher.publish_all(chunk.messages)
                tally.add(chunk)
                tally.draw(phase, publisher.stats())
        bad: dict[str, int] = {}
        for _ in range(max(0, sim.malformed)):
            for topic, payload, reason in malformed(fleet, time.time()):
                publisher.publish(topic, payload)
                bad[reason] = bad.get(reason, 0) + 1
        if bad:
            summary["malformed"] = bad
        stats = publisher.close()
    except KeyboardInterrupt:
        tally.draw(phase, publisher.close(timeout_s=10), final=True)
        raise
    tally.draw(phase, stats, final=True)
    summary.update({"messages": tally.messages, "readings": tally.readings,
                    "publisher": stats.as_dict()})
    return summary


def run(args: argparse.Namespace, settings: Settings) -> int:
    history_from = time.time() - args.backfill if args.backfill is not None else args.start
    sim = Simulation(
        sites=args.sites, seed=args.seed, scenario=args.scenario, duration_s=args.duration or 0.0,
        speed=args.speed, history_from=history_from, period_s=args.period,
        history_period_s=args.history_period, chunk_s=int(args.chunk), rate=args.rate,
        max_inflight=args.max_inflight, qos=args.qos, transport=args.transport,
        client_id=args.client_id, malformed=args.malformed, write_registry=args.write_registry,
        publish=not args.no_publish)
    emit(args, simulate(settings, sim, progress=not args.quiet), _text)
    return 0


def _text(s: dict[str, Any]) -> str:
    lines = [f"fleet: {s['sites']} sites ({s['publishing_sites']} with power), {s['cells']} cells on air;"
             f" scenario {s['scenario']}, seed {s['seed']}",
             f"window: {s['start']} .. {s['end']}; anomalies from {s['anomalies_from']}"]
    if "publisher" in s:
        p = s["publisher"]
        r = s["readings"]
        lines.append(f"published: {p['acked']:,} messages acknowledged of {p['published']:,} "
                     f"({r['tower']:,} tower, {r['power']:,} power, {r['interference']:,} "
                     f"interference readings) in {p['seconds']:.1f}s, {p['msgs_per_s']:,.0f} msgs/s")
        if p.get("refused"):
            lines.append(f"warning: the broker refused {p['refused']:,} messages (not authorised?)")
    if "malformed" in s:
        lines.append("malformed (should be rejected): "
                     + ", ".join(f"{k} {v}" for k, v in s["malformed"].items()))
    if "registry" in s:
        lines.append("registry CSVs: " + ", ".join(s["registry"].values()))
    for name, a in s["expected"].items():
        ids = a["bill_ids"] or a["cell_ids"] or a["site_ids"]
        more = f" (+{len(ids) - 6} more)" if len(ids) > 6 else ""
        lines.append(f"expected {name}: {', '.join(ids[:6])}{more}")
    return "\n".join(lines)
