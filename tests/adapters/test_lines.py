"""Line protocol read back (as Telegraf writes it) and mapped onto the contract."""

from __future__ import annotations

import pytest

from adapters.lines import LineError, Point, join_prb, parse_line, to_reading
from connectors.lineprotocol import line as write_line
from connectors.reading import Rejection


def test_escapes_types_and_timestamp():
    p = parse_line(r'my\ meas\,x,tag\ key=va\,l\=ue\ 1,host=gw-1 f\ 1=1.5,i=-3i,u=7u,'
                   r's="he said \"hi\" \\o/",b=t,B=FALSE,e=1e3 1795000000123456789')
    assert p == Point("my meas,x", {"tag key": "va,l=ue 1", "host": "gw-1"},
                      {"f 1": 1.5, "i": -3, "u": 7, "s": 'he said "hi" \\o/', "b": True,
                       "B": False, "e": 1000.0}, 1795000000123456789)


def test_what_connectors_write_reads_back():
    text = write_line("flags", {"county": "Hai Dian, 北京", "kind": "a=b"},
                      {"summary": 'x "y"\nz', "n": 3, "v": 0.25, "ok": True}, 1795000000000000000)
    p = parse_line(text)
    assert p.tags == {"county": "Hai Dian, 北京", "kind": "a=b"}
    assert p.fields == {"summary": 'x "y"\\nz', "n": 3, "v": 0.25, "ok": True}


@pytest.mark.parametrize(("precision", "ns"), [(1, 1795000000), (1000, 1795000000000),
                                                (10**6, 1795000000000000),
                                                (10**9, 1795000000000000000)])
def test_precision(precision, ns):
    assert parse_line("tower,site_id=S1 mains_ok=true 1795000000",
                      precision_ns=precision).ts_ns == ns


@pytest.mark.parametrize("bad", [
    "", " x=1", "m", "m,t x=1", "m,t= x=1", "m x", "m x=", "m x=abc", 'm x="open',
    "m x=1 12:00", "m x=-1u", "m x=1,",
])
def test_bad_lines_name_the_column(bad):
    with pytest.raises(LineError, match="column"):
        parse_line(bad)


def test_no_timestamp_gets_the_time_of_receipt_and_tags_become_identifiers():
    p = parse_line("power,site_id=S1,meter_id=M1,host=gw energy_kwh=12.5,power_kw=3i")
    site, stream, doc = to_reading(p, received_ns=1795000000_123456789)
    assert (site, stream) == ("S1", "power")
    assert doc == {"ts": "2026-11-18T11:06:40.123456Z", "meter_id": "M1", "energy_kwh": 12.5,
                   "power_kw": 3}


def test_other_measurements_and_missing_tags_are_refused():
    assert to_reading(parse_line("cpu,host=a usage=1 1"), 0).reason == "unknown_measurement"
    r = to_reading(parse_line("interference,site_id=S1,cell_id=C1 ul_interference_dbm=-100 1"), 0)
    assert isinstance(r, Rejection) and r.reason == "schema" and "band" in r.detail
    r = to_reading(parse_line("tower,site_id=S1 site_id=\"S2\",mains_ok=true 1"), 0)
    assert isinstance(r, Rejection) and "tag" in r.detail


def test_prb_lines_join_their_interference_line():
    tags = "interference{},site_id=S1,cell_id=C1,band=n78"
    pts = [(1, parse_line(tags.format("") + " ul_interference_dbm=-100 5")),
           (2, parse_line(tags.format("_prb") + " prb_000=-101,prb_001=-99 5")),
           (3, parse_line(tags.format("_prb") + " prb_000=-101 6"))]
    joined, refused = join_prb(pts)
    assert [n for n, _p in joined] == [1]
    assert joined[0][1].fields == {"ul_interference_dbm": -100.0, "prb_dbm": [-101.0, -99.0]}
    assert [(n, r.reason) for n, r in refused] == [(3, "unknown_measurement")]
    gap = [(1, pts[0][1]), (2, parse_line(tags.format("_prb") + " prb_000=-1,prb_002=-2 5"))]
    joined, refused = join_prb(gap)
    assert "prb_dbm" not in joined[0][1].fields and refused[0][1].reason == "schema"
