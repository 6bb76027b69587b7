"""The simulator's interference as 3GPP PM files (TS 32.435 XML, TS 32.432 names).

What an OMC's northbound export would drop for the simulated fleet: one file
per site (the NE) and run of granularity periods, the site's cells as
measured objects (``ManagedElement=<site>,GNBDUFunction=1,NRCellDU=<cell_id>``
for NR bands, ``...,ENBFunction=1,EUtranCellFDD=<cell_id>`` for LTE), counters
named by a vendor table of ``[adapters.pm.vendors]`` (default: ``sitetwin``'s).
The mean and the PRB usage are one ``measInfo``; the per-PRB values, where
the cell reports them, another (as vendors group counters by family).  The
values are the simulator's own ``interference`` readings (``simulator.telemetry``),
so a PM file and the MQTT stream of the same window carry the same numbers.
``write_cells_csv`` writes the matching cells file.
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from lxml import etree

from core.settings import BUILTIN_PM_VENDORS, PmVendorSettings
from simulator.fleet import Fleet
from simulator.telemetry import INTERFERENCE_PERIOD_S, readings

__all__ = ["NS", "file_name", "interference_docs", "write_cells_csv", "write_pm_file",
           "write_pm_files"]

NS = "http://www.3gpp.org/ftp/specs/archive/32_series/32.435#measCollec"


def interference_docs(fleet: Fleet, start: datetime | float, end: datetime | float,
                      scenario: str = "normal", *, site_ids: Collection[str] | None = None,
                      prb_window_s: float | None = None) -> dict[str, dict[int, list[dict]]]:
    """``site_id -> period end (epoch s) -> the interference documents of its cells``."""
    kwargs: dict[str, Any] = {} if prb_window_s is None else {"prb_window_s": prb_window_s}
    out: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for topic, payload in readings(fleet, start, end, period_s=INTERFERENCE_PERIOD_S,
                                   scenario=scenario, site_ids=site_ids, **kwargs):
        _, site_id, stream = topic.split("/")
        if stream != "interference":
            continue
        docs = orjson.loads(payload)
        for doc in docs if isinstance(docs, list) else [docs]:
            ts = int(datetime.fromisoformat(doc["ts"]).timestamp())
            out[site_id][ts].append(doc)
    return out


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def file_name(site_id: str, first_end: int, last_end: int, period_s: int = INTERFERENCE_PERIOD_S,
              *, gz: bool = False) -> str:
    """A TS 32.432 name: ``A`` for one period of one NE, ``C`` for several periods."""
    begin = datetime.fromtimestamp(first_end - period_s, UTC)
    end = datetime.fromtimestamp(last_end, UTC)
    kind = "A" if first_end == last_end else "C"
    stop = end.strftime("%H%M") if kind == "A" else end.strftime("%Y%m%d.%H%M")
    return f"{kind}{begin:%Y%m%d.%H%M}+0000-{stop}+0000_{site_id}.xml" + (".gz" if gz else "")


def _dn(site_id: str, doc: dict) -> str:
    if doc["band"].startswith("n"):
        return f"GNBDUFunction=1,NRCellDU={doc['cell_id']}"
    return f"ENBFunction=1,EUtranCellFDD={doc['cell_id']}"


def _value(number: float | None) -> str:
    return "NIL" if number is None else repr(float(number))


def write_pm_file(path: str | Path, site_id: str, periods: dict[int, list[dict]], *,
                  counters: PmVendorSettings = BUILTIN_PM_VENDORS["sitetwin"],
                  vendor_name: str = "sitetwin simulator", period_s: int = INTERFERENCE_PERIOD_S,
                  suspect_cells: Collection[str] = ()) -> Path:
    """Write one ``measCollecFile`` for ``site_id`` with the given periods (end -> docs)."""
    path = Path(path)
    ends = sorted(periods)
    root = etree.Element(f"{{{NS}}}measCollecFile", nsmap={None: NS})
    header = etree.SubElement(root, "fileHeader", fileFormatVersion="32.435 V10.0",
                              vendorName=vendor_name, dnPrefix="SubNetwork=sitetwin")
    etree.SubElement(header, "fileSender", localDn=f"ManagedElement={site_id}", elementType="gNB")
    etree.SubElement(header, "measCollec", beginTime=_iso(ends[0] - period_s))
    data = etree.SubElement(root, "measData")
    etree.SubElement(data, "managedElement", localDn=f"ManagedElement={site_id}",
                     swVersion="sim-1")
    for end in ends:
        docs = periods[end]
        info = etree.SubElement(data, "measInfo", measInfoId="UL interference")
        etree.SubElement(info, "job", jobId="1")
        etree.SubElement(info, "granPeriod", duration=f"PT{period_s}S", endTime=_iso(end))
        etree.SubElement(info, "repPeriod", duration=f"PT{period_s}S")
        names = [counters.interference] + ([counters.usage] if counters.usage else [])
        for p, name in enumerate(names, 1):
            etree.SubElement(info, "measType", p=str(p)).text = name
        for doc in docs:
            mv = etree.SubElement(info, "measValue", measObjLdn=_dn(site_id, doc))
            etree.SubElement(mv, "r", p="1").text = _value(doc["ul_interference_dbm"])
            if counters.usage:
                etree.SubElement(mv, "r", p="2").text = _value(doc.get("ul_prb_usage_pct"))
            if doc["cell_id"] in suspect_cells:
                etree.SubElement(mv, "suspect").text = "true"
        with_prb = [d for d in docs if d.get("prb_dbm")]
        if with_prb and counters.prb_prefix:
            n = max(len(d["prb_dbm"]) for d in with_prb)
            info = etree.SubElement(data, "measInfo", measInfoId="UL interference per PRB")
            etree.SubElement(info, "granPeriod", duration=f"PT{period_s}S", endTime=_iso(end))
            first = counters.prb_first_index
            etree.SubElement(info, "measTypes").text = " ".join(
                f"{counters.prb_prefix}{first + i}" for i in range(n))
            for doc in with_prb:
                mv = etree.SubElement(info, "measValue", measObjLdn=_dn(site_id, doc))
                etree.SubElement(mv, "measResults").text = " ".join(
                    _value(v) for v in doc["prb_dbm"])
    footer = etree.SubElement(root, "fileFooter")
    etree.SubElement(footer, "measCollec", endTime=_iso(ends[-1]))
    body = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    tmp = path.with_name(f".{path.name}.tmp")  # never seen half-written by a watcher
    tmp.write_bytes(gzip.compress(body) if path.name.endswith(".gz") else body)
    tmp.replace(path)
    return path


def write_pm_files(fleet: Fleet, start: datetime | float, end: datetime | float,
                   directory: str | Path, *, scenario: str = "normal",
                   site_ids: Collection[str] | None = None, periods_per_file: int = 1,
                   counters: PmVendorSettings = BUILTIN_PM_VENDORS["sitetwin"],
                   vendor_name: str = "sitetwin simulator", gz: bool = False,
                   prb_window_s: float | None = None) -> list[Path]:
    """The fleet's interference of ``[start, end)`` as PM files in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    docs = interference_docs(fleet, start, end, scenario, site_ids=site_ids,
                             prb_window_s=prb_window_s)
    for site_id in sorted(docs):
        ends = sorted(docs[site_id])
        for i in range(0, len(ends), periods_per_file):
            group = ends[i:i + periods_per_file]
            name = file_name(site_id, group[0], group[-1], gz=gz)
            out.append(write_pm_file(directory / name, site_id,
                                     {e: docs[site_id][e] for e in group},
                                     counters=counters, vendor_name=vendor_name))
    return out


def write_cells_csv(fleet: Fleet, path: str | Path) -> Path:
    """``cell_id,site_id,band`` of every cell of the fleet (the PM adapter's cells file)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["cell_id", "site_id", "band"])
        for site in fleet.sites:
            for cell in site.cells:
                writer.writerow([cell.cell_id, site.site_id, cell.band])
    return path
