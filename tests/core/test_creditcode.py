"""The unified social credit code's check character (GB 32100-2015)."""

from __future__ import annotations

import pytest

from core.creditcode import ALPHABET, check_character, check_credit_code

# The standard's own example, and codes printed on public business licences.
VALID = ["91350100M000100Y43", "914403001922038216", "91110000802100433B", "9144030071526726XG"]


@pytest.mark.parametrize("code", VALID)
def test_valid_codes_pass(code):
    assert check_credit_code(f" {code} ") == code


@pytest.mark.parametrize("code", VALID)
def test_every_single_character_change_is_caught(code):
    # The check is a weighted sum mod 31 with weights prime to 31: any one substitution fails.
    for i in range(18):
        for c in ALPHABET:
            if c == code[i] or (2 <= i <= 7 and not c.isdigit()):
                continue
            with pytest.raises(ValueError, match="check character"):
                check_credit_code(code[:i] + c + code[i + 1:])


@pytest.mark.parametrize(("code", "reason"), [
    ("91350100M000100Y4", "18 characters"),
    ("91350100M000100Y433", "18 characters"),
    ("91350100M000100I43", "not used"),
    ("91350100M000100O43", "not used"),
    ("91350100m000100y43", "capitals"),
    ("9135010AM000100Y43", "must be digits"),
    ("91350100M000100Y44", "expected '3'"),
])
def test_invalid_codes_are_refused_with_a_reason(code, reason):
    with pytest.raises(ValueError, match=reason):
        check_credit_code(code)


def test_check_character_of_the_standard_example():
    assert check_character("91350100M000100Y4") == "3"
    with pytest.raises(ValueError):
        check_character("short")
