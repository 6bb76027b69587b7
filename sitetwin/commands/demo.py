"""``sitetwin demo``: everything end to end on private local services.

The demo is a script of ordinary ``sitetwin`` commands, each printed before it
runs, against its own Mosquitto and InfluxDB on free ports and its own state
directory (``.sitetwin/demo`` by default, wiped at the start), so it never
touches a developer's services or data:

  1. services up; the simulator writes a city's registry (sites, reservations,
     tariffs, bills, targets, feeder and substation ratings, this year's supply
     conversions with their dates) and it is imported;
  2. a lifecycle move, and a move the relocation guard refuses;
  3. ``sitetwin run`` (collector + twin live state) in the background while the
     simulator publishes the bill month's history and a live phase of the
     ``demo`` scenario (jammer, narrowband interferer, mains failure, a silent
     site), plus some malformed messages; every reading is counted in InfluxDB;
  4. the rules, the flags, a regulator's review, an alarm acknowledged and assigned; the
     reports (overcharging, reservations per site/feeder/substation, progress for the
     year and its first half, conversions); the dashboards.
  5. with ``--serve``: one account per role, and the web app left running (until
     Ctrl-C) with the URL and the accounts printed.

The demo checks its own flags: every anomaly the simulator planted must be flagged and
nothing else, of any kind (the other bills are fair by construction, so a flag on one is a
false accusation).  Both lists are in the summary (``planted_anomalies``,
``unexpected_flags``); if either check fails the demo still finishes, then exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from core.states import State
from sitetwin.config import Settings, load_settings
from sitetwin.errors import UserError
from sitetwin.services import free_port

__all__ = ["register"]


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="run everything end to end on private local services")
    p.add_argument("--dir", type=Path, default=Path(".sitetwin/demo"),
                   help="state directory of the demo, wiped first (default .sitetwin/demo)")
    p.add_argument("--sites", type=int, default=150, help="sites in the simulated city (default 150)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--live", default="20s", help="wall time of the live phase (default 20s)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave Mosquitto, InfluxDB and the collector running afterwards")
    p.add_argument("--serve", action="store_true",
                   help="then serve the web app and API on the demo's data until Ctrl-C,"
                        " with one account per role (printed)")
    p.add_argument("--port", type=int, default=8080, help="port of --serve (default 8080)")
    p.set_defaults(handler=run)


DEMO_ROLES = ("regulator", "grid", "noc", "viewer", "admin")


def demo_accounts(settings: Settings) -> dict[str, tuple[str, str]]:
    """One account per role with a fresh random password: ``role -> (username, password)``."""
    import secrets

    from twin.accounts import add_user, list_users
    from twin.store import open_store

    out = {}
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            existing = {u["username"] for u in list_users(s)}
            for role in DEMO_ROLES:
                username = f"{role}.demo"
                if username in existing:
                    continue
                password = secrets.token_urlsafe(9)
                add_user(s, username, role, password, actor="sitetwin demo",
                         lang="zh-CN" if role == "regulator" else None)
                out[role] = (username, password)
    finally:
        store.close()
    return out


def serve_demo(demo: _Demo, settings: Settings, port: int) -> None:
    """Print the URL and the demo accounts, then serve until Ctrl-C."""
    import uvicorn

    from twin.store import open_store
    from web.app import create_app

    accounts = demo_accounts(settings)
    url = f"http://127.0.0.1:{port}/"
    demo.step(f"8. The web app and API: {url}  (API docs: {url}api/v1/docs; Ctrl-C stops it)")
    for role, (username, password) in accounts.items():
        demo.say(f"    {role:<10} user {username:<16} password {password}")
    demo.say("    (the passwords are random and shown only here; `sitetwin users reset-password`"
             " sets new ones)")
    store = open_store(settings.twin_url)
    try:
        uvicorn.run(create_app(settings, store), host="127.0.0.1", port=port, log_level="warning")
    finally:
        store.close()


class _Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = args.dir.expanduser().resolve()
        self.config = self.dir / "sitetwin.toml"
        self.quiet = bool(args.json)
        self.summary: dict = {"state_dir": str(self.dir), "config": str(self.config)}

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)

    def step(self, title: str) -> None:
        self.say(f"\n==> {title}")

    def sitetwin(self, *argv: str, expect: int = 0, capture_json: bool = False):
        """Run one ``sitetwin`` command in this process, as a user would type it."""
        from sitetwin.cli import main

        shown = " ".join(a if " " not in a else repr(a) for a in argv)
        self.say(f"$ sitetwin --config {self._rel(self.config)} {shown}")
        full = ["--config", str(self.config), *argv]
        if capture_json:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main([*full, "--json"])
            out = buf.getvalue()
            if code != expect:
                raise UserError(f"demo step failed (exit {code}): sitetwin {shown}")
            return json.loads(out) if out.strip() else None
        with contextlib.redirect_stdout(sys.stderr) if self.quiet else contextlib.nullcontext():
            code = main(full)
        if code != expect:
            raise UserError(f"demo step failed (exit {code}, expected {expect}): sitetwin {shown}")
        return code

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    # -- steps --------------------------------------------------------------------------------
    def prepare(self) -> Settings:
        if self.dir.exists():
            old = self.dir / "sitetwin.toml"
            if old.exists():  # stop what a previous demo left running
                with contextlib.suppress(Exception):
                    self.sitetwin_quiet("services", "down")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        mqtt_port, influx_port, rpc_port = free_port(), free_port(), free_port()
        self.config.write_text(
            "# Written by `sitetwin demo`: private services on free ports, state under this directory.\n"
            f"[services]\nstate_dir = {json.dumps(str(self.dir))}\nmqtt_port = {mqtt_port}\n"
            f"influxdb_port = {influx_port}\ninfluxdb_rpc_port = {rpc_port}\n\n"
            f"[mqtt]\nservers = [\"tcp://127.0.0.1:{mqtt_port}\"]\nclient_id = \"sitetwin-demo\"\n\n"
            f"[influxdb]\nurl = \"http://127.0.0.1:{influx_port}\"\ndatabase = \"sitetwin\"\n\n"
            "[collector]\nbatch_age = \"500ms\"\nmetrics_interval = \"5s\"\n"
        )
        return load_settings(self.config)

    def sitetwin_quiet(self, *argv: str) -> int:
        from sitetwin.cli import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return main(["--config", str(self.args.dir / "sitetwin.toml"), *argv])

    def start_collector(self) -> subprocess.Popen:
        log_path = self.dir / "run.log"
        self.say(f"$ sitetwin --config {self._rel(self.config)} run --no-rules   "
                 f"# in the background, log in {self._rel(log_path)}")
        with open(log_path, "ab") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "sitetwin", "--config", str(self.config), "run", "--no-rules"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
            )
        # Publish only once the shared subscription exists: the broker keeps messages
        # for a subscription, not for a subscriber that has not subscribed yet.
        deadline = time.monotonic() + 60
        while b"MQTT subscribed" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"the collector did not subscribe; see {log_path}")
            time.sleep(0.2)
        return proc


def _count(settings: Settings, measurement: str, field: str) -> int:
    from connectors.influx import InfluxReader

    reader = InfluxReader.from_settings(settings.influxdb)
    try:
        frame = reader.frame(f'SELECT count("{field}") FROM "{measurement}"')
    finally:
        reader.close()
    return int(frame["count"].sum()) if len(frame) else 0


def _wait_for_ingest(demo: _Demo, settings: Settings, expected: dict[str, int],
                     collector: subprocess.Popen, timeout_s: float = 600.0) -> dict[str, int]:
    fields = {"tower": "mains_ok", "power": "energy_kwh", "interference": "ul_interference_dbm"}
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    last_note = 0.0
    while time.monotonic() < deadline:
        counts = {k: _count(settings, k, f) for k, f in fields.items()}
        if all(counts[k] >= expected.get(k, 0) for k in fields):
            return counts
        if collector.poll() is not None:
            raise UserError(f"the collector exited with {collector.returncode}; see {demo.dir / 'run.log'}")
        if time.monotonic() - last_note > 5:
            last_note = time.monotonic()
            done = sum(counts.values())
            demo.say(f"    ingest: {done:,} of {sum(expected.values()):,} readings in InfluxDB")
        time.sleep(1.0)
    raise UserError(f"not every reading reached InfluxDB in {timeout_s:.0f}s: {counts} of {expected}")


def _relocation_pair(settings: Settings) -> tuple[str, str] | None:
    """An old site whose replacement is not on air yet (the guard must refuse its removal)."""
    from sqlalchemy import select

    from twin.models import Site
    from twin.store import open_store

    store = open_store(settings.twin_url)
    try:
        with store.session() as session:
            sites = {s.site_id: s for s in session.scalars(select(Site))}
        for new in sites.values():
            old = sites.get(new.replaces_site_id or "")
            if old is not None and new.state != State.ON_AIR and old.state == State.RELOCATING:
                return old.site_id, new.site_id
        return None
    finally:
        store.engine.dispose()


def _a_site_in(settings: Settings, state: str) -> str | None:
    from sqlalchemy import select

    from twin.models import Site
    from twin.store import open_store

    store = open_store(settings.twin_url)
    try:
        with store.session() as session:
            return session.scalars(select(Site.site_id).where(Site.state == state)
                                   .order_by(Site.site_id).limit(1)).first()
    finally:
        store.engine.dispose()


def _online_count(settings: Settings) -> int:
    from twin.sites import list_sites
    from twin.store import open_store

    store = open_store(settings.twin_url)
    try:
        with store.session() as session:
            return len(list_sites(session, now=datetime.now(UTC), online=True,
                                  window_s=settings.twin.online_window_s))
    finally:
        store.engine.dispose()


def _wait_for_live_state(settings: Settings, timeout: float = 60.0) -> None:
    """At least one more live-state flush after ingest, and sites online in the twin."""
    deadline = time.monotonic() + timeout
    time.sleep(settings.collector.live_flush_interval + 1)
    while _online_count(settings) == 0 and time.monotonic() < deadline:
        time.sleep(1.0)


def _planted_found(expected: dict, flags: list[dict]) -> dict[str, bool]:
    """Which of the simulator's planted anomalies have a flag of their kind on their site or bill."""
    from rules.finding import KINDS

    found = {}
    for name, a in expected.items():
        kind = a.get("kind")
        if kind not in KINDS:
            continue  # not something a flag is for (e.g. a meter swap)
        found[name] = any(_planted_matches(a, f) for f in flags)
    return found


