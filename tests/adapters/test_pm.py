"""The TS 32.435 parser and the counter mapping, on generated files and hand-written edge cases."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime

import pytest

from adapters.cells import CellInfo, read_cells
from adapters.errors import CellsFileError, PmFileError
from adapters.pm import (
    CounterMapper,
    MapStats,
    Unmapped,
    iso_duration_s,
    merge_values,
    parse_file_name,
    read_values,
)
from core.settings import load_settings
from simulator.fleet import Fleet
from simulator.pmfile import interference_docs, write_cells_csv, write_pm_files

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NS = 'xmlns="http://www.3gpp.org/ftp/specs/archive/32_series/32.435#measCollec"'


def pm_xml(body: str, vendor: str = "sitetwin test", sender: str = "ManagedElement=S1") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<measCollecFile {NS}>
  <fileHeader fileFormatVersion="32.435 V10.0" vendorName="{vendor}" dnPrefix="SubNetwork=X">
    <fileSender localDn="{sender}" elementType="gNB"/>
    <measCollec beginTime="2026-11-25T08:00:00+08:00"/>
  </fileHeader>
  <measData>
    <managedElement localDn="{sender}"/>
    {body}
  </measData>
  <fileFooter><measCollec endTime="2026-11-25T08:30:00+08:00"/></fileFooter>
</measCollecFile>""".encode()


def info(end: str, types: list[str], values: list[tuple[str, list[str], str]], period: str = "PT900S") -> str:
    out = [f'<measInfo measInfoId="x"><granPeriod duration="{period}" endTime="{end}"/>']
    out += [f'<measType p="{i}">{t}</measType>' for i, t in enumerate(types, 1)]
    for ldn, rs, extra in values:
        out.append(f'<measValue measObjLdn="{ldn}">')
        out += [f'<r p="{i}">{r}</r>' for i, r in enumerate(rs, 1)]
        out.append(extra + "</measValue>")
    return "".join(out) + "</measInfo>"


def values(data: bytes):
    return merge_values(read_values(io.BytesIO(data)))


def mapper(cells=None, **pm):
    return CounterMapper(load_settings(None, adapters={"pm": pm}).adapters.pm, cells)


CELLS = {"C1": CellInfo("S1", "n78"), "C2": CellInfo("S1", "n78"), "C3": CellInfo("S1", "n41")}
TYPES = ["UL.Interference.Mean", "UL.PRB.Usage"]


def test_several_granularity_periods_in_one_file_each_become_readings():
    data = pm_xml(
        info("2026-11-25T08:15:00+08:00", TYPES, [("NRCellDU=C1", ["-110.5", "40"], "")])
        + info("2026-11-25T08:30:00+08:00", TYPES, [("NRCellDU=C1", ["-108.0", "45.5"], "")])
        + info("2026-11-25T09:00:00+08:00", TYPES, [("NRCellDU=C1", ["-107.0", "50"], "")],
               period="PT30M"))
    m, stats = mapper(CELLS), MapStats()
    out = [m.map(v, stats) for v in values(data)]
    assert [doc["ts"] for _s, doc in out] == ["2026-11-25T00:15:00Z", "2026-11-25T00:30:00Z",
                                             "2026-11-25T01:00:00Z"]
    assert [doc["period_s"] for _s, doc in out] == [900, 900, 1800]
    assert out[1] == ("S1", {"ts": "2026-11-25T00:30:00Z", "cell_id": "C1", "band": "n78",
                             "ul_interference_dbm": -108.0, "period_s": 900,
                             "ul_prb_usage_pct": 45.5})


def test_suspect_values_are_skipped_and_counted_in_both_spellings():
    data = pm_xml(info("2026-11-25T08:15:00+08:00", TYPES, [
        ("NRCellDU=C1", ["-110", "1"], "<suspect>true</suspect>"),
        ("NRCellDU=C2", ["-111", "1"], "<suspect>false</suspect>"),
        ("NRCellDU=C3", ["-112", "1"], ""),
    ]).replace('measObjLdn="NRCellDU=C3"', 'measObjLdn="NRCellDU=C3" suspect="true"'))
    m, stats = mapper(CELLS), MapStats()
    out = [m.map(v, stats) for v in values(data)]
    assert [r[1]["cell_id"] for r in out if r] == ["C2"]
    assert stats.suspect == 2
    kept = mapper(CELLS, keep_suspect=True)
    assert sum(1 for v in values(data) if kept.map(v, MapStats())) == 3


