"""The site lifecycle: states, transitions named as verbs, guards, history.

Declared in one place (docs/architecture.md, "The twin")::

    planned -> site_secured -> approved -> under_construction -> power_connected -> on_air
    on_air -> relocating -> decommissioned
    blocked: interrupts any state before on_air (with a reason) and returns to the one it interrupted
             (a site imported as blocked may return to any state before on_air)

Guards, checked on every move:

* no ``on_air`` without having been ``power_connected`` (the history must show it);
* a site that another site replaces becomes ``decommissioned`` only once its
  replacement is ``on_air`` (build the new one first, then take the old one down);
* history is append-only: a move may not be dated before the site's last event.

The current state (``sites.state``) is always the last event's ``to_state``; the
history answers ``state_at(site, ts)``.  A refused move raises
``TransitionNotAllowed`` and changes nothing.

Moves of one site are serialised by a compare-and-set: the move is written as
``UPDATE sites SET state = :new WHERE site_id = :id AND state = :checked`` and
no event newer than the last one read, before its event is inserted.  If
another move committed in between, nothing is written and ``StateChanged`` is
raised.  ``SELECT ... FOR UPDATE`` alone serialised PostgreSQL but not SQLite
(which ignores it): two moves at once there left two events from the same
state and a current state that was not the last event's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, exists, select, update
from sqlalchemy.orm import Session

from core.states import State
from core.text import control_character
from twin.errors import StateChanged, TransitionNotAllowed, UnknownSite

if TYPE_CHECKING:
    from twin.models import LifecycleEvent

__all__ = [
    "PRE_ON_AIR",
    "TRANSITIONS",
    "UNDATED_IMPORT_NOTE",
    "State",
    "Transition",
    "allowed_moves",
    "check_move",
    "history",
    "state_at",
    "transition",
]


# The note of an ``import`` event whose file gave no ``state_since``: the event is dated at
# the import, not when the site really reached the state (reports must not count it as such).
UNDATED_IMPORT_NOTE = "imported; the date this state was reached is unknown"

FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between the operator's machine and ours

PRE_ON_AIR = (State.PLANNED, State.SITE_SECURED, State.APPROVED, State.UNDER_CONSTRUCTION,
              State.POWER_CONNECTED)


@dataclass(frozen=True, slots=True)
class Transition:
    """One legal move: ``verb`` takes a site from ``source`` to ``target``."""

    verb: str
    source: State
    target: State


# The forward moves; ``block`` and ``unblock`` are added below for every pre-on_air state.
TRANSITIONS: tuple[Transition, ...] = (
    Transition("secure_site", State.PLANNED, State.SITE_SECURED),
    Transition("approve", State.SITE_SECURED, State.APPROVED),
    Transition("start_construction", State.APPROVED, State.UNDER_CONSTRUCTION),
    Transition("connect_power", State.UNDER_CONSTRUCTION, State.POWER_CONNECTED),
    Transition("put_on_air", State.POWER_CONNECTED, State.ON_AIR),
    Transition("start_relocation", State.ON_AIR, State.RELOCATING),
    Transition("decommission", State.RELOCATING, State.DECOMMISSIONED),
    *(Transition("block", s, State.BLOCKED) for s in PRE_ON_AIR),
    *(Transition("unblock", State.BLOCKED, s) for s in PRE_ON_AIR),
)

_BY_MOVE = {(t.source, t.target): t for t in TRANSITIONS}


def allowed_moves(state: State | str) -> list[Transition]:
    """The moves the table allows from ``state`` (guards not yet applied)."""
    state = State(state)
    return [t for t in TRANSITIONS if t.source == state]


def _as_utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError("lifecycle times must be timezone-aware (UTC)")
    return ts.astimezone(UTC)


def check_move(site_id: str, state: State, target: State, *, interrupted: State | None,
               was_power_connected: bool, replacement_state: State | None,
               reason: str | None) -> Transition:
    """Pure guard check: the ``Transition`` for ``state -> target``, or ``TransitionNotAllowed``.

    ``interrupted`` is the state a blocked site returns to; ``replacement_state``
    the state (at the move's time) of the site that replaces this one, if any.
    """
    def refuse(why: str) -> TransitionNotAllowed:
        return TransitionNotAllowed(site_id, state.value, target.value, why)

    if state == target:
        raise refuse(f"the site is already {state.value}")
    move = _BY_MOVE.get((state, target))
    if move is None:
        if state == State.BLOCKED:
            raise refuse(f"a blocked site returns to the state it interrupted"
                         f" ({interrupted.value})" if interrupted else
                         "a blocked site returns to a state before on_air")
        if target == State.BLOCKED:
            raise refuse("only a site before on_air can be blocked")
        nexts = ", ".join(f"{t.verb} -> {t.target.value}" for t in allowed_moves(state)
                          if t.verb != "unblock") or "none"
        raise refuse(f"no such move (allowed: {nexts})")
    # A site imported as blocked has no interrupted state on record: any state before on_air.
    if move.verb == "unblock" and interrupted is not None and target != interrupted:
        raise refuse(f"a blocked site returns to the state it interrupted"
                     f" ({interrupted.value if interrupted else 'unknown'})")
    if move.verb == "block" and not (reason and reason.strip()):
        raise refuse("blocking needs a reason")
    if target == State.ON_AIR and not was_power_connected:
        raise refuse("a site cannot be on_air without having been power_connected")
    if target == State.DECOMMISSIONED and replacement_state is not None \
            and replacement_state != State.ON_AIR:
        raise refuse(f"its replacement is {replacement_state.value}, not on_air"
                     " (build the new site first, then take the old one down)")
    return move


def history(session: Session, site_id: str) -> list[LifecycleEvent]:
    """The site's lifecycle events, oldest first."""
    from twin.models import LifecycleEvent

    return list(session.scalars(
        select(LifecycleEvent).where(LifecycleEvent.site_id == site_id)
        .order_by(LifecycleEvent.at, LifecycleEvent.id)))


def state_at(session: Session, site_id: str, ts: datetime) -> State | None:
    """The site's state at ``ts`` (``None`` if it had no state yet); ``UnknownSite`` if absent."""
    from twin.models import LifecycleEvent, Site

    if session.get(Site, site_id) is None:
        raise UnknownSite(site_id)
    to_state = session.scalar(
        select(LifecycleEvent.to_state).where(LifecycleEvent.site_id == site_id,
                                              LifecycleEvent.at <= _as_utc(ts))
        .order_by(LifecycleEvent.at.desc(), LifecycleEvent.id.desc()).limit(1))
    return State(to_state) if to_state else None


def transition(session: Session, site_id: str, target: State | str, at: datetime | None = None,
               actor: str = "sitetwin", note: str | None = None,
               reason: str | None = None) -> LifecycleEvent:
    """Move a site to ``target`` at ``at`` (default now) and record the event.

    Raises ``UnknownSite`` or ``TransitionNotAllowed`` (nothing changed).  For
    ``blocked`` the reason is ``reason`` or, failing that, ``note``.
    Returns the new ``LifecycleEvent``.  The caller's session commits.
    """
    from twin.models import LifecycleEvent, Site

    try:
        target = State(target)
    except ValueError:
        raise TransitionNotAllowed(site_id, "?", str(target),
                                   f"not a state (one of {', '.join(s.value for s in State)})") \
            from None
    now = datetime.now(UTC)
    at = _as_utc(at) if at is not None else now
    # Lock the row on PostgreSQL so two concurrent moves of one site serialise.
    site = session.scalars(select(Site).where(Site.site_id == site_id).with_for_update()).first()
    if site is None:
        raise UnknownSite(site_id)
    events = history(session, site_id)
    state = State(site.state)
    if at > now + FUTURE_TOLERANCE:
        raise TransitionNotAllowed(site_id, state.value, target.value,
                                   f"{at.isoformat()} is in the future;"
                                   " record a move once it has happened")
    if events and at < events[-1].at:
        raise TransitionNotAllowed(site_id, state.value, target.value,
                                   f"the site's last event is at {events[-1].at.isoformat()};"
                                   " history is append-only")
    interrupted = None
    if state == State.BLOCKED and events:
        interrupted = State(events[-1].from_state) if events[-1].from_state else None
    was_power_connected = any(e.to_state == State.POWER_CONNECTED.value for e in events)
    replacement_state = None
    if target == State.DECOMMISSIONED:
        replacement = session.scalars(select(Site.site_id).where(Site.replaces_site_id == site_id)
                                      .order_by(Site.site_id)).all()
        states = [state_at(session, r, at) for r in replacement]
        not_on_air = [s for s in states if s != State.ON_AIR]
        if replacement:
            replacement_state = not_on_air[0] if not_on_air else State.ON_AIR
            if replacement_state is None:
                replacement_state = State.PLANNED
    why = reason if reason is not None else note
    for what, text in (("the actor", actor), ("the note", note), ("the reason", reason)):
        found = control_character(text or "")
        if found:
            raise TransitionNotAllowed(site_id, state.value, target.value, f"{what} contains {found}")
    move = check_move(site_id, state, target, interrupted=interrupted,
                      was_power_connected=was_power_connected,
                      replacement_state=replacement_state, reason=why)
    # Compare-and-set before the event is added (an autoflush of it would count as newer).
    newer = select(LifecycleEvent.id).where(LifecycleEvent.site_id == site_id)
    if events:
        newer = newer.where(LifecycleEvent.id > events[-1].id)
    moved = cast("CursorResult[Any]", session.execute(
        update(Site)
        .where(Site.site_id == site_id, Site.state == state.value, ~exists(newer))
        .values(state=target.value, updated_at=datetime.now(UTC))
        .execution_options(synchronize_session="fetch")))
    if moved.rowcount != 1:
        raise StateChanged(site_id, state.value, target.value)
    event = LifecycleEvent(site_id=site_id, from_state=state.value, to_state=target.value,
                           verb=move.verb, at=at, actor=actor, note=note,
                           reason=why if move.verb == "block" else None)
    session.add(event)
    session.flush()
    return event
