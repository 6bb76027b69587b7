"""Free text: control characters are refused, named with their position; the rest is kept;
formula-like cells are neutralised for spreadsheets."""

from __future__ import annotations

import re

import pytest

from core.text import check_text, control_character, neutralise


@pytest.mark.parametrize(("value", "found"), [
    ("Huayuan\x00Rd", "U+0000 at position 8"),
    ("\x1b[31mred", "U+001B at position 1"),
    ("tab\there", "U+0009 at position 4"),
    ("del\x7f", "U+007F at position 4"),
    ("c1\x85", "U+0085 at position 3"),
    ("non\uffff", "U+FFFF at position 4"),
])
def test_control_characters_are_named(value, found):
    assert found in control_character(value)
    with pytest.raises(ValueError, match=re.escape(f"the note contains the control character {found}")):
        check_text(value, "the note")


@pytest.mark.parametrize("value", ["华阳路基站", "=HYPERLINK(\"x\")", "O'Brien & Sons", "émoji 📡", ""])
def test_ordinary_text_is_kept(value):
    assert control_character(value) is None
    assert check_text(value) == value


def test_neutralise_prefixes_formula_text_only():
    assert [neutralise(v) for v in ("=x", "+x", "-x", "@x", "\tx", "\rx", "x", 5, -5, None)] == [
        "'=x", "'+x", "'-x", "'@x", "'\tx", "'\rx", "x", 5, -5, None]
