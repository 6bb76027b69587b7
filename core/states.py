"""The two vocabularies of state every package shares: a site's lifecycle and a flag's status.

They live in the kernel, not with the code that moves them (``twin.lifecycle`` holds the
state machine, ``rules.flag`` the flag book), because the pure rules, the simulator,
the notifier and the dashboards read them without that code or its database.  Both are
``StrEnum``: a member equals its text (``State.ON_AIR == "on_air"``), so frames and JSON
that carry the text compare as they are.  SQL gets ``.value``, the plain text.
"""

from __future__ import annotations

import enum

__all__ = ["ON_AIR_STATES", "FlagStatus", "State"]


class State(enum.StrEnum):
    """Lifecycle states of a site, in order (docs/contracts.md section 2)."""

    PLANNED = "planned"
    SITE_SECURED = "site_secured"
    APPROVED = "approved"
    UNDER_CONSTRUCTION = "under_construction"
    POWER_CONNECTED = "power_connected"
    ON_AIR = "on_air"
    RELOCATING = "relocating"
    DECOMMISSIONED = "decommissioned"
    BLOCKED = "blocked"


# The states in which a site should transmit: one that is silent then is offline.
ON_AIR_STATES: tuple[State, ...] = (State.ON_AIR, State.RELOCATING)


class FlagStatus(enum.StrEnum):
    """A flag's status: ``open`` until a person decides (``confirmed``, ``dismissed``) or the
    engine resolves it once the condition has been clear for the hold-off."""

    OPEN = "open"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"
    RESOLVED = "resolved"
