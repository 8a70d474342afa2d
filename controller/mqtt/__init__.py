"""MQTT and Home Assistant (docs/mqtt.md): the site's state as retained topics, grid signals
from ``<prefix>/set/<VAR>``, and Home Assistant discovery.

The mapping is pure and lives apart from the connection: ``topics`` turns a ``Status`` into
``{topic: payload}``, ``discovery`` makes Home Assistant's configs, ``commands`` checks a set
before it reaches the variable store, ``slot`` is the latest-wins hand-over from the control
loop to the sender. ``bridge`` joins them to the connection (``hal.mqtt_client``, paho-mqtt on
its own thread), so that a broker that is down or slow never makes a cycle wait.
"""
