"""Who may do what: one table from role to allowed actions, the only place that decides.

Every route declares the one action it needs (``Depends(require("flags.review"))``,
see ``web.auth``); a route without a declaration is unreachable and fails the
route x role test.  ``public`` actions need no login (the login page, health,
the API schema); everything else needs an account whose role lists the action.

The roles follow the people sitetwin serves (issue 13): the market regulator
reviews bills and overcharging flags; the grid company reads reservations and
power; the NOC reads sites and operational alarms; a viewer reads, never writes;
an admin manages accounts, imports and lifecycle moves and reads the audit log,
but does not decide reviews (separation of duties).
"""

from __future__ import annotations

from types import MappingProxyType

from twin.accounts import ROLES

__all__ = ["ACTIONS", "PERMISSIONS", "PUBLIC", "REVIEWABLE_KINDS", "ROLES", "allowed"]

PUBLIC = "public"

_READ = frozenset({"sites.read", "flags.read", "reservations.read", "tariffs.read",
                   "bills.read", "reports.read", "account.self"})

PERMISSIONS: MappingProxyType[str, frozenset[str]] = MappingProxyType({
    "regulator": frozenset({"sites.read", "flags.read", "flags.review", "tariffs.read",
                            "bills.read", "reports.read", "account.self"}),
    "grid": frozenset({"sites.read", "flags.read", "reservations.read", "reports.read",
                       "account.self"}),
    "noc": frozenset({"sites.read", "flags.read", "alarms.read", "flags.ack", "pipeline.read",
                      "account.self"}),
    "viewer": _READ | {"alarms.read", "pipeline.read"},
    "admin": _READ | {"alarms.read", "pipeline.read", "sites.transition", "imports.write", "users.manage",
                      "audit.read"},
})

ACTIONS: frozenset[str] = frozenset().union(*PERMISSIONS.values()) | {PUBLIC}

# The flags a regulator decides on: the bill kinds.  Other kinds are operational.
REVIEWABLE_KINDS = ("overcharging", "overbilling")

assert set(PERMISSIONS) == set(ROLES), "every role needs a row in the permission table"


def allowed(role: str | None, action: str) -> bool:
    """Whether ``role`` (``None``: not logged in) may take ``action``."""
    if action == PUBLIC:
        return True
    return role is not None and action in PERMISSIONS.get(role, frozenset())
