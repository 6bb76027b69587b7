"""The collector's own counters, written to InfluxDB as measurement ``sitetwin_pipeline``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from connectors.lineprotocol import line

__all__ = ["PipelineMetrics"]


@dataclass
class PipelineMetrics:
    """Monotonic counters (since start) plus per-interval batch latency.

    Counters are bumped from the MQTT thread and the writer thread, each
    owning different counters, so plain integer increments are enough.
    """

    collector: str
    received_msgs: int = 0
    received_points: int = 0
    written_points: int = 0
    rejected_msgs: int = 0
    unknown_fields: int = 0
    spooled_points: int = 0
    drained_points: int = 0
    write_rejected_points: int = 0
    pending_acks: int = 0
    dead_letter_failed: int = 0  # rejected messages the dead-letter store could not take
    writer_errors: int = 0  # unexpected errors in the writer loop (the batch is retried)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    _latencies_ms: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def batch_done(self, latency_s: float) -> None:
        with self._lock:
            self._latencies_ms.append(latency_s * 1000.0)

    def snapshot(self, *, spool_bytes: int, spool_batches: int,
                 reset: bool = True) -> dict[str, float | int]:
        """Current counters; the latency figures cover the batches since the last reset."""
        with self._lock:
            lat = self._latencies_ms
            if reset:
                self._latencies_ms = []
        fields: dict[str, float | int] = {
            "received_msgs": self.received_msgs,
            "received_points": self.received_points,
            "written_points": self.written_points,
            "rejected_msgs": self.rejected_msgs,
            "unknown_fields": self.unknown_fields,
            "spooled_points": self.spooled_points,
            "drained_points": self.drained_points,
            "write_rejected_points": self.write_rejected_points,
            "spool_bytes": spool_bytes,
            "spool_batches": spool_batches,
            "pending_acks": self.pending_acks,
            "dead_letter_failed": self.dead_letter_failed,
            "writer_errors": self.writer_errors,
            "batch_latency_ms_avg": (sum(lat) / len(lat)) if lat else 0.0,
            "batch_latency_ms_max": max(lat) if lat else 0.0,
        }
        for reason, count in self.rejected_by_reason.items():
            fields[f"rejected_{reason}"] = count
        return fields

    def point(self, *, spool_bytes: int, spool_batches: int, now: float | None = None) -> str:
        """The ``sitetwin_pipeline`` line for now."""
        fields = self.snapshot(spool_bytes=spool_bytes, spool_batches=spool_batches)
        ts_ns = int((now if now is not None else time.time()) * 1e9)
        return line("sitetwin_pipeline", {"collector": self.collector}, fields, ts_ns)
