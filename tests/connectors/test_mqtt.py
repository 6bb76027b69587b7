import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.errors import ConnectorError
from connectors.mqtt import publish_once, server_address
from core.settings import load_settings
from sitetwin.services import free_port


def test_server_address():
    assert server_address("tcp://broker:1884") == ("broker", 1884, False)
    assert server_address("broker") == ("broker", 1883, False)
    assert server_address("ssl://broker") == ("broker", 8883, True)
    with pytest.raises(ConnectorError, match="unsupported MQTT server scheme"):
        server_address("http://broker")


def test_publish_once_to_no_broker_publishes_nothing_and_does_not_raise():
    broker = load_settings(None, mqtt={"servers": [f"tcp://127.0.0.1:{free_port()}"]}).mqtt
    assert publish_once(broker, [("t/x", b"1")], timeout_s=2) == 0
    assert publish_once(broker, []) == 0


@pytest.mark.integration
def test_publish_once_waits_for_the_acks_and_retains(mosquitto):
    broker = load_settings(None, mqtt={"servers": [mosquitto.url]}).mqtt
    topics = [f"tests/mqtt-once/{i}" for i in range(3)]
    assert publish_once(broker, [(t, f"v{i}".encode()) for i, t in enumerate(topics)],
                        retain=True, role="test") == 3
    got: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c, _u, msg):
        got[msg.topic] = msg.payload
        if len(got) == len(topics):
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("tests/mqtt-once/#", qos=1)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        assert done.wait(30), got  # retained: delivered to a subscriber that came later
    finally:
        client.disconnect()
        client.loop_stop()
    assert got == {t: f"v{i}".encode() for i, t in enumerate(topics)}
    # An empty retained message clears the topic for the other tests of the session broker.
    assert publish_once(broker, [(t, b"") for t in topics], retain=True, role="test") == 3