def test_missing_values_nil_and_empty():
    data = pm_xml(info("2026-11-25T08:15:00+08:00", TYPES, [
        ("NRCellDU=C1", ["NIL", "40"], ""),
        ("NRCellDU=C2", ["", ""], ""),
        ("NRCellDU=C3", ["-109.25", "NIL"], ""),
    ]))
    m, stats = mapper(CELLS), MapStats()
    out = [m.map(v, stats) for v in values(data)]
    assert out[0] is None and out[1] is None and stats.missing == 2
    assert out[2] == ("S1", {"ts": "2026-11-25T00:15:00Z", "cell_id": "C3", "band": "n41",
                             "ul_interference_dbm": -109.25, "period_s": 900})


def test_unknown_counters_are_counted_and_do_not_stop_the_reading():
    data = pm_xml(info("2026-11-25T08:15:00+08:00", ["Foo.Bar", "UL.Interference.Mean", "Baz"], [
        ("NRCellDU=C1", ["7", "-100", "8"], ""),
        ("GNBDUFunction=1", ["1", "", "2"], ""),
    ]).replace("<r p=\"2\"></r>", ""))
    m, stats = mapper(CELLS), MapStats()
    out = [m.map(v, stats) for v in values(data)]
    assert out[0][1]["ul_interference_dbm"] == -100.0
    assert out[1] is None  # a node-level object with none of our counters
    assert stats.unknown_counters == {"Foo.Bar", "Baz"} and stats.not_ours == 1


def test_per_prb_counters_in_another_measinfo_are_joined_and_a_missing_mean_is_computed():
    prb_types = [f"UL.Interference.PRB{i}" for i in range(4)]
    data = pm_xml(
        info("2026-11-25T08:15:00+08:00", TYPES, [("NRCellDU=C1", ["-100", "10"], "")])
        + info("2026-11-25T08:15:00+08:00", prb_types, [
            ("NRCellDU=C1", ["-101", "-102", "-99", "-98.5"], ""),
            ("NRCellDU=C2", ["-100", "-100", "-90", "-100"], ""),
            ("NRCellDU=C3", ["-100", "NIL", "-90", "-100"], "")]))
    m, stats = mapper(CELLS), MapStats()
    out = {r[1]["cell_id"]: r[1] for v in values(data) if (r := m.map(v, stats))}
    assert out["C1"]["ul_interference_dbm"] == -100.0
    assert out["C1"]["prb_dbm"] == [-101.0, -102.0, -99.0, -98.5]
    mean_mw = (3 * 10 ** -10 + 10 ** -9) / 4
    assert out["C2"]["ul_interference_dbm"] == pytest.approx(10 * math.log10(mean_mw), abs=1e-3)
    assert "C3" not in out and stats.partial_prb == 1 and stats.missing == 1


def test_old_style_meas_types_and_results():
    body = ('<measInfo><granPeriod duration="PT15M" endTime="2026-11-25T00:15:00Z"/>'
            "<measTypes>UL.PRB.Usage UL.Interference.Mean</measTypes>"
            '<measValue measObjLdn="NRCellDU=C2"><measResults>33 -117.5</measResults></measValue>'
            "</measInfo>")
    [(site, doc)] = [mapper(CELLS).map(v, MapStats()) for v in values(pm_xml(body))]
    assert (site, doc["ul_interference_dbm"], doc["ul_prb_usage_pct"]) == ("S1", -117.5, 33.0)


def test_vendor_table_by_vendor_name_with_scale_and_dn_patterns():
    body = info("2026-11-25T08:15:00+08:00", ["L.UL.Interference.Avg"],
                [("ENBFunction=1,EUtranCellFDD=3", ["-1105"], "")])
    m = mapper(None, cell_id_format="{site_id}-{cell}",
               vendors={"huawei": {"interference": "L.UL.Interference.Avg", "scale": 0.1,
                                   "band": "B3"}})
    [(site, doc)] = [m.map(v, MapStats()) for v in values(
        pm_xml(body, vendor="Huawei Technologies Co., Ltd.", sender="MeContext=BJ0042"))]
    assert (site, doc["cell_id"], doc["band"], doc["ul_interference_dbm"]) == \
        ("BJ0042", "BJ0042-3", "B3", -110.5)


