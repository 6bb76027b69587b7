"""Adapters benchmark: PM-file ingest rate and Modbus polling capacity.

Run:  .venv/bin/python bench/adapters.py [--sites 1000] [--devices 200] [--seconds 20]

1. PM files, parse only: the simulator's interference for ``--sites`` sites over
   one hour (4 periods of 15 minutes, per-PRB vectors on n78/n41 cells), written
   as one TS 32.435 file per site, then read back: ``read_values`` + ``merge_values``
   + ``CounterMapper.map`` (readings/s), and the same plus the collector's
   validation (``ReadingSink.offer``, no publishing).  Also one large file (every
   site in one file): its size, parse time and the process's peak RSS growth.
2. PM files end to end: the same files dropped into a directory; ``PmWatcher``
   publishes them through a private Mosquitto to ``sitetwin run`` (one collector)
   into a private InfluxDB; readings/s from the first file read to the last point
   counted in InfluxDB.
3. Modbus polling capacity: ``--devices`` meters (``generic-meter``, one request of
   7 registers each) on pymodbus's own server in a separate process; one gateway
   process polls them all as fast as it can (``poll_once`` rounds, 16 workers,
   publishing included) for ``--seconds``: devices polled per second.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson

from adapters.cells import read_cells
from adapters.device import Device, load_profile
from adapters.gateway import Gateway
from adapters.pm import CounterMapper, MapStats, merge_values, read_values
from adapters.sink import ReadingSink
from adapters.watcher import PmWatcher
from core.settings import load_settings
from simulator.fleet import Fleet
from simulator.pmfile import interference_docs, write_cells_csv, write_pm_file
from sitetwin.services import InfluxDB, Mosquitto, free_port


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse(paths: list[Path], mapper: CounterMapper, sink: ReadingSink | None) -> int:
    n = 0
    stats = MapStats()
    now = time.time()
    for p in paths:
        with p.open("rb") as fh:
            values = merge_values(read_values(fh))
        for v in values:
            got = mapper.map(v, stats)
            if got is None or not isinstance(got, tuple):
                continue
            n += 1
            if sink is not None:
                sink.offer(got[0], "interference", got[1], now=now)
    return n


def bench_pm(work: Path, sites: int) -> dict:
    end = datetime.fromtimestamp(time.time() // 900 * 900, UTC)
    fleet = Fleet.build(sites, seed=7, now=end)
    start = end.timestamp() - 3600
    docs = interference_docs(fleet, start, end.timestamp(), prb_window_s=1800)
    files = work / "files"
    files.mkdir()
    paths = [write_pm_file(files / f"A_{site}.xml", site, periods)
             for site, periods in sorted(docs.items())]
    cells = read_cells(write_cells_csv(fleet, work / "cells.csv"))
    settings = load_settings(None, services={"state_dir": str(work / "state")},
                             adapters={"pm": {"cells_file": str(work / "cells.csv")}})
    mapper = CounterMapper(settings.adapters.pm, cells)
    readings = sum(len(d) for periods in docs.values() for d in periods.values())
    with_prb = sum(1 for periods in docs.values() for d in periods.values() for x in d
                   if x.get("prb_dbm"))
    out = {"sites": len(docs), "files": len(paths), "readings": readings,
           "readings_with_prb": with_prb,
           "bytes": sum(p.stat().st_size for p in paths)}
    t0 = time.perf_counter()
    assert _parse(paths, mapper, None) == readings
    out["parse_readings_per_s"] = round(readings / (time.perf_counter() - t0))
    sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source="pm")
    t0 = time.perf_counter()
    _parse(paths, mapper, sink)
    out["parse_validate_readings_per_s"] = round(readings / (time.perf_counter() - t0))
    assert sink.pending == readings, (sink.pending, dict(sink.refused))
    sink.close()
    # One large file: every site in one measCollecFile.
    big = work / "big.xml"
    from lxml import etree
    root = None
    with big.open("wb") as fh:
        fh.write(b'<?xml version="1.0" encoding="UTF-8"?>\n<measCollecFile xmlns="http://www.3gpp.org/'
                 b'ftp/specs/archive/32_series/32.435#measCollec"><fileHeader vendorName="sitetwin"/>'
                 b"<measData>")
        for p in paths:
            root = etree.parse(str(p)).getroot()
            for md in root:
                if etree.QName(md).localname == "measData":
                    for child in md:
                        if etree.QName(child).localname == "measInfo":
                            for mv in child:
                                if etree.QName(mv).localname == "measValue":
                                    mv.set("measObjLdn", f"ManagedElement={p.stem[2:]},"
                                           + mv.get("measObjLdn"))
                        fh.write(etree.tostring(child))
        fh.write(b"</measData></measCollecFile>")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    assert _parse([big], mapper, None) == readings
    out["large_file_mb"] = round(big.stat().st_size / 2**20, 1)
    out["large_file_parse_s"] = round(time.perf_counter() - t0, 2)
    out["large_file_peak_rss_growth_mb"] = round(_rss_mb() - rss0, 1)
    return out, files


def _count(influx: InfluxDB, db: str, measurement: str) -> int:
    res = influx.query(f"SELECT COUNT(ul_interference_dbm) FROM {measurement}", db=db)
    series = res["results"][0].get("series")
    return series[0]["values"][0][1] if series else 0


def bench_pm_end_to_end(work: Path, files: Path, readings: int) -> dict:
    mq = Mosquitto(root=work / "mq", port=free_port())
    influx = InfluxDB(root=work / "influx", port=free_port(), database="bench")
    mq.start()
    influx.start()
    env = {**os.environ, "SITETWIN_MQTT__SERVERS": f'["{mq.url}"]',
           "SITETWIN_INFLUXDB__URL": influx.url, "SITETWIN_INFLUXDB__DATABASE": "bench",
           "SITETWIN_SERVICES__STATE_DIR": str(work / "collector"),
           "SITETWIN_SPOOL__FSYNC": "false"}
    log = work / "collector.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "run", "--no-rules", "--no-twin"],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"MQTT subscribed" not in log.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.1)
        settings = load_settings(None, mqtt={"servers": [mq.url]},
                                 services={"state_dir": str(work / "state2")},
                                 adapters={"pm": {"settle": "0s", "watch_dir": str(files),
                                                  "cells_file": str(work / "cells.csv")}})
        sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                           dead_letter_path=settings.dead_letter_path, source="pm")
        sink.connect()
        watcher = PmWatcher(settings.adapters.pm, sink, state_dir=settings.state_dir)
        t0 = time.perf_counter()
        watcher.scan_once()
        acked = time.perf_counter() - t0
        while _count(influx, "bench", "interference") < readings:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("points missing in InfluxDB")
            time.sleep(0.2)
        stored = time.perf_counter() - t0
        assert watcher.stats.readings == readings
        watcher.close()
        sink.close()
        return {"files_archived": watcher.stats.archived,
                "acked_readings_per_s": round(readings / acked),
                "stored_readings_per_s": round(readings / stored),
                "points_in_influxdb": _count(influx, "bench", "interference")}
    finally:
        proc.terminate()
        proc.wait(30)
        influx.stop()
        mq.stop()


SERVER = textwrap.dedent("""
    import asyncio, sys
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
    n, port = int(sys.argv[1]), int(sys.argv[2])
    regs = [0, 10000, 2300, 500, 0, 1500, 990]
    async def main():
        devices = [SimDevice(id=u, simdata=[SimData(address=0, values=regs,
                   datatype=DataType.REGISTERS)]) for u in range(1, n + 1)]
        server = ModbusTcpServer(devices, address=("127.0.0.1", port))
        print("ready", flush=True)
        await server.serve_forever()
    asyncio.run(main())
