"""Printing results: text for people, ``--json`` for scripts, progress on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Self

from core.jsonout import to_json

__all__ = ["Progress", "emit", "to_json"]


def emit(args: Any, data: Any, text: Callable[[Any], str] | str | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, otherwise as ``text`` (a string or a renderer)."""
    if getattr(args, "json", False):
        sys.stdout.write(to_json(data) + "\n")
        return
    if text is None:
        out = to_json(data)
    elif callable(text):
        out = text(data)
    else:
        out = text
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")


class Progress:
    """A throttled progress line on stderr: ``label: done/total (rate/s)``.

    Goes to stderr so that ``--json`` output on stdout stays clean; redraws in
    place on a terminal and prints a line every few seconds otherwise.
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "", stream=None,
                 enabled: bool = True, interval: float | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.started = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(final=False)

    def close(self) -> None:
        self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        line = f"{self.label}: {self.done}{of}{unit}{pct} ({rate:,.0f}/s, {elapsed:.1f}s)"
        end = "\n" if (final or not self.tty) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
