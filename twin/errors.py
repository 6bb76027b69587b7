"""Errors of the twin package: registry, lifecycle, imports.

    TwinError                      root (a sitetwin.errors.SitetwinError)
    ├── StoreError                 the registry database is unreachable or its schema is unusable
    ├── UnknownSite                a site id that is not in the registry
    ├── TransitionNotAllowed       a lifecycle move refused: names site, state, move and reason
    │   └── StateChanged           another move of the site was committed while this one was checked
    ├── ImportFailed               a CSV import refused: carries every bad row (line, column, reason)
    └── AccountError               an account or token change refused (bad role, weak password, duplicate)
        └── UnknownUser            a user name (or token id) that is not in the registry

SQLAlchemy and driver exceptions never leave the package: the store turns
them into ``StoreError`` at one seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import SitetwinError

__all__ = [
    "AccountError",
    "ImportFailed",
    "RowError",
    "StateChanged",
    "StoreError",
    "TransitionNotAllowed",
    "TwinError",
    "UnknownSite",
    "UnknownUser",
]


class TwinError(SitetwinError):
    """Root of the twin's errors."""


class StoreError(TwinError):
    """The registry database could not be opened, upgraded or written."""


class UnknownSite(TwinError):
    """A site id that is not in the registry."""

    def __init__(self, site_id: str) -> None:
        super().__init__(f"unknown site {site_id!r}")
        self.site_id = site_id


class TransitionNotAllowed(TwinError):
    """A lifecycle move that the transition table or a guard refuses; nothing changed."""

    def __init__(self, site_id: str, state: str, target: str, reason: str) -> None:
        super().__init__(f"site {site_id!r} cannot go from {state} to {target}: {reason}")
        self.site_id = site_id
        self.state = state
        self.target = target
        self.reason = reason


class StateChanged(TransitionNotAllowed):
    """The site's state or history changed between reading it and writing the move."""

    def __init__(self, site_id: str, state: str, target: str) -> None:
        super().__init__(site_id, state, target,
                         f"another move of the site was recorded meanwhile (it is no longer"
                         f" {state} as this move was checked against); nothing changed: look at"
                         f" its history and try again")


@dataclass(frozen=True, slots=True)
class RowError:
    """One reason one CSV row was refused (``line`` counts the header as line 1)."""

    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.reason}"


class ImportFailed(TwinError):
    """A CSV import that imported nothing; ``errors`` lists every bad row."""

    def __init__(self, path: str, errors: Sequence[RowError], *, header: str | None = None) -> None:
        self.path = path
        self.errors = list(errors)
        if header:
            msg = f"{path}: {header}"
        else:
            first = "; ".join(str(e) for e in self.errors[:3])
            more = f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
            msg = (f"{path}: {len(self.errors)} invalid row(s), nothing imported: {first}{more}"
                   " (use --skip-invalid to import the valid rows)")
        super().__init__(msg)


class AccountError(TwinError):
    """An account or API-token change that was refused; nothing changed."""


class UnknownUser(AccountError):
    """A user name (or token id) that is not in the registry."""

    def __init__(self, what: str) -> None:
        super().__init__(f"unknown {what}")
        self.what = what
