"""The PM drop directory: read each 3GPP file, publish its readings, archive or reject it.

An OMC's northbound export puts TS 32.435 files (``.xml`` or ``.xml.gz``) into a
directory by SFTP.  Each scan takes the files that have not changed for
``settle`` (an upload in progress keeps touching its file; names that start
with ``.`` or end in ``.part``, ``.tmp``, ``.filepart`` are uploads by
convention and never read) and, oldest first:

1. hashes the file; a ``(name, sha256)`` already in the ledger is a duplicate:
   moved to ``archive/duplicates`` and nothing is published;
2. parses it completely before publishing anything (``adapters.pm``; the XML is
   streamed, one ``measInfo`` at a time, but the file's values are held to join an
   object's counters spread over several ``measInfo``: memory grows with the
   number of values, see bench/RESULTS.md) - a file that cannot be read is moved to the rejected
   folder with a ``<name>.reason`` file beside it, counted, and kept in the
   dead-letter store, and nothing of it is published (a file broken half-way
   publishes nothing, not its first half);
3. offers every reading to the ``ReadingSink`` (the collector's validation;
   refusals dead-lettered with the file's name) and commits: only when the
   broker acknowledged every reading is the file entered in the ledger and
   moved to the archive.  While the broker is away the watcher keeps waiting on
   the same file (the publisher resends after reconnecting), so nothing is
   published twice; ``--once`` gives up with an error and leaves the file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from adapters.cells import read_cells
from adapters.errors import PmFileError
from adapters.ledger import Ledger
from adapters.pm import CounterMapper, MapStats, Unmapped, merge_values, read_values
from adapters.sink import ReadingSink
from connectors.deadletter import DeadLetter
from connectors.errors import PublishError
from connectors.reading import Rejection
from core.settings import PmAdapterSettings

__all__ = ["FileOutcome", "PmWatcher", "WatchStats"]

log = logging.getLogger(__name__)

_UPLOADING = (".part", ".tmp", ".filepart", ".partial")
_READABLE = (".xml", ".xml.gz")


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one file: ``archived``, ``duplicate`` or ``rejected``."""

    name: str
    outcome: str
    readings: int = 0
    refused: int = 0
    reason: str = ""


@dataclass
class WatchStats:
    """Totals since the watcher started."""

    archived: int = 0
    duplicates: int = 0
    rejected: int = 0
    readings: int = 0
    refused: int = 0
    suspect: int = 0
    missing: int = 0
    partial_prb: int = 0
    unknown_counters: set[str] = field(default_factory=set)
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, m: MapStats) -> None:
        self.suspect += m.suspect
        self.missing += m.missing
        self.partial_prb += m.partial_prb
        self.unknown_counters |= m.unknown_counters

    def as_dict(self) -> dict[str, object]:
        return {"archived": self.archived, "duplicates": self.duplicates,
                "rejected": self.rejected, "readings": self.readings, "refused": self.refused,
                "suspect": self.suspect, "missing": self.missing,
                "partial_prb": self.partial_prb,
                "unknown_counters": sorted(self.unknown_counters),
                "rejected_reasons": dict(sorted(self.rejected_reasons.items()))}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _free_name(directory: Path, name: str, tag: str) -> Path:
    target = directory / name
    if not target.exists():
        return target
    n = 1
    while (candidate := directory / f"{name}.{tag}.{n}").exists():
        n += 1
    return candidate


