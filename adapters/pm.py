"""3GPP performance-measurement files: TS 32.432 names, TS 32.435 XML, mapped to readings.

``read_values(stream)`` parses a ``measCollecFile`` with lxml's ``iterparse``
and yields one ``MeasValue`` per measured object and granularity period; each
``measInfo`` is cleared once read, so a file of any size is parsed in the
memory of one ``measInfo``.  Both spellings of the schema are read: per-counter
``<measType p=".."/>`` + ``<r p="..">`` (32.435 V8+) and the older
space-separated ``<measTypes>`` + ``<measResults>``.  A missing value (``NIL``
or empty) is ``None``; ``<suspect>true</suspect>`` (or ``suspect="true"`` on
``measValue``) marks the object's values of that period unreliable.

``CounterMapper`` turns values into ``interference`` documents (the JSON of
docs/contracts.md section 1) by a vendor's counter table (``[adapters.pm.vendors.X]``):
the cell from the measured object's DN, the site and band from the cells file
or the DN pattern / the vendor table.  What cannot become a reading is an
``Unmapped`` with a reason; nothing here publishes or validates ranges (the
caller runs the collector's own validation).

Parsing is pure (a stream in, values out); the XML parser resolves no entities
and loads no DTD or network resource (a PM file comes from outside).
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, cast

from lxml import etree

from adapters.errors import PmFileError
from core.settings import PmAdapterSettings, PmVendorSettings

__all__ = [
    "CounterMapper",
    "MapStats",
    "MeasValue",
    "PmFileName",
    "Unmapped",
    "iso_duration_s",
    "merge_values",
    "parse_file_name",
    "read_values",
]

_NS_ANY = "{*}"
_NAME = re.compile(
    r"^(?P<kind>[ABCD])(?P<sd>\d{8})\.(?P<st>\d{4})(?P<so>[+-]\d{4})?"
    r"-(?:(?P<ed>\d{8})\.)?(?P<et>\d{4})(?P<eo>[+-]\d{4})?"
    r"(?:_(?P<uid>.*?))?(?:_-_(?P<rc>\d+))?(?P<ext>\.xml)?(?P<gz>\.gz)?$"
)
_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$")
_MISSING = frozenset({"", "NIL", "nil", "NULL", "null", "-"})


@dataclass(frozen=True, slots=True)
class PmFileName:
    """What a TS 32.432 file name says: kind (A single NE ... D several NEs and periods),
    the first period's begin, the last one's end, and the sender's unique id."""

    kind: str
    begin: datetime
    end: datetime
    sender: str
    compressed: bool


def _stamp(day: str, hhmm: str, offset: str | None) -> datetime:
    text = f"{day[:4]}-{day[4:6]}-{day[6:]}T{hhmm[:2]}:{hhmm[2:]}"
    if offset:
        text += f"{offset[:3]}:{offset[3:]}"
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def parse_file_name(name: str) -> PmFileName | None:
    """The parts of a TS 32.432 name (``A20261124.0800+0800-0815+0800_SITE.xml``), or None."""
    m = _NAME.match(name)
    if not m:
        return None
    try:
        begin = _stamp(m["sd"], m["st"], m["so"])
        end = _stamp(m["ed"] or m["sd"], m["et"], m["eo"] or m["so"])
    except ValueError:
        return None
    return PmFileName(kind=m["kind"], begin=begin, end=end, sender=m["uid"] or "",
                      compressed=bool(m["gz"]))


def iso_duration_s(text: str) -> int:
    """Seconds of an ISO 8601 duration as 32.435 writes them (``PT900S``, ``PT15M``, ``PT1H``)."""
    m = _DURATION.match(text.strip())
    if not m or not any(m.groupdict().values()):
        raise ValueError(f"not an ISO 8601 duration: {text[:40]!r}")
    d, h, mi, s = (int(m[g] or 0) for g in ("d", "h", "m", "s"))
    return ((d * 24 + h) * 60 + mi) * 60 + s


@dataclass(frozen=True, slots=True)
class MeasValue:
    """The counters of one measured object over one granularity period."""

    vendor: str
    dn: str  # the managed element's DN joined with measObjLdn
    end: datetime  # end of the granularity period, UTC
    period_s: int
    counters: Mapping[str, float | None]  # None: the value is missing (NIL or empty)
    suspect: bool


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _number(text: str | None) -> float | None:
    value = (text or "").strip()
    if value in _MISSING:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _true(text: str | None) -> bool:
    return (text or "").strip().lower() in ("true", "1", "yes")


def _join(prefix: str, ldn: str) -> str:
    if not prefix:
        return ldn
    if not ldn or ldn.startswith(prefix):
        return ldn or prefix
    return f"{prefix},{ldn}"


