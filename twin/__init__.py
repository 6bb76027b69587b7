"""The site twin: registry, lifecycle state machine, live state, imports and reports in SQL.

``open_store(url)`` opens (creating or upgrading) the registry; ``twin.models``
holds the tables; ``twin.lifecycle`` the states, moves and guards;
``twin.live`` the live state fed by the collector.
"""

from twin.errors import ImportFailed, StoreError, TransitionNotAllowed, TwinError, UnknownSite
from twin.lifecycle import State, state_at, transition
from twin.store import Store, open_store

__all__ = [
    "ImportFailed",
    "State",
    "Store",
    "StoreError",
    "TransitionNotAllowed",
    "TwinError",
    "UnknownSite",
    "open_store",
    "state_at",
    "transition",
]