class PmWatcher:
    """Watches one directory of PM files; see the module docstring."""

    def __init__(self, pm: PmAdapterSettings, sink: ReadingSink, *, state_dir: Path,
                 watch_dir: str | Path | None = None, commit_timeout_s: float = 30.0) -> None:
        """``pm``: the ``[adapters.pm]`` section; ``state_dir``: where the incoming, archive and
        rejected folders and the ledger go when the section names none."""
        base = state_dir / "pm"
        self.pm = pm
        self.sink = sink
        self.incoming = Path(watch_dir or pm.watch_dir or base / "incoming").expanduser()
        self.archive = Path(pm.archive_dir or base / "archive").expanduser()
        self.rejected = Path(pm.rejected_dir or base / "rejected").expanduser()
        for d in (self.incoming, self.archive, self.rejected):
            d.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(Path(pm.ledger or base / "ledger.sqlite").expanduser())
        cells = read_cells(pm.cells_file) if pm.cells_file else {}
        self.mapper = CounterMapper(pm, cells)
        self.settle_s = pm.settle
        self.poll_interval_s = pm.poll_interval
        self.commit_timeout_s = commit_timeout_s
        self.stats = WatchStats()

    def close(self) -> None:
        self.ledger.close()

    # -- choosing files -----------------------------------------------------------------

    def ready(self, now: float | None = None) -> list[Path]:
        """Files to read now, oldest first (by modification time, then name)."""
        now = time.time() if now is None else now
        out = []
        try:
            entries = list(os.scandir(self.incoming))
        except OSError as exc:
            log.warning("cannot list %s: %s", self.incoming, exc)
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_UPLOADING) or not name.endswith(_READABLE):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # moved away meanwhile
            if not entry.is_file() or now - st.st_mtime < self.settle_s:
                continue
            out.append((st.st_mtime, name, Path(entry.path)))
        return [p for _m, _n, p in sorted(out)]

    # -- one file -----------------------------------------------------------------------

    def _parse(self, path: Path) -> tuple[list[tuple[str, dict]], list[Unmapped], MapStats]:
        stats = MapStats()
        readings: list[tuple[str, dict]] = []
        unmapped: list[Unmapped] = []
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rb") as fh:
                values = merge_values(read_values(fh))
        except (OSError, EOFError, zlib.error) as exc:
            raise PmFileError("unreadable", str(exc)) from None
        for value in values:
            got = self.mapper.map(value, stats)
            if got is None:
                continue
            if isinstance(got, Unmapped):
                unmapped.append(got)
            else:
                readings.append(got)
        if stats.values and stats.not_ours == stats.values and not readings and not unmapped:
            vendors = ", ".join(sorted(self.pm.vendors))
            raise PmFileError("no_counters", f"none of the file's {stats.values} measured objects "
                              f"has a counter of the vendor tables ({vendors}); counters seen: "
                              f"{', '.join(sorted(stats.unknown_counters)[:10])}")
        return readings, unmapped, stats

    def _reject(self, path: Path, reason: str, detail: str) -> FileOutcome:
        target = _free_name(self.rejected, path.name, "rejected")
        shutil.move(str(path), target)
        target.with_name(target.name + ".reason").write_text(f"{reason}: {detail}\n", encoding="utf-8")
        try:
            sample = target.read_bytes()[: self.sink.dead_letters.max_payload_bytes]
        except OSError:
            sample = b""
        self.sink.dead_letters.add(DeadLetter(reason=f"pm_{reason}", detail=f"{path.name}: {detail}",
                                              payload=sample, topic=None, source="pm",
                                              received_at=time.time()))
        self.stats.rejected += 1
        self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + 1
        log.warning("rejected PM file %s (%s: %s) -> %s", path.name, reason, detail, target)
        return FileOutcome(path.name, "rejected", reason=reason)

    def process(self, path: Path, *, wait_for_broker: bool = True,
                stop: threading.Event | None = None) -> FileOutcome:
        """Read, publish and archive (or reject) one file."""
        name = path.name
        sha = _sha256(path)
        if self.ledger.seen(name, sha):
            dup_dir = self.archive / "duplicates"
            dup_dir.mkdir(exist_ok=True)
            shutil.move(str(path), _free_name(dup_dir, name, "dup"))
            self.stats.duplicates += 1
            log.info("PM file %s was processed before (same content): nothing published", name)
            return FileOutcome(name, "duplicate")
        try:
            readings, unmapped, mstats = self._parse(path)
        except PmFileError as exc:
            return self._reject(path, exc.reason, exc.detail)
        sink = self.sink
        with sink.lock:
            for u in unmapped:
                sink.refuse(Rejection(u.reason, f"{name}: {u.detail}"), u.dn.encode(), topic=None)
            for site_id, doc in readings:
                sink.offer(site_id, "interference", doc)
            while True:
                try:
                    done = sink.commit(self.commit_timeout_s)
                    break
                except PublishError as exc:
                    if not wait_for_broker or (stop is not None and stop.is_set()):
                        raise
                    log.warning("PM file %s: %s; still waiting for the broker", name, exc)
        self.ledger.add(name, sha, path.stat().st_size, done.readings, done.refused)
        shutil.move(str(path), _free_name(self.archive, name, sha[:12]))
        self.stats.archived += 1
        self.stats.readings += done.readings
        self.stats.refused += done.refused
        self.stats.add(mstats)
        log.info("PM file %s: %d readings acknowledged, %d refused, %d suspect skipped; archived",
                 name, done.readings, done.refused, mstats.suspect)
        return FileOutcome(name, "archived", readings=done.readings, refused=done.refused)

    # -- the loop -----------------------------------------------------------------------

    def scan_once(self, *, wait_for_broker: bool = True,
                  stop: threading.Event | None = None) -> list[FileOutcome]:
        """Process every ready file once."""
        out = []
        for path in self.ready():
            if stop is not None and stop.is_set():
                break
            try:
                out.append(self.process(path, wait_for_broker=wait_for_broker, stop=stop))
            except FileNotFoundError:
                continue  # taken away between listing and reading
        return out

    def run(self, stop: threading.Event) -> None:
        """Scan every ``poll_interval`` until ``stop`` is set."""
        while not stop.is_set():
            self.scan_once(stop=stop)
            # Between scans, keep the connection alive (pings) and read late acknowledgements.
            end = time.monotonic() + self.poll_interval_s
            while not stop.is_set() and (left := end - time.monotonic()) > 0:
                with self.sink.lock:
                    self.sink.publisher.idle(min(left, 0.5))
