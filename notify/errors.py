"""Errors of the notify package: channels and the outbox.

    NotifyError                    root (a core.errors.SitetwinError)
    ├── ChannelError               a channel that cannot be used: its URL is not an Apprise
    │                              URL, or it names an unknown flag kind (names the channel,
    │                              never the URL)
    └── OutboxError                the outbox in the twin database could not be read or written

A channel that fails to deliver is not an exception: the outbox row records the
attempt, and after ``[notify] retries`` it is dead-lettered.  Apprise and
SQLAlchemy exceptions never leave the package.
"""

from __future__ import annotations

from core.errors import SitetwinError

__all__ = ["ChannelError", "NotifyError", "OutboxError"]


class NotifyError(SitetwinError):
    """Root of the notifier's errors."""


class ChannelError(NotifyError):
    """A configured channel cannot be used; the message names it (never its URL)."""


class OutboxError(NotifyError):
    """The outbox in the twin database could not be read or written."""
