"""Notifications: flag events (open, escalate, resolve, review, remind) to people through
Apprise channels, routed by kind, severity and county, with digests, quiet hours, retries
and a dead letter, from an outbox in the twin database (docs/notifications.md).

``Notifier`` is the dispatcher (``tick`` once, or ``start`` a thread); ``Outbox`` lists
and retries what was queued; ``Channel`` is one Apprise URL.
"""

from notify.channel import Channel
from notify.dispatcher import Notifier, TickResult
from notify.errors import ChannelError, NotifyError, OutboxError
from notify.outbox import Outbox

__all__ = ["Channel", "ChannelError", "Notifier", "NotifyError", "Outbox", "OutboxError",
           "TickResult"]