def test_a_cell_without_band_or_site_is_unmapped_with_the_reason():
    body = info("2026-11-25T08:15:00+08:00", TYPES, [("NRCellDU=Q9", ["-100", "1"], ""),
                                                     ("Other=1", ["-100", "1"], "")])
    out = [mapper({}).map(v, MapStats()) for v in values(pm_xml(body))]
    assert isinstance(out[0], Unmapped) and out[0].reason == "no_band"
    assert isinstance(out[1], Unmapped) and out[1].reason == "unknown_cell"
    body = info("2026-11-25T08:15:00+08:00", TYPES, [("NRCellDU=Q9", ["-100", "1"], "")])
    [got] = [mapper({}).map(v, MapStats()) for v in values(pm_xml(body, sender="Rack=1"))]
    assert isinstance(got, Unmapped) and got.reason == "unknown_site"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not_xml"),
    (b"<measCollecFile><measData><measInfo>", "not_xml"),
    (b"<?xml version='1.0'?><html><body/></html>", "not_32435"),
    (pm_xml('<measInfo><granPeriod duration="soon" endTime="2026-11-25T08:15:00Z"/></measInfo>'),
     "bad_period"),
    (pm_xml('<measInfo><granPeriod duration="PT900S" endTime="2026-11-25T08:15:00"/></measInfo>'),
     "bad_period"),
    (pm_xml('<measInfo><measTypes>a</measTypes></measInfo>'), "bad_period"),
])
def test_unreadable_files_raise_with_a_reason(data, reason):
    with pytest.raises(PmFileError) as exc:
        list(read_values(io.BytesIO(data)))
    assert exc.value.reason == reason


def test_entities_are_not_expanded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("-42")
    data = pm_xml(info("2026-11-25T08:15:00+08:00", TYPES, [("NRCellDU=C1", ["&xxe;", "1"], "")]))
    data = data.replace(b"<measCollecFile", f'<!DOCTYPE m [<!ENTITY xxe SYSTEM "file://{secret}">]>'
                        "\n<measCollecFile".encode(), 1)
    [value] = values(data)
    assert value.counters["UL.Interference.Mean"] is None


def test_file_names_and_durations():
    a = parse_file_name("A20261125.0800+0800-0815+0800_BJ0001.xml")
    assert (a.kind, a.begin, a.end, a.sender, a.compressed) == (
        "A", datetime(2026, 11, 25, 0, 0, tzinfo=UTC), datetime(2026, 11, 25, 0, 15, tzinfo=UTC),
        "BJ0001", False)
    c = parse_file_name("C20261124.2300+0000-20261125.0100+0000_job7_NE-1_-_2.xml.gz")
    assert (c.kind, c.end, c.sender, c.compressed) == (
        "C", datetime(2026, 11, 25, 1, 0, tzinfo=UTC), "job7_NE-1", True)
    assert parse_file_name("export.xml") is None
    assert parse_file_name("A20261325.0800-0815_x.xml") is None
    assert [iso_duration_s(t) for t in ("PT900S", "PT15M", "PT1H", "P1D")] == [900, 900, 3600, 86400]
    with pytest.raises(ValueError):
        iso_duration_s("P")


def test_simulator_files_give_back_the_simulators_readings(tmp_path):
    fleet = Fleet.build(20, seed=5, now=NOW)
    start, end = NOW.timestamp() - 2 * 3600, NOW.timestamp()
    paths = write_pm_files(fleet, start, end, tmp_path / "in", periods_per_file=3,
                           prb_window_s=3600)
    cells = read_cells(write_cells_csv(fleet, tmp_path / "cells.csv"))
    m, stats = mapper(cells), MapStats()
    got = {}
    for p in paths:
        assert parse_file_name(p.name) is not None
        with p.open("rb") as fh:
            for v in merge_values(read_values(fh)):
                site, doc = m.map(v, stats)
                got[(doc["cell_id"], doc["ts"])] = (site, doc)
    want = {}
    for site, periods in interference_docs(fleet, start, end, prb_window_s=3600).items():
        for docs in periods.values():
            for d in docs:
                want[(d["cell_id"], d["ts"])] = (site, d)
    assert got.keys() == want.keys() and len(got) > 50
    with_prb = 0
    for key, (site, doc) in got.items():
        wsite, wdoc = want[key]
        assert site == wsite and doc["band"] == wdoc["band"]
        assert doc["ul_interference_dbm"] == wdoc["ul_interference_dbm"]
        assert doc["ul_prb_usage_pct"] == wdoc["ul_prb_usage_pct"]
        if "prb_dbm" in wdoc:
            with_prb += 1
            assert doc["prb_dbm"] == [float(x) for x in wdoc["prb_dbm"]]
    assert with_prb > 0
    assert stats.unknown_counters == set()


def test_cells_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "cells.csv"
    bad.write_text("cell_id,site_id,band\nC1,S1,n78\nC 2,S1,n78\n")
    with pytest.raises(CellsFileError, match="line 3"):
        read_cells(bad)
    bad.write_text("cell,site\n")
    with pytest.raises(CellsFileError, match="missing column"):
        read_cells(bad)
    with pytest.raises(CellsFileError, match="cannot read"):
        read_cells(tmp_path / "nope.csv")
