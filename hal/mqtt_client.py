"""The MQTT connection: paho-mqtt on its own network thread, and nothing else.

Thin on purpose: what to publish and when is decided by ``controller.mqtt.bridge``. This module
only keeps a connection to the broker:

- ``connect_async`` + ``loop_start``: the first connect and every reconnect happen on paho's
  thread, never on the caller's; the wait between tries starts at 1 s and doubles to 60 s.
- The last will is ``offline``, retained, on the status topic: a controller that dies (power cut,
  SIGKILL, cable pulled) shows ``offline`` as soon as the broker notices (at once for a closed
  socket, within 1.5 keepalives for a silent one). ``stop()`` says ``offline`` itself.
- ``on_connected`` runs on paho's thread after every connect: the session is clean, so the
  subscriptions are made again there.
- ``publish`` refuses (returns None) while not connected: paho would otherwise keep QoS 1
  messages for the next connection, a backlog without bound while the broker is away.
- Failures are logged once per streak (the first failed try, a change of reason, then the
  reconnect), with the reason in words (refused, unknown host, certificate not trusted).
- TLS files that cannot be loaded (missing, unreadable, not PEM) leave MQTT off, with the reason
  as ``problem()``: the rest of the controller runs; ``check-config`` warns about them first.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

MIN_RECONNECT_S = 1
MAX_RECONNECT_S = 60
KEEPALIVE_S = 30
MAX_QUEUED = 1000  # QoS 1 messages paho may hold at once (the bridge sends a batch, then waits)

Published = mqtt.MQTTMessageInfo


@dataclass(frozen=True)
class MqttSettings:
    """Where the broker is and who we are to it (from the config's ``mqtt:`` section)."""

    host: str
    port: int
    client_id: str
    will_topic: str  # ``offline`` is published here, retained, when the connection dies
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: str | None = None  # None with tls: the system's trusted CAs
    cert: str | None = None
    key: str | None = None
    keepalive_s: int = KEEPALIVE_S


class MqttConnection:
    """One client connection to the broker, kept up by paho's thread (see the module text)."""

    def __init__(self, settings: MqttSettings, *, subscriptions: Sequence[str],
                 on_connected: Callable[[], None], on_message: Callable[[str, bytes, bool], None]) -> None:
        self.settings = settings
        self._subscriptions = tuple(subscriptions)
        self._on_connected = on_connected
        self._on_message = on_message
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._problem: str | None = None  # why not connected (None: connected, or not tried yet)
        self._failures = 0  # failed tries in the current streak
        self._started = False
        self._stopping = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.reconnect_delay_set(min_delay=MIN_RECONNECT_S, max_delay=MAX_RECONNECT_S)
        client.max_queued_messages_set(MAX_QUEUED)
        client.will_set(settings.will_topic, "offline", qos=1, retain=True)
        if settings.user is not None:
            client.username_pw_set(settings.user, settings.password)
        self._unusable: str | None = None  # why this connection can never work (its TLS files)
        if settings.tls:
            try:
                client.tls_set(ca_certs=settings.ca, certfile=settings.cert, keyfile=settings.key)
            except (OSError, ValueError, ssl.SSLError) as exc:  # a missing or bad file: MQTT stays off,
                files = ", ".join(f for f in (settings.ca, settings.cert, settings.key) if f)  # the rest runs
                self._unusable = f"TLS files unusable ({files or 'the system CAs'}): {exc}"
        client.on_connect = self._connect_done
        client.on_connect_fail = self._connect_failed
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        self._client = client

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def problem(self) -> str | None:
        """Why the connection is down, in words (None while connected or before the first try)."""
        with self._lock:
            return self._problem

    def start(self) -> None:
        """Connect in the background and stay connected until ``stop()``."""
        if self._started:
            return
        self._started = True
        if self._unusable is not None:
            log.error("mqtt: %s; MQTT stays off until the config is fixed", self._unusable)
            with self._lock:
                self._problem = self._unusable
            return
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Say ``offline`` (retained), disconnect, end paho's thread. Idempotent."""
        if not self._started or self._stopping or self._unusable is not None:
            return
        self._stopping = True
        if self.connected:
            info = self._client.publish(self.settings.will_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                pass  # the connection broke meanwhile: the broker sends the will instead
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def publish(self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = True) -> Published | None:
        """Hand a message to paho's thread; None (nothing queued) while not connected."""
        if not self.connected:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    # ---- paho's thread -----------------------------------------------------------------------
    def _connect_done(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                      properties: Any) -> None:
        if reason_code.is_failure:
            self._failed(f"the broker refused the connection: {reason_code}")
            return
        with self._lock:
            failures, self._failures, self._problem = self._failures, 0, None
        if failures:
            log.info("mqtt: connected to %s again after %d failed tries", self.address, failures)
        else:
            log.info("mqtt: connected to %s as %s", self.address, self.settings.client_id)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._connected.set()
        try:
            self._on_connected()
        except Exception:
            log.exception("mqtt: on_connected failed")

    def _connect_failed(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside the ``except OSError`` of its connect: the error is still there.
        self._failed(connect_failure(sys.exc_info()[1]))

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                      properties: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping:
            return
        if was_connected:
            detail = str(reason_code)
            self._failed("connection lost" if detail in ("Unspecified error", "Success") else
                         f"connection lost ({detail})")

    def _failed(self, why: str) -> None:
        """One more failed try: logged when a streak starts (and when the reason changes)."""
        with self._lock:
            self._failures += 1
            changed = self._problem != why
            self._problem = why
            first = self._failures == 1
        if first or changed:
            log.warning("mqtt: %s (%s); trying again every %d to %d s", why, self.address,
                        MIN_RECONNECT_S, MAX_RECONNECT_S)

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(message.topic, bytes(message.payload), bool(message.retain))
        except Exception:
            log.exception("mqtt: handling a message on %s failed", message.topic)


def connect_failure(exc: BaseException | None) -> str:
    """Why a connect failed, in words for the status line (the same words for the same cause, so
    a streak of failures is logged once)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"cannot reach the broker: its certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"cannot reach the broker: TLS failed ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "cannot reach the broker: connection refused (is it running, is the port right?)"
    if isinstance(exc, socket.gaierror):
        return "cannot reach the broker: unknown host name"
    if isinstance(exc, TimeoutError):
        return "cannot reach the broker: no answer"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot reach the broker: {exc.strerror}"
    return "cannot reach the broker"
