"""The dead-letter store: every rejected message, with its reason, kept locally.

A SQLite file (WAL) beside the other local state, written in batches by the
collector's writer thread - never one transaction per message.  Raw payloads
are kept up to a size cap (the original length is recorded).  Rows are never
deleted by sitetwin; an operator may prune them with SQL.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from connectors.errors import ConnectorError

__all__ = ["DeadLetter", "DeadLetterStore", "payload_digest"]


def payload_digest(topic: str | None, payload: bytes) -> str:
    """Identity of a message, to recognise a redelivery of one already stored."""
    return hashlib.blake2b((topic or "").encode() + b"\0" + payload, digest_size=16).hexdigest()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    topic TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB,
    payload_bytes INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_digest ON rejected(digest);
CREATE INDEX IF NOT EXISTS rejected_reason ON rejected(reason);
CREATE INDEX IF NOT EXISTS rejected_time ON rejected(received_at);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected message or line, as stored."""

    reason: str
    detail: str
    payload: bytes
    topic: str | None = None
    source: str = "mqtt"
    received_at: float = 0.0
    id: int | None = None
    payload_bytes: int | None = None
    truncated: bool = False

    def as_dict(self) -> dict:
        text = self.payload.decode("utf-8", errors="backslashreplace")
        return {
            "id": self.id,
            "received_at": datetime.fromtimestamp(self.received_at, UTC).isoformat().replace("+00:00", "Z"),
            "source": self.source,
            "topic": self.topic,
            "reason": self.reason,
            "detail": self.detail,
            "payload": text,
            "payload_bytes": self.payload_bytes,
            "truncated": self.truncated,
        }


class DeadLetterStore:
    """Rejected messages in a SQLite file; thread-safe, batched."""

    def __init__(self, path: str | Path, *, max_payload_bytes: int = 16 * 1024) -> None:
        self.path = Path(path)
        self.max_payload_bytes = max_payload_bytes
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise ConnectorError(f"cannot open the dead-letter store {self.path}: {exc}") from exc

    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store letters in one transaction; returns how many."""
        now = time.time()
        cap = self.max_payload_bytes
        rows = [
            (
                letter.received_at or now,
                letter.source,
                letter.topic,
                letter.reason,
                letter.detail,
                letter.payload[:cap],
                len(letter.payload),
                int(len(letter.payload) > cap),
                payload_digest(letter.topic, letter.payload),
            )
            for letter in letters
        ]
        if not rows:
            return 0
        with self._lock:
            try:
                with self._db:
                    self._db.executemany(
                        "INSERT INTO rejected (received_at, source, topic, reason, detail, payload,"
                        " payload_bytes, truncated, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
            except sqlite3.Error as exc:
                raise ConnectorError(f"cannot write the dead-letter store {self.path}: {exc}") from exc
        return len(rows)

    def contains(self, topic: str | None, payload: bytes) -> bool:
        """Whether this exact message is stored already (a broker redelivery)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM rejected WHERE digest = ? LIMIT 1",
                                   (payload_digest(topic, payload),)).fetchone()
        return row is not None

    def add(self, letter: DeadLetter) -> None:
        self.add_many([letter])

    def list(self, *, limit: int = 100, reason: str | None = None, since: float | None = None,
             source: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        sql = ("SELECT id, received_at, source, topic, reason, detail, payload, payload_bytes, truncated"
               " FROM rejected WHERE 1=1")
        args: list = []
        if reason:
            sql += " AND reason = ?"
            args.append(reason)
        if source:
            sql += " AND source = ?"
            args.append(source)
        if since is not None:
            sql += " AND received_at >= ?"
            args.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            DeadLetter(id=r[0], received_at=r[1], source=r[2], topic=r[3], reason=r[4], detail=r[5],
                       payload=bytes(r[6] or b""), payload_bytes=r[7], truncated=bool(r[8]))
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """Number of stored rejections per reason."""
        with self._lock:
            rows = self._db.execute("SELECT reason, COUNT(*) FROM rejected GROUP BY reason").fetchall()
        return dict(sorted(rows))

    def total(self) -> int:
        return sum(self.counts().values())

    def close(self) -> None:
        with self._lock:
            self._db.close()