def _meas_info(info: etree._Element, vendor: str, element_dn: str) -> Iterator[MeasValue]:
    gran = None
    names: dict[str, str] = {}
    ordered: list[str] = []
    for child in info:
        tag = _local(child.tag)
        if tag == "granPeriod":
            gran = child
        elif tag == "measType":
            names[child.get("p", str(len(names) + 1))] = (child.text or "").strip()
        elif tag == "measTypes":
            ordered = (child.text or "").split()
    if gran is None:
        raise PmFileError("bad_period", f"measInfo {info.get('measInfoId', '')!r} has no granPeriod")
    try:
        period_s = iso_duration_s(gran.get("duration", ""))
        end = datetime.fromisoformat(gran.get("endTime", "").strip())
    except ValueError as exc:
        raise PmFileError("bad_period", f"granPeriod of measInfo "
                          f"{info.get('measInfoId', '')!r}: {exc}") from None
    if end.tzinfo is None:
        raise PmFileError("bad_period", f"granPeriod endTime {gran.get('endTime')!r} has no offset")
    end = end.astimezone(UTC)
    if period_s <= 0:
        raise PmFileError("bad_period", f"granPeriod duration {gran.get('duration')!r} is zero")
    for value in info:
        if _local(value.tag) != "measValue":
            continue
        counters: dict[str, float | None] = {}
        suspect = _true(value.get("suspect"))
        for r in value:
            tag = _local(r.tag)
            if tag == "r":
                name = names.get(r.get("p", ""))
                if name:
                    counters[name] = _number(r.text)
            elif tag == "measResults":
                for name, text in zip(ordered, (r.text or "").split(), strict=False):
                    counters[name] = _number(text)
            elif tag == "suspect":
                suspect = suspect or _true(r.text)
        yield MeasValue(vendor=vendor, dn=_join(element_dn, value.get("measObjLdn", "")),
                        end=end, period_s=period_s, counters=counters, suspect=suspect)


def read_values(stream: IO[bytes] | gzip.GzipFile) -> Iterator[MeasValue]:
    """Every ``MeasValue`` of a ``measCollecFile``; raises ``PmFileError`` if it is not one.

    A file that breaks part-way raises after yielding what came before it: callers
    that must not act on half a file collect first (``adapters.watcher`` does).
    """
    vendor = ""
    dn_prefix = element_dn = ""
    root_seen = False
    parser = etree.iterparse(
        stream, events=("start", "end"), resolve_entities=False, no_network=True,
        load_dtd=False, huge_tree=True, remove_comments=True,
        tag=(f"{_NS_ANY}measCollecFile", f"{_NS_ANY}fileHeader", f"{_NS_ANY}fileSender",
             f"{_NS_ANY}managedElement", f"{_NS_ANY}measInfo"),
    )
    try:
        for event, elem in parser:
            tag = _local(elem.tag)
            if event == "start":
                if tag == "measCollecFile":
                    root_seen = True
                elif not root_seen:
                    break
                elif tag == "fileHeader":
                    vendor = elem.get("vendorName", "")
                    dn_prefix = element_dn = elem.get("dnPrefix", "")
                continue
            if tag in ("fileSender", "managedElement") and elem.get("localDn"):
                # The measured objects' DNs are relative to the sending element's.
                element_dn = _join(dn_prefix, elem.get("localDn", ""))
            elif tag == "measInfo":
                yield from _meas_info(elem, vendor, element_dn)
                elem.clear(keep_tail=False)
                parent = elem.getparent()
                while parent is not None and elem.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        raise PmFileError("not_xml", f"line {exc.lineno}: {exc.msg}") from None
    if not root_seen:
        raise PmFileError("not_32435", "the root element is not measCollecFile (TS 32.435)")


def merge_values(values: Iterator[MeasValue] | list[MeasValue]) -> list[MeasValue]:
    """One value per measured object and period: vendors spread an object's counters over
    several ``measInfo`` (a family each, e.g. the mean in one and the per-PRB values in
    another); their counters are joined, and suspect in any makes the whole suspect."""
    merged: dict[tuple[str, datetime], MeasValue] = {}
    for v in values:
        key = (v.dn, v.end)
        old = merged.get(key)
        if old is None:
            merged[key] = v
        else:
            merged[key] = MeasValue(vendor=v.vendor, dn=v.dn, end=v.end, period_s=v.period_s,
                                    counters={**old.counters, **v.counters},
                                    suspect=old.suspect or v.suspect)
    return list(merged.values())


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A value that had the vendor's counters but could not become a reading."""

    reason: str  # unknown_site, unknown_cell, no_band
    detail: str
    dn: str


@dataclass
class MapStats:
    """What a file held besides its readings."""

    values: int = 0
    suspect: int = 0
    missing: int = 0  # the mean counter (and every PRB) was NIL or empty
    partial_prb: int = 0  # per-PRB values with a gap: the vector was left out
    not_ours: int = 0  # measured objects with none of the vendor's counters
    unknown_counters: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {"values": self.values, "suspect": self.suspect, "missing": self.missing,
                "partial_prb": self.partial_prb, "not_ours": self.not_ours,
                "unknown_counters": sorted(self.unknown_counters)}


