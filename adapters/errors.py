"""Errors of the adapters package (PM files, the write endpoint).

    AdapterError
    ├── PmFileError          a PM file cannot be read as TS 32.435 (``reason`` says why)
    ├── CellsFileError       the cells file (cell_id, site_id, band) is unreadable or bad
    ├── LedgerError          the ledger of processed files cannot be read or written
    ├── ListenerError        the write endpoint cannot start (address in use, bad address)
    ├── DevicesFileError     the devices file or a device profile is unreadable or bad
    └── DeviceError          one poll of one device failed (``reason``: connection, timeout,
                             exception, decode); the gateway counts it and backs off

lxml's, pymodbus's, sqlite3's and the socket's exceptions are translated into these where
each is used; ``connectors.errors.PublishError`` passes through unchanged (the
broker did not acknowledge: the caller keeps the data and tries again).
"""

from __future__ import annotations

from core.errors import SitetwinError

__all__ = [
    "AdapterError",
    "CellsFileError",
    "DeviceError",
    "DevicesFileError",
    "LedgerError",
    "ListenerError",
    "PmFileError",
]


class AdapterError(SitetwinError):
    """Root of the adapters package's errors."""


class PmFileError(AdapterError):
    """A PM file is not a readable TS 32.435 ``measCollecFile``; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CellsFileError(AdapterError):
    """The cells file is missing, unreadable, or has a bad row."""


class LedgerError(AdapterError):
    """The ledger of processed PM files cannot be opened or written."""


class ListenerError(AdapterError):
    """The InfluxDB-compatible write endpoint cannot start."""


class DevicesFileError(AdapterError):
    """The gateway's devices file or a profile it names is missing or invalid."""


class DeviceError(AdapterError):
    """One poll of one device failed; ``reason`` is connection, timeout, exception or decode."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
