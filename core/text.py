"""Free text as people type it (CSV cells, ``--note``, ``--by``) and as spreadsheets read it.

In: control characters are refused.  Out: a cell that a spreadsheet would run as a
formula is neutralised (``neutralise``).

C0 and C1 controls (NUL, ESC, ...), DEL and the non-characters U+FFFE/U+FFFF
have no place in a name, a note or a reason.  Stored, a NUL in a site name later
crashed the XLSX reports (XML 1.0 cannot carry it), and an escape sequence
rewrites a terminal that lists it.  Refused where the text enters, naming the
character and its position; never silently removed.

A text cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage
return) would run as a formula in Excel or LibreOffice ("CSV injection"): every
file a person may open in a spreadsheet (the report tables of ``exports.tables``,
the import's rejects file of ``twin.imports``) writes such a cell with a leading
``'``, which spreadsheets show as plain text.  Here, in the kernel, because the
registry writes such a file too and must not import the report writer.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FORMULA_PREFIXES", "check_text", "control_character", "neutralise"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ufffe\uffff]")

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def control_character(value: str) -> str | None:
    """A description of the first control character in ``value``, or ``None``."""
    m = _CONTROL.search(value)
    if m is None:
        return None
    return f"the control character U+{ord(m.group()):04X} at position {m.start() + 1}"


def check_text(value: str, what: str = "text") -> str:
    """``value`` unchanged, or ``ValueError`` naming ``what`` and the control character."""
    found = control_character(value)
    if found:
        raise ValueError(f"{what} contains {found}")
    return value


def neutralise(value: Any) -> Any:
    """Prefix a text value that a spreadsheet would read as a formula with ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
