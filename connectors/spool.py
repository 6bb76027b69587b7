"""The on-disk spool: batches that could not reach InfluxDB yet, in order, crash-safe.

Each batch is one file ``<sequence>.lp`` written as ``.tmp``, fsynced, then
renamed (a rename is atomic), and the directory fsynced: after a crash a batch
is either wholly present or absent, and absent only if it was never
acknowledged to the broker.  The drain replays files in sequence order and
deletes each only after InfluxDB accepted it.  A stray ``.tmp`` from a crash
is removed on open (its messages were not acknowledged, so the broker
redelivers them).

``put`` raises ``SpoolFull`` at ``max_bytes`` and ``SpoolError`` when the disk
refuses; in both cases nothing was stored and the caller must not acknowledge.

Spools live under one root, a directory per instance (``<root>/<client_id>``),
each guarded by ``InstanceLock`` (``flock`` on ``<dir>/.lock``, held while the
instance runs, released by the kernel when its process dies however it dies).
The batches in a spool were acknowledged to the broker already, so a spool
whose owner is gone would hold them forever (issue 11: 3 000 readings stranded
by a retired instance): a live collector takes the free lock of a peer's
directory and drains it (``Collector`` adoption).  ``flock`` is per host (and
per NFS server with care): peers on other hosts do not see each other's spools.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import threading
from pathlib import Path

from connectors.errors import SpoolError, SpoolFull, SpoolLocked

__all__ = ["RETIRED_MARK", "InstanceLock", "Spool", "peer_directories"]

RETIRED_MARK = "retired"  # file in an instance's directory: its broker session was ended


class InstanceLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>/.lock``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock; raises ``SpoolLocked`` if a live process holds it."""
        if self._fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open the lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"{self.directory} is held by another live process") from None
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is for people; the lock is what counts
        self._fd = fd

    def try_acquire(self) -> bool:
        try:
            self.acquire()
        except SpoolLocked:
            return False
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


def peer_directories(root: str | Path, own: str) -> list[Path]:
    """Instance directories under ``root`` other than ``own``, by name."""
    try:
        return sorted(d for d in Path(root).iterdir() if d.is_dir() and d.name != own)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolError(f"cannot list the spool root {root}: {exc.strerror or exc}") from exc


class Spool:
    """A directory of line-protocol batch files, oldest first."""

    def __init__(self, path: str | Path, *, max_bytes: int = 1024**3, fsync: bool = True) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for stray in self.path.glob("*.tmp"):
                stray.unlink()
            files = sorted(self.path.glob("*.lp"))
            self._sizes = {f: f.stat().st_size for f in files}
        except OSError as exc:
            raise SpoolError(f"cannot open the spool {self.path}: {exc}") from exc
        self._bytes = sum(self._sizes.values())
        self._next = int(files[-1].stem) + 1 if files else 1

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def batches(self) -> int:
        return len(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def has_room(self, size: int = 0) -> bool:
        return self._bytes + size <= self.max_bytes

    def put(self, body: builtins.bytes) -> Path:
        """Store one batch durably; raises ``SpoolFull`` or ``SpoolError`` if it cannot."""
        with self._lock:
            if self._bytes + len(body) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.path} is full ({self._bytes} of {self.max_bytes} bytes)"
                )
            final = self.path / f"{self._next:020d}.lp"
            tmp = final.with_suffix(".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    view = memoryview(body)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, final)
                if self.fsync:
                    dfd = os.open(self.path, os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise SpoolError(f"cannot write to the spool {self.path}: {exc.strerror or exc}") from exc
            self._next += 1
            self._sizes[final] = len(body)
            self._bytes += len(body)
            return final

    def oldest(self) -> tuple[Path, builtins.bytes] | None:
        """The oldest batch, without removing it."""
        with self._lock:
            if not self._sizes:
                return None
            first = min(self._sizes)
        try:
            return first, first.read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read {first}: {exc.strerror or exc}") from exc

    def remove(self, batch: Path) -> None:
        """Forget a batch once InfluxDB has it."""
        with self._lock:
            size = self._sizes.pop(batch, 0)
            self._bytes -= size
        try:
            batch.unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot delete {batch}: {exc.strerror or exc}") from exc
