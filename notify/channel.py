"""A notification channel: one Apprise URL, sent to through Apprise and nothing else.

Apprise (https://github.com/caronc/apprise) speaks DingTalk, WeCom, Feishu,
e-mail, SMS gateways and generic JSON/form webhooks from one URL scheme, so
sitetwin has no sender of its own.  Its ``notify`` says only whether a send
worked; the reason is in Apprise's log, which is captured per send and kept
with the outbox row.  A channel URL usually holds a token or a password:
Apprise's own log goes through ``mask`` before it is stored or logged (its
logger does not propagate to the root logger), and a channel is shown as its
Apprise *privacy* URL, with the secret parts starred.
"""

from __future__ import annotations

import logging
import re

from notify.errors import ChannelError
from notify.message import Message

__all__ = ["Channel", "SendFailed"]

log = logging.getLogger(__name__)

# Apprise's own records would reach our log handlers unmasked; they are captured instead.
logging.getLogger("apprise").propagate = False
logging.getLogger("apprise").addHandler(logging.NullHandler())


class SendFailed(Exception):
    """Internal: a channel did not take a message; ``reason`` is already masked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel:
    """A configured channel (``[[notify.channels]]``) ready to send."""

    def __init__(self, name: str, url: str) -> None:
        import apprise

        self.name = name
        self._apprise = apprise.Apprise()
        if not self._apprise.add(url):
            raise ChannelError(f"notify channel {name!r}: its url is not an Apprise URL that this"
                               " Apprise understands (see docs/notifications.md)")
        (plugin,) = list(self._apprise)
        self.shown = _shown(plugin.url(privacy=True))
        self._secrets = _secret_parts(url, self.shown)

    def mask(self, text: str) -> str:
        """``text`` with every secret part of the channel's URL starred."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def send(self, message: Message) -> None:
        """Deliver ``message`` once; raises ``SendFailed`` with Apprise's (masked) reason."""
        import apprise

        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            try:
                ok = bool(self._apprise.notify(title=message.title, body=message.body,
                                               notify_type=message.kind))
            except Exception as exc:  # noqa: BLE001 - a plugin bug is this channel's failure
                ok = False
                log.debug("apprise raised %s", type(exc).__name__)
            reason = captured.getvalue().strip()
        if not ok:
            last = reason.splitlines()[-1] if reason else "Apprise reported a failure"
            raise SendFailed(self.mask(last)[:500])

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, {self.shown!r})"


def _shown(privacy_url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(privacy_url)
    rest = "/..." if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{rest}"


def _secret_parts(url: str, shown: str) -> list[str]:
    """The parts of ``url`` that the shown form leaves out (tokens, passwords, keys), longest
    first; over-masking a harmless path word costs nothing, missing a token would."""
    from urllib.parse import unquote

    parts = {p for p in re.split(r"[/:@?&=#,+]+", url) if len(p) >= 4}
    parts |= {unquote(p) for p in parts}
    hidden = [p for p in parts if p not in shown and unquote(shown).find(p) < 0]
    return sorted(hidden, key=len, reverse=True)
