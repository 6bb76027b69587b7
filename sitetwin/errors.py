"""The shell's names for the kernel's error root (see ``core.errors``)."""

from __future__ import annotations

from core.errors import SitetwinError, UserError

__all__ = ["SitetwinError", "UserError"]
