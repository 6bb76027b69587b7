"""The unified social credit code (统一社会信用代码) of an organisation, GB 32100-2015.

Eighteen characters from a 31-character alphabet (digits and capital letters
without I, O, Z, S, V): the registering authority, the kind of organisation,
the six-digit administrative division, the nine-character organisation code,
and a check character.  The check character makes a mistyped code fail: it is
``31 - (sum of value * 3**i mod 31, i = 0..16) mod 31`` (31 written as ``0``).
Only the shape and the check are verified here, not that the code is registered.
"""

from __future__ import annotations

import re

__all__ = ["ALPHABET", "check_character", "check_credit_code"]

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, 16, ...
_SHAPE = re.compile(r"^[0-9A-HJ-NP-RTUW-Y]{2}[0-9]{6}[0-9A-HJ-NP-RTUW-Y]{10}$", re.ASCII)


def check_character(first17: str) -> str:
    """The check character of the first 17 characters of a code."""
    if len(first17) != 17 or any(c not in _VALUE for c in first17):
        raise ValueError(f"{first17!r} is not 17 characters of the code's alphabet")
    total = sum(_VALUE[c] * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def check_credit_code(text: str) -> str:
    """``text`` as a valid code (trimmed); ``ValueError`` with the reason otherwise.

    Lower-case letters are refused, not upper-cased: the code is printed on the
    business licence in capitals, and a copied code should be copied as it is.
    """
    code = text.strip()
    if len(code) != 18:
        raise ValueError(f"{text.strip()!r} is not a unified social credit code"
                         f" (18 characters, not {len(code)})")
    if not _SHAPE.match(code):
        bad = sorted({c for c in code if c not in _VALUE})
        if any(c.islower() for c in bad):
            why = "letters must be capitals"
        elif bad:
            why = f"characters {' '.join(bad)} are not used in such codes"
        else:
            why = "characters 3-8 must be digits (the administrative division)"
        raise ValueError(f"{code!r} is not a unified social credit code: {why}")
    expected = check_character(code[:17])
    if code[17] != expected:
        raise ValueError(f"{code!r} fails its check character (expected {expected!r} at the end;"
                         " a character is probably mistyped)")
    return code
