"""Errors of the connectors package (MQTT, InfluxDB, spool, dead letter).

    ConnectorError
    ├── InvalidIdentifier       an id does not match docs/contracts.md's pattern
    ├── LineProtocolError       a value cannot be written as line protocol
    ├── WriteError              InfluxDB did not take a batch
    │   ├── WriteRetryable      down, timed out, 5xx, 429, auth: spool and retry later
    │   └── WriteRejected       400/413 for these lines: retrying cannot help
    ├── QueryError              an InfluxQL query failed
    ├── PublishError            the broker could not be reached or did not acknowledge
    ├── SpoolError              the spool cannot take or give back a batch
    │   ├── SpoolFull           the spool reached its size cap
    │   └── SpoolLocked         another live process holds this instance's spool
    └── DeadLetterError         the dead-letter store cannot be opened, read or written

paho, requests, influxdb-client, sqlite3 and OS exceptions are translated into these at
the one place each is used; none leaks out of the package.
"""

from __future__ import annotations

from core.errors import SitetwinError

__all__ = [
    "ConnectorError",
    "DeadLetterError",
    "InvalidIdentifier",
    "LineProtocolError",
    "PublishError",
    "QueryError",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "WriteError",
    "WriteRejected",
    "WriteRetryable",
]


class ConnectorError(SitetwinError):
    """Root of the connectors package's errors."""


class InvalidIdentifier(ConnectorError, ValueError):
    """An identifier does not match ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``."""


class LineProtocolError(ConnectorError, ValueError):
    """A measurement, tag or field cannot be represented in line protocol."""


class WriteError(ConnectorError):
    """InfluxDB did not accept a write."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WriteRetryable(WriteError):
    """The write may succeed later (server down, overloaded, misconfigured auth)."""


class WriteRejected(WriteError):
    """The server refused the data itself (HTTP 400/413); retrying cannot help."""


class QueryError(ConnectorError):
    """An InfluxQL query failed or could not be sent."""


class PublishError(ConnectorError):
    """The broker could not be reached, or did not acknowledge in time."""


class SpoolError(ConnectorError):
    """The on-disk spool cannot store or return a batch (disk full, permissions)."""


class SpoolFull(SpoolError):
    """The spool reached ``spool.max_bytes``; the collector stops acknowledging."""


class SpoolLocked(SpoolError):
    """Another live process holds the lock of this instance's spool (a duplicate
    ``--instance`` or a peer adopting it); the caller waits or skips it."""


class DeadLetterError(ConnectorError):
    """The dead-letter store failed (disk full, corrupt file).  The collector counts and
    logs it and goes on: a rejected message must never hold back valid readings."""