@dataclass(frozen=True, slots=True)
class CellInfo:
    """A cell's site and band from the cells file."""

    site_id: str
    band: str


def _power_mean_dbm(values: list[float]) -> float:
    """The mean of dBm values taken in milliwatts (how a cell's mean per PRB is defined)."""
    return 10.0 * math.log10(sum(10.0 ** (v / 10.0) for v in values) / len(values))


class CounterMapper:
    """Turns ``MeasValue``s into ``(site_id, document)`` of the ``interference`` stream."""

    def __init__(self, settings: PmAdapterSettings, cells: Mapping[str, CellInfo] | None = None) -> None:
        self.settings = settings
        self.cells = cells or {}
        self._site = re.compile(settings.site_pattern)
        self._cell = re.compile(settings.cell_pattern)
        self._vendor_cache: dict[str, tuple[str, PmVendorSettings] | None] = {}
        self._prb_cache: dict[tuple[str, str], int | None] = {}

    def vendor(self, vendor_name: str) -> tuple[str, PmVendorSettings] | None:
        """The counter table for a file's ``vendorName`` (or ``default_vendor``); None if none."""
        if vendor_name not in self._vendor_cache:
            found = None
            low = vendor_name.lower()
            for key, table in self.settings.vendors.items():
                if low and (table.match or key).lower() in low:
                    found = (key, table)
                    break
            if found is None and self.settings.default_vendor in self.settings.vendors:
                key = self.settings.default_vendor
                found = (key, self.settings.vendors[key])
            self._vendor_cache[vendor_name] = found
        return self._vendor_cache[vendor_name]

    def _prb_index(self, table: PmVendorSettings, name: str) -> int | None:
        key = (table.prb_prefix, name)
        if key not in self._prb_cache:
            index = None
            if table.prb_prefix and name.startswith(table.prb_prefix):
                tail = name[len(table.prb_prefix):]
                if tail.isdigit():
                    index = int(tail) - table.prb_first_index
            self._prb_cache[key] = index if index is None or index >= 0 else None
        return self._prb_cache[key]

    def map(self, value: MeasValue, stats: MapStats) -> tuple[str, dict] | Unmapped | None:
        """A reading's ``(site_id, document)``, an ``Unmapped``, or None (nothing of ours)."""
        stats.values += 1
        found = self.vendor(value.vendor)
        if found is None:
            stats.not_ours += 1
            return None
        _key, table = found
        mean = usage = None
        prb_dbm: list[float] | None = None
        prbs: dict[int, float | None] = {}
        ours = False
        for name, number in value.counters.items():
            if name == table.interference:
                mean, ours = number, True
            elif name == table.usage and table.usage:
                usage, ours = number, True
            elif (index := self._prb_index(table, name)) is not None:
                prbs[index] = number
                ours = True
            else:
                stats.unknown_counters.add(name)
        if not ours:
            stats.not_ours += 1
            return None
        if value.suspect and not self.settings.keep_suspect:
            stats.suspect += 1
            return None
        scale, offset = table.scale, table.offset
        if prbs:
            n = max(prbs) + 1
            if len(prbs) == n and all(v is not None for v in prbs.values()):
                if scale == 1.0 and offset == 0.0:
                    prb_dbm = cast("list[float]", [prbs[i] for i in range(n)])  # none is None: checked above
                else:
                    prb_dbm = [round(prbs[i] * scale + offset, 3)  # type: ignore[operator]
                               for i in range(n)]
            else:
                stats.partial_prb += 1
        if mean is not None:
            mean_dbm = round(mean * scale + offset, 3)
        elif prb_dbm:
            mean_dbm = round(_power_mean_dbm(prb_dbm), 3)
        else:
            stats.missing += 1
            return None
        m = self._cell.search(value.dn)
        if m is None or not m.groupdict().get("cell"):
            return Unmapped("unknown_cell", f"no cell in DN {value.dn[:200]!r} "
                            f"(adapters.pm.cell_pattern)", value.dn)
        s = self._site.search(value.dn)
        dn_site = s.groupdict().get("site_id") if s else None
        cell_id = self.settings.cell_id_format.format(cell=m["cell"], site_id=dn_site or "")
        info = self.cells.get(cell_id)
        site_id = info.site_id if info else dn_site
        if not site_id:
            return Unmapped("unknown_site", f"cell {cell_id!r}: no site in DN {value.dn[:200]!r} "
                            "and not in the cells file", value.dn)
        band = info.band if info and info.band else table.band
        if not band:
            return Unmapped("no_band", f"cell {cell_id!r} is not in the cells file and vendor "
                            f"table {_key!r} names no band", value.dn)
        doc: dict[str, object] = {
            "ts": value.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cell_id": cell_id,
            "band": band,
            "ul_interference_dbm": mean_dbm,
            "period_s": value.period_s,
        }
        if prb_dbm:
            doc["prb_dbm"] = prb_dbm
        if usage is not None:
            doc["ul_prb_usage_pct"] = usage
        return site_id, doc
