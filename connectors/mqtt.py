"""The MQTT client as every part of sitetwin builds it, and a one-shot publication.

``mqtt_client`` is the one place that turns ``[mqtt]`` (credentials, TLS,
reconnect back-off) into a paho MQTT 5 client: the collector, the publisher and
the rules' flag messages all get theirs here.  ``publish_once`` is for a caller
with a handful of messages and no connection of its own (the rule engine's flag
stream and retained alarms): connect, publish at QoS 1, wait for the broker's
acknowledgements, disconnect.  It never raises: a failure is logged and counted
as messages not published, because the registry, not MQTT, is the record.

Both take the ``[mqtt]`` section (``MqttSettings``), called ``broker`` here and
in their callers (``paho.mqtt.client`` is ``mqtt`` in this module), never the
whole ``Settings``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from connectors.errors import ConnectorError
from core.settings import MqttSettings

__all__ = ["mqtt_client", "publish_once", "server_address"]

log = logging.getLogger(__name__)


def server_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of one ``[mqtt] servers`` entry (``tcp://`` or ``ssl://``)."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    tls = parts.scheme in ("ssl", "mqtts", "tls")
    if parts.scheme not in ("tcp", "mqtt", "ssl", "mqtts", "tls"):
        raise ConnectorError(f"unsupported MQTT server scheme in {url!r} (use tcp:// or ssl://)")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def mqtt_client(broker: MqttSettings, client_id: str, *, manual_ack: bool = False,
                lean: bool = False) -> mqtt.Client:
    """A paho MQTT 5 client with ``broker``'s credentials and TLS (not yet connected);
    ``lean``: a ``connectors.transport.LeanClient`` (buffered reads, ``ack_many``)."""
    from connectors.transport import LeanClient

    m = broker
    client = (LeanClient if lean else mqtt.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if m.username:
        client.username_pw_set(m.username, m.password.get_secret_value() if m.password else None)
    _host, _port, tls = server_address(m.servers[0])
    if tls or m.tls_ca or m.tls_cert:
        import ssl

        client.tls_set(ca_certs=m.tls_ca, certfile=m.tls_cert, keyfile=m.tls_key,
                       cert_reqs=ssl.CERT_NONE if m.insecure_skip_verify else ssl.CERT_REQUIRED)
        if m.insecure_skip_verify:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(int(max(1, m.reconnect_min)), int(max(1, m.reconnect_max)))
    return client


def publish_once(broker: MqttSettings, messages: Sequence[tuple[str, bytes]], *, retain: bool = False,
                 role: str = "publish", timeout_s: float = 10.0) -> int:
    """Publish ``(topic, payload)`` pairs at QoS 1 to the first configured broker and wait for
    its acknowledgements; returns how many it acknowledged (0 on any failure, logged).

    ``role`` names the client (``{client_id}-{role}-{pid}-{thread}``), so two publishers of
    one process never take over each other's session.
    """
    if not messages:
        return 0
    url = broker.servers[0]
    try:
        host, port, _tls = server_address(url)
    except ConnectorError as exc:
        log.warning("cannot publish %d message(s) over MQTT: %s", len(messages), exc)
        return 0
    client = mqtt_client(broker, f"{broker.client_id}-{role}-{os.getpid()}-{threading.get_ident()}")
    connected = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=int(max(5, broker.keepalive)))
        client.loop_start()
        if not connected.wait(timeout_s):
            log.warning("MQTT broker %s did not accept the %s client", host, role)
            return 0
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        done = 0
        for info in infos:
            info.wait_for_publish(timeout=timeout_s)
            done += info.is_published()
        return done
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("publishing %d message(s) over MQTT failed: %s", len(messages), exc)
        return 0
    finally:
        # Closing a broken client must not mask the result.
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_stop()