def _planted_matches(a: dict, flag: dict) -> bool:
    """Whether ``flag`` is the planted anomaly ``a``: its kind, on one of its bills (a bill
    anomaly) or sites."""
    bills, sites = set(a.get("bill_ids") or ()), set(a.get("site_ids") or ())
    return flag["kind"] == a.get("kind") and bool((bills and flag.get("bill_id") in bills)
                                                  or (not bills and flag["site_id"] in sites))


def _unexpected_flags(expected: dict, flags: list[dict]) -> list[dict]:
    """Every flag, of any kind, that no planted anomaly accounts for: a false accusation in
    the demo (its bills other than the planted ones are fair by construction)."""
    return [{"id": f.get("id"), "kind": f["kind"], "site_id": f["site_id"], "bill_id": f.get("bill_id"),
             "severity": f.get("severity"), "summary": f.get("summary")}
            for f in flags if not any(_planted_matches(a, f) for a in expected.values())]


def run(args: argparse.Namespace, settings: Settings) -> int:
    demo = _Demo(args)
    t0 = time.monotonic()
    settings = demo.prepare()
    reg = demo.dir / "registry"
    reports = demo.dir / "reports"
    collector = None
    try:
        demo.step("1. Local services (private Mosquitto and InfluxDB 1.x on free ports)")
        demo.sitetwin("services", "up")

        demo.step("2. A simulated city: registry CSVs, imported into the twin")
        info = demo.sitetwin("simulate", "--sites", str(args.sites), "--seed", str(args.seed),
                             "--no-publish", "--backfill", "1h", "--write-registry", str(reg),
                             capture_json=True)
        for kind in ("sites", "reservations", "tariffs", "bills", "feeders", "substations", "maintenance"):
            if kind == "sites":
                demo.sitetwin("sites", "import", str(reg / "sites.csv"))
                # this year's transfer -> direct conversions, with their dates (history)
                demo.sitetwin("sites", "import", str(reg / "conversions.csv"))
            else:
                demo.sitetwin(kind, "import", str(reg / f"{kind}.csv"))
        demo.summary["registry"] = {"sites": info["sites"], "cells": info["cells"]}

        demo.step("3. The lifecycle: a move, and a move the relocation guard refuses")
        planned = _a_site_in(settings, "planned")
        if planned:
            demo.sitetwin("sites", "transition", planned, "site_secured", "--by", "demo",
                          "--note", "lease signed")
        pair = _relocation_pair(settings)
        if pair:
            old, new = pair
            demo.say(f"    {old} is being replaced by {new}, which is not on air yet:")
            demo.sitetwin("sites", "transition", old, "decommissioned", "--by", "demo", expect=1)

        demo.step("4. Telemetry: collector + twin running, the simulator publishing the bill "
                  "month's history and a live phase with planted anomalies")
        collector = demo.start_collector()
        bill_start = info["bill_period"][0]
        sim = demo.sitetwin("simulate", "--sites", str(args.sites), "--seed", str(args.seed),
                            "--scenario", "demo", "--start", bill_start,
                            "--history-period", "1h", "--chunk", "1d", "--period", "60s",
                            "--duration", args.live, "--speed", "15", "--malformed", "1",
                            capture_json=True)
        expected = sim["readings"]
        counts = _wait_for_ingest(demo, settings, expected, collector)
        demo.say(f"    every reading is in InfluxDB: {counts['tower']:,} tower, {counts['power']:,} "
                 f"power, {counts['interference']:,} interference")
        demo.summary["ingest"] = {"messages": sim["messages"], "readings": expected,
                                  "in_influxdb": counts, "malformed": sim.get("malformed", {})}
        _wait_for_live_state(settings)
        demo.sitetwin("rejected", "counts")
        online = demo.sitetwin("sites", "list", "--online", capture_json=True)
        demo.say(f"    {len(online)} sites online in the twin")
        demo.summary["online_sites"] = len(online)
        if sim["expected"].get("mains_failure", {}).get("site_ids"):
            demo.sitetwin("sites", "show", sim["expected"]["mains_failure"]["site_ids"][0])

        demo.step("5. Rules: evaluate now, list the flags, a regulator reviews one, the NOC"
                  " acknowledges and assigns a mains failure")
        demo.sitetwin("rules", "run")
        flags = demo.sitetwin("flags", "list", capture_json=True)
        by_kind: dict[str, int] = {}
        for f in flags:
            by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
        demo.summary["flags"] = by_kind
        demo.say("    flags: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())))
        planted = _planted_found(sim["expected"], flags)
        demo.summary["planted_anomalies"] = planted
        missed = [name for name, found in planted.items() if not found]
        demo.say(f"    planted anomalies flagged: {len(planted) - len(missed)} of {len(planted)}"
                 + (f" (not flagged: {', '.join(missed)})" if missed else ""))
        unexpected = _unexpected_flags(sim["expected"], flags)
        demo.summary["unexpected_flags"] = unexpected
        demo.say(f"    flags nothing planted accounts for: {len(unexpected)}")
        for f in unexpected:
            demo.say(f"      {f['kind']} {f['site_id']}{' bill ' + f['bill_id'] if f['bill_id'] else ''}"
                     f" ({f['severity']}): {f['summary']}")
        failed = bool(missed or unexpected)
        over = [f for f in flags if f["kind"] == "overcharging"]
        if over:
            demo.sitetwin("flags", "show", str(over[0]["id"]))
            demo.sitetwin("flags", "review", str(over[0]["id"]), "--decision", "confirmed",
                          "--by", "regulator.demo", "--note", "bill and meter agree with the evidence")
        mains = [f for f in flags if f["kind"] == "mains_failure" and f["status"] == "open"]
        if mains:  # the NOC takes the alarm on: no more reminders, and it has an owner
            demo.sitetwin("flags", "ack", str(mains[0]["id"]), "--by", "noc.demo",
                          "--note", "crew dispatched with a generator")
            demo.sitetwin("flags", "assign", str(mains[0]["id"]), "--to", "field.engineer",
                          "--by", "noc.demo")

        demo.step("6. Reports for the regulator, the grid company and the counties")
        reports.mkdir()
        month = bill_start[:7]
        year = str(datetime.now(UTC).year)
        demo.sitetwin("report", "overcharging", "--period", month,
                      "--out", str(reports / f"overcharging-{month}.xlsx"))
        demo.sitetwin("report", "reservations", "--out", str(reports / "reservations.csv"))
        demo.sitetwin("report", "progress", "--year", year, "--targets", str(reg / "targets.csv"),
                      "--out", str(reports / f"progress-{year}.xlsx"))
        demo.sitetwin("report", "progress", "--year", year, "--half", "1", "--targets",
                      str(reg / "targets.csv"), "--out", str(reports / f"progress-{year}-H1.xlsx"))
        demo.sitetwin("report", "conversions", "--year", year,
                      "--out", str(reports / f"conversions-{year}.xlsx"))
        demo.summary["reports"] = sorted(str(p) for p in reports.iterdir())

        demo.step("7. Grafana dashboards as code")
        grafana = demo.dir / "grafana"
        demo.sitetwin("dashboards", "build", "--out", str(grafana))
        demo.summary["dashboards"] = str(grafana)
        if args.serve:
            serve_demo(demo, settings, args.port)
    finally:
        if collector is not None and not args.keep_running:
            collector.send_signal(signal.SIGTERM)
            try:
                collector.wait(60)
            except subprocess.TimeoutExpired:
                collector.kill()
        if not args.keep_running:
            with contextlib.suppress(Exception):
                demo.sitetwin_quiet("services", "down")

    seconds = time.monotonic() - t0
    demo.summary["seconds"] = round(seconds, 1)
    # Every planted anomaly flagged and nothing else: otherwise the demo fails (exit 1).
    code = 1 if failed else 0
    if args.json:
        print(json.dumps(demo.summary, indent=2))
        return code
    cfg = demo._rel(demo.config)
    demo.step(f"Done in {seconds:.0f}s")
    demo.say(
        f"  state, logs and CSVs: {demo._rel(demo.dir)}/   reports: {demo._rel(reports)}/\n"
        f"  Grafana: dashboards and provisioning in {demo._rel(grafana)}/ (how to load them: step 7),\n"
        f"  or `sitetwin dashboards push --grafana-url URL` with SITETWIN_GRAFANA__TOKEN set.\n"
        + (f"  Services and collector still running: sitetwin --config {cfg} services down"
           if args.keep_running else
           f"  Explore again with: sitetwin --config {cfg} services up; sitetwin --config {cfg} "
           "sites list")
    )
    if failed:
        demo.say("  FAILED: " + ("planted anomalies not flagged: " + ", ".join(missed) + "; " if missed else "")
                 + (f"{len(unexpected)} flags nothing planted accounts for" if unexpected else ""))
    return code
