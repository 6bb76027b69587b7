"""The ledger of processed PM files: name + content hash, so a file dropped twice adds nothing.

A SQLite file beside the other local state.  A file is entered only after every
reading it gave was acknowledged by the broker; a crash between the broker's
acknowledgements and the entry makes the file be read again on restart, which
publishes identical points (InfluxDB overwrites an identical point in place).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from adapters.errors import LedgerError

__all__ = ["Ledger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    processed_at REAL NOT NULL,
    readings INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    PRIMARY KEY (name, sha256)
);
"""


class Ledger:
    """Which files were processed, keyed by ``(name, sha256)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # No fsync per entry (it was 40 % of a small file's processing): after a power
            # loss the newest entries may be missing, and those files are read again,
            # publishing identical points - which the module docstring already allows.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the PM ledger {self.path}: {exc}") from exc

    def seen(self, name: str, sha256: str) -> bool:
        with self._lock:
            try:
                row = self._db.execute("SELECT 1 FROM processed WHERE name = ? AND sha256 = ?",
                                       (name, sha256)).fetchone()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read the PM ledger {self.path}: {exc}") from exc
        return row is not None

    def add(self, name: str, sha256: str, size: int, readings: int, refused: int) -> None:
        with self._lock:
            try:
                with self._db:
                    self._db.execute(
                        "INSERT OR REPLACE INTO processed VALUES (?, ?, ?, ?, ?, ?)",
                        (name, sha256, size, time.time(), readings, refused))
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot write the PM ledger {self.path}: {exc}") from exc

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