""")


def bench_gateway(work: Path, devices: int, seconds: float) -> dict:
    mq = Mosquitto(root=work / "mq2", port=free_port())
    mq.start()
    port = free_port()
    units = min(devices, 247)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(units), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout.readline().strip() == b"ready"
        import socket
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        meter = load_profile("generic-meter")
        fleet = [(Device(site_id=f"P{i:04d}", meter_id=f"P{i:04d}-M", host="127.0.0.1", port=port,
                         unit=1 + i % units, profile="generic-meter"), meter)
                 for i in range(devices)]
        settings = load_settings(None, mqtt={"servers": [mq.url]},
                                 services={"state_dir": str(work / "gw")},
                                 adapters={"gateway": {"fsync": False, "workers": 16}})
        sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                           dead_letter_path=settings.dead_letter_path, source="gateway")
        sink.connect()
        gw = Gateway(settings.adapters.gateway, sink, fleet, state_dir=settings.state_dir,
                     buffer_max_bytes=settings.spool.max_bytes)
        rounds = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            gw.poll_once()
            rounds += 1
        elapsed = time.perf_counter() - t0
        polled = sum(s.polls_ok for s in gw.devices)
        failed = sum(s.polls_failed for s in gw.devices)
        gw.close()
        sink.close()
        return {"devices": devices, "rounds": rounds, "polls_ok": polled, "polls_failed": failed,
                "published": gw.readings_published,
                "devices_per_s": round(polled / elapsed, 1)}
    finally:
        server.terminate()
        server.wait(10)
        mq.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sitetwin-bench-adapters-"))
    try:
        pm, files = bench_pm(work, args.sites)
        print(orjson.dumps({"pm_parse": pm}, option=orjson.OPT_INDENT_2).decode(), flush=True)
        e2e = bench_pm_end_to_end(work, files, pm["readings"])
        print(orjson.dumps({"pm_end_to_end": e2e}, option=orjson.OPT_INDENT_2).decode(), flush=True)
        gw = bench_gateway(work, args.devices, args.seconds)
        print(orjson.dumps({"gateway": gw}, option=orjson.OPT_INDENT_2).decode(), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
