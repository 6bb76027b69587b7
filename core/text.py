"""Free text as people type it (CSV cells, ``--note``, ``--by``): control characters refused.

C0 and C1 controls (NUL, ESC, ...), DEL and the non-characters U+FFFE/U+FFFF
have no place in a name, a note or a reason.  Stored, a NUL in a site name later
crashed the XLSX reports (XML 1.0 cannot carry it), and an escape sequence
rewrites a terminal that lists it.  Refused where the text enters, naming the
character and its position; never silently removed.
"""

from __future__ import annotations

import re

__all__ = ["check_text", "control_character"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ufffe\uffff]")


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
