"""Import a generated 100k-site registry into a fresh SQLite twin and print the times.

    .venv/bin/python bench/twin_import.py [--sites 100000] [--url sqlite:///...]

Prints the first import (inserts + one lifecycle event per site) and a
re-import of the same file (idempotent upserts), in seconds and rows/s.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.imports import SITES, import_csv
from twin.store import open_store

COUNTIES = ["Jinjiang", "Qingyang", "Jinniu", "Wuhou", "Chenghua", "Longquanyi", "Xindu",
            "Wenjiang", "Shuangliu", "Pidu", "Xinjin"]
STATES = ["planned"] * 4 + ["site_secured", "approved", "under_construction", "power_connected"] \
    + ["on_air"] * 8


def write_sites(path: Path, n: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["site_id", "name", "lat", "lon", "county", "kind", "supply", "region",
                    "customer_class", "district", "owner", "operators", "planned_year", "state"])
        for i in range(n):
            w.writerow([f"CD{i:06d}", f"Site {i}", f"{30.4 + rnd.random() * 0.6:.5f}",
                        f"{103.7 + rnd.random() * 0.7:.5f}", rnd.choice(COUNTIES),
                        rnd.choice(["macro", "micro", "pole", "indoor"]),
                        "transfer" if rnd.random() < 0.3 else "direct", "Sichuan",
                        rnd.choice(["industrial", "commercial"]), "", "Tower Co",
                        rnd.choice(["CM", "CT;CU", "CM;CT;CU"]), rnd.choice([2025, 2026, 2027]),
                        rnd.choice(STATES)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--url", help="registry URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "sites.csv"
        write_sites(csv_path, args.sites)
        store = open_store(args.url or f"sqlite:///{Path(tmp) / 'twin.sqlite'}")
        for label in ("first import", "re-import"):
            t0 = time.perf_counter()
            r = import_csv(store, csv_path, SITES)
            dt = time.perf_counter() - t0
            print(f"twin_import {label}: {args.sites} sites in {dt:.1f}s"
                  f" ({args.sites / dt:,.0f} rows/s; inserted {r.inserted}, updated {r.updated})",
                  flush=True)
        store.close()


if __name__ == "__main__":
    main()
