"""Errors of the exports package: what leaves the registry for files and InfluxDB.

    ExportError                    root (a core.errors.UserError: the person chose the file)
    └── ReportFileError            a report file cannot be written: its suffix names no
                                   format (``.csv``, ``.xlsx``), or the file system refused it

A site whose ``site_state`` line cannot be written (a county name that line
protocol cannot carry) is not an exception: it is logged and left out, so one odd
name does not hide every site.
"""

from __future__ import annotations

from core.errors import UserError

__all__ = ["ExportError", "ReportFileError"]


class ExportError(UserError):
    """Root of the exports' errors."""


class ReportFileError(ExportError):
    """A report file cannot be written; the message names the file and why."""
