"""p50/p95 latency of the HTTP API's site list and flag list at 10 000 sites and 100 000 flags.

    .venv/bin/python bench/api.py [--sites 10000] [--flags 100000] [--requests 200]
                                  [--backend sqlite|postgresql|both]

Fills a fresh registry (sites through the CSV importer, flags inserted in bulk as the
flag book stores them), serves the app with uvicorn on a free port, and asks each
query ``--requests`` times in sequence over HTTP with a bearer token (so every answer
pays authentication, the count for ``total``, the page and JSON).  Target: p95 < 100 ms.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn

from bench.twin_import import write_sites
from core.settings import load_settings
from rules.finding import KINDS
from sitetwin.services import PostgreSQL, free_port, temp_root
from twin.accounts import add_user, create_token
from twin.imports import SITES, import_csv
from twin.models import Flag
from twin.store import open_store
from web.app import create_app

QUERIES = {
    "sites, first page": "/api/v1/sites?limit=50",
    "sites, county + state, page 3": "/api/v1/sites?county=Pidu&state=on_air&limit=50&offset=100",
    "sites, text search": "/api/v1/sites?q=site%2012&limit=50",
    "flags, first page": "/api/v1/flags?limit=50",
    "flags, newest open overcharging":
        "/api/v1/flags?kind=overcharging&status=open&sort=-id&limit=50",
    "flags, one county, page 10": "/api/v1/flags?county=Xinjin&limit=50&offset=450",
}


def fill(url: str, sites: int, flags: int, tmp: Path) -> str:
    store = open_store(url)
    write_sites(tmp / "sites.csv", sites)
    import_csv(store, tmp / "sites.csv", SITES)
    rnd = random.Random(11)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(flags):
        kind = rnd.choice(KINDS)
        site = f"CD{rnd.randrange(sites):06d}"
        start = t0 + timedelta(hours=rnd.randrange(24 * 300))
        rows.append({"kind": kind, "rule": kind, "site_id": site, "severity":
                     rnd.choice(("info", "warning", "critical")),
                     "status": rnd.choice(("open", "open", "resolved", "confirmed", "dismissed")),
                     "opened_at": start, "updated_at": start, "window_start": start,
                     "window_end": start + timedelta(hours=1),
                     "supplier_id": f"SUP-{rnd.randrange(300)}"
                     if kind in ("overcharging", "overbilling") else None,
                     "summary": f"{kind} at {site}", "evidence": {"n": i},
                     "dedup_key": f"{kind}|{site}||{i}"})
    with store.session() as s:
        for i in range(0, len(rows), 5000):
            s.execute(Flag.__table__.insert(), rows[i:i + 5000])
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:  # what autovacuum does soon after a bulk load
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    with store.session() as s:
        add_user(s, "bench", "viewer", "bench password", actor="bench")
        token, _ = create_token(s, "bench", "bench", actor="bench")
    store.close()
    return token


def measure(url: str, token: str, n: int) -> dict[str, tuple[float, float, int]]:
    store = open_store(url)
    app = create_app(load_settings(None), store, peaks=lambda f, u: (None, 0.0, "bench"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    out = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={"Authorization": f"Bearer {token}"}) as client:
            for name, path in QUERIES.items():
                client.get(path).raise_for_status()  # warm up caches and the pool
                times = []
                for _ in range(n):
                    t = time.perf_counter()
                    r = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                total = r.json()["total"]
                times.sort()
                out[name] = (statistics.median(times), times[int(0.95 * len(times)) - 1], total)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--flags", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = ap.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            pg = None
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'twin.sqlite'}"
            else:
                root = temp_root("sitetwin-bench-pg-")
                pg = PostgreSQL(root=root, port=free_port())
                pg.start()
                url = pg.url
            try:
                t = time.perf_counter()
                token = fill(url, args.sites, args.flags, Path(tmp))
                print(f"{backend}: filled {args.sites} sites and {args.flags} flags in"
                      f" {time.perf_counter() - t:.1f}s", flush=True)
                for name, (p50, p95, total) in measure(url, token, args.requests).items():
                    print(f"  {name:<34} p50 {p50:6.1f} ms   p95 {p95:6.1f} ms   total {total}",
                          flush=True)
            finally:
                if pg is not None:
                    pg.stop()
                    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
