"""Adapters: producers that turn other systems' data into readings of the MQTT contract.

Every adapter validates with ``connectors.reading.parse_message`` (the
collector's own check), dead-letters what it refuses, and publishes the rest
at QoS 1 to ``sites/{site_id}/{stream}``; a record is done only once the broker
acknowledged it.  See docs/adapters.md.
"""

from adapters.errors import AdapterError

__all__ = ["AdapterError"]
