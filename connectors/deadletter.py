"""The dead-letter store: rejected messages, with their reason, kept locally and bounded.

A SQLite file (WAL) beside the other local state, written in batches by the
collector's writer thread - never one transaction per message.  Raw payloads
are kept up to a size cap (the original length is recorded).

Bounded by size (``dead_letter.max_bytes``) and age (``dead_letter.max_age``):
one device sending junk must not fill the disk (issue 11: at 16 KiB a message,
nothing pruned, the disk filled and then every batch was held).  Past the size
cap the payload bodies of the oldest rows go first (reason, detail, topic and
length stay), then the oldest rows themselves; rows past the age go whole.  A
removed row is still counted: ``counts()`` adds the pruned per reason, so the
totals never go down.  The check is two PRAGMAs after each batch (used pages x
page size); room for a batch is made before it is inserted and freed pages are
reused, so the file stays under the cap, and the WAL is checkpointed and
truncated after each batch.

Every SQLite or OS error becomes ``DeadLetterError``.  The store opens lazily
and reopens after a failure, so a store that cannot be opened at start-up (a
full disk) does not stop the collector; the collector counts and logs the
failure and writes the valid readings anyway.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from connectors.errors import DeadLetterError

T = TypeVar("T")
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
CREATE TABLE IF NOT EXISTS pruned (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""


# (count per reason, delete) pairs for the rows that pruning removes
_OLDER_THAN = ("SELECT reason, COUNT(*) FROM rejected WHERE received_at < ? GROUP BY reason",
               "DELETE FROM rejected WHERE received_at < ?")
_OLDEST = ("SELECT reason, COUNT(*) FROM (SELECT reason FROM rejected ORDER BY id LIMIT ?) GROUP BY reason",
           "DELETE FROM rejected WHERE id IN (SELECT id FROM rejected ORDER BY id LIMIT ?)")


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
    payload_dropped: bool = False  # the body was pruned to keep the store under its size cap

    def as_dict(self) -> dict[str, Any]:
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
            "payload_dropped": self.payload_dropped,
        }


class DeadLetterStore:
    """Rejected messages in a SQLite file; thread-safe, batched, bounded."""

    def __init__(self, path: str | Path, *, max_payload_bytes: int = 16 * 1024,
                 max_bytes: int = 256 * 1024**2, max_age: float = 30 * 86400.0) -> None:
        self.path = Path(path)
        self.max_payload_bytes = max_payload_bytes
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._last_age_prune = 0.0

    # -- connection ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """The open connection (opened on first use and after a failure); holds ``_lock``."""
        if self._db is None:
            db = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # add_many checkpoints and truncates the WAL after each batch (below), so the
                # WAL holds one batch at most; this bounds what a checkpoint leaves behind.
                db.execute("PRAGMA journal_size_limit=" + str(int(max(64 * 1024, self.max_bytes // 16))))
                db.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                if db is not None:
                    db.close()
                raise DeadLetterError(f"cannot open the dead-letter store {self.path}: {exc}") from exc
            self._db = db
        return self._db

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` under the lock, SQLite and OS errors mapped to ``DeadLetterError``."""
        with self._lock:
            db = self._conn()
            try:
                return fn(db)
            except (sqlite3.Error, OSError) as exc:
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                    self._reset_locked()  # a corrupt or closed file: reopen next time
                raise DeadLetterError(f"cannot {what} the dead-letter store {self.path}: {exc}") from exc

    def _reset_locked(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # -- writing -------------------------------------------------------------------------------
    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store letters in one transaction, then prune to the caps; returns how many."""
        now = time.time()
        cap = self.max_payload_bytes
        rows: list[tuple[Any, ...]] = [
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
        room = sum(len(r[5]) + len(r[4]) + 200 for r in rows)
        if self.max_bytes and room > self.max_bytes // 2:
            # A batch that alone would take half the store keeps no bodies.
            rows = [(*r[:5], None, *r[6:]) for r in rows]
            room = sum(len(r[4]) + 200 for r in rows)

        def insert(db: sqlite3.Connection) -> None:
            # Make room first, so the file never grows past the cap, then insert.
            self._prune_locked(db, now, room)
            with db:
                db.executemany(
                    "INSERT INTO rejected (received_at, source, topic, reason, detail, payload,"
                    " payload_bytes, truncated, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            # Batches of rejects are rare; without this the WAL grew to a few MiB before
            # SQLite's own checkpoint (1000 pages) and filled a 1 MiB disk under the cap.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        self._run("write", insert)
        return len(rows)

    def prune(self, now: float | None = None) -> None:
        """Apply the age and size caps now (``add_many`` does this after each batch)."""
        self._last_age_prune = 0.0
        self._run("prune", lambda db: self._prune_locked(db, time.time() if now is None else now))

    def used_bytes(self) -> int:
        """Bytes the rows take in the file (freed pages excluded)."""
        return self._run("read", self._used)

    @staticmethod
    def _used(db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _prune_locked(self, db: sqlite3.Connection, now: float, room: int = 0) -> None:
        """Age cap, then size cap leaving ``room`` bytes for rows about to be inserted."""
        if self.max_age and now - self._last_age_prune >= 60.0:
            self._last_age_prune = now
            with db:
                self._forget(db, _OLDER_THAN, (now - self.max_age,))
        if not self.max_bytes or self._used(db) + room <= self.max_bytes:
            return
        target = self.max_bytes * 0.8 - room  # hysteresis: not a prune after every batch
        # Payload bodies first, oldest first: the reason and counts stay.
        while self._used(db) > target:
            with db:
                changed = db.execute(
                    "UPDATE rejected SET payload = NULL WHERE id IN (SELECT id FROM rejected"
                    " WHERE payload IS NOT NULL ORDER BY id LIMIT 500)").rowcount
            if not changed:
                break
        # Then whole rows, oldest first, counted in ``pruned``.
        while self._used(db) > target:
            with db:
                if not self._forget(db, _OLDEST, (2000,)):
                    break

    @staticmethod
    def _forget(db: sqlite3.Connection, which: tuple[str, str], args: tuple[Any, ...]) -> int:
        """Delete the rows ``which`` selects, adding their counts to ``pruned``."""
        count_sql, delete_sql = which
        counts = db.execute(count_sql, args).fetchall()
        if not counts:
            return 0
        db.executemany("INSERT INTO pruned (reason, count) VALUES (?, ?)"
                       " ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count", counts)
        return db.execute(delete_sql, args).rowcount

    def add(self, letter: DeadLetter) -> None:
        self.add_many([letter])

    # -- reading -------------------------------------------------------------------------------
    def contains(self, topic: str | None, payload: bytes) -> bool:
        """Whether this exact message is stored already (a broker redelivery)."""
        digest = payload_digest(topic, payload)
        row = self._run("read", lambda db: db.execute(
            "SELECT 1 FROM rejected WHERE digest = ? LIMIT 1", (digest,)).fetchone())
        return row is not None

    def list(self, *, limit: int = 100, reason: str | None = None, since: float | None = None,
             source: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        sql = ("SELECT id, received_at, source, topic, reason, detail, payload, payload_bytes, truncated"
               " FROM rejected WHERE 1=1")
        args: list[Any] = []
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
        rows = self._run("read", lambda db: db.execute(sql, args).fetchall())
        return [
            DeadLetter(id=r[0], received_at=r[1], source=r[2], topic=r[3], reason=r[4], detail=r[5],
                       payload=bytes(r[6] or b""), payload_bytes=r[7], truncated=bool(r[8]),
                       payload_dropped=r[6] is None and bool(r[7]))
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """Rejections per reason since the store began, pruned rows included."""
        def read(db: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for reason, n in db.execute("SELECT reason, COUNT(*) FROM rejected GROUP BY reason"):
                out[reason] = out.get(reason, 0) + n
            for reason, n in db.execute("SELECT reason, count FROM pruned"):
                out[reason] = out.get(reason, 0) + n
            return dict(sorted(out.items()))

        return self._run("read", read)

    def pruned(self) -> dict[str, int]:
        """Rows removed by the caps, per reason."""
        return dict(sorted(self._run("read", lambda db: db.execute(
            "SELECT reason, count FROM pruned").fetchall())))

    def total(self) -> int:
        return sum(self.counts().values())

    def close(self) -> None:
        with self._lock:
            self._reset_locked()
