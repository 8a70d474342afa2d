"""The MQTT bridge: the loop's status out to the broker, sets from the broker into the store.

Three threads meet here, and only the first is the control loop's:

- **the loop** calls ``on_cycle`` after every cycle. It computes the topic dict (a few dozen
  strings) and offers it to a ``LatestSlot``: a lock, a dict comparison, done. It never waits for
  the broker, whatever the broker does.
- **the sender** (one thread of ours) takes what changed from the slot and publishes it, then
  waits until paho has written it before it takes again. A slow broker makes the sender wait,
  and the slot merges the cycles meanwhile (latest wins); an absent broker makes it idle. After
  every connect it sends ``online``, the discovery configs and every topic again (a broker that
  restarted without persistence lost its retained messages).
- **paho's network thread** (``hal.mqtt_client``) reports connects and messages: a set on
  ``<prefix>/set/<VAR>`` goes to the variable store with the source ``mqtt`` (the grid signal log
  records it so), ``online`` from Home Assistant makes the configs go out again, and a retained
  config of this node that is not ours any more is deleted (every one of them when
  ``homeassistant`` is false).

A refused set (``commands``) changes nothing: it is logged (once per streak of the same
refusal), its reason is published on ``<prefix>/set/<VAR>/error`` (not retained) and the
variable's state topic is sent again, so that Home Assistant's number shows the value in force.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from controller.config.schema import Config, ModbusDeviceConfig, Mqtt, device_profile
from controller.formulas import FormulaError
from controller.mqtt.commands import Refused, parse_set
from controller.mqtt.discovery import ChargerDevice, discovery_configs
from controller.mqtt.slot import LatestSlot
from controller.mqtt.topics import ONLINE, TopicNames, state_payloads
from controller.records.variables import VariableStore
from controller.status import Status
from hal.mqtt_client import MqttConnection, MqttSettings, Published

log = logging.getLogger(__name__)

SOURCE = "mqtt"  # the grid signal log's source of a set made over MQTT
STOP_TIMEOUT_S = 5.0  # the longest close() waits for the sender thread
WRITE_CHECK_S = 0.2  # the sender looks again this often whether its batch is written
IDLE_CHECK_S = 1.0


class Connection(Protocol):
    """What the bridge needs of ``hal.mqtt_client.MqttConnection``."""

    @property
    def connected(self) -> bool: ...

    def problem(self) -> str | None: ...

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 2.0) -> None: ...

    def publish(self, topic: str, payload: str | bytes, *, qos: int = 0,
                retain: bool = True) -> Published | None: ...


def _written(info: Published, timeout_s: float) -> bool:
    """Whether paho has written ``info``, the batch's last message (its QoS 0 messages go out
    in order; its QoS 1 configs are a few dozen at most), waiting at most ``timeout_s``; a
    message paho gave up on counts as written (there is nothing to wait for)."""
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):
        return True
    return info.is_published()


def client_id(prefix: str) -> str:
    """One client id per prefix (two controllers on one broker need two prefixes anyway):
    ``gridcharge`` for the default one, ``gridcharge-home-ev`` for ``home/ev``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", prefix)
    return name if name == "gridcharge" else f"gridcharge-{name}"


class MqttBridge:
    """The ``mqtt:`` section at work (see the module text). ``start()`` and ``close()`` go with
    the service; ``on_cycle`` is the loop's cycle listener."""

    def __init__(self, cfg: Mqtt, *, store: VariableStore, chargers: Mapping[str, ChargerDevice],
                 inputs: tuple[str, ...], version: str,
                 session_energy_wh: Callable[[Status], Mapping[str, float | None]],
                 connect: Callable[..., Connection] = MqttConnection) -> None:
        self.cfg = cfg
        self.names = TopicNames(cfg.prefix, cfg.discovery_prefix)
        self._store = store
        self._session_energy_wh = session_energy_wh
        self._writable = tuple(cfg.writable)
        self._discovery = discovery_configs(self.names, chargers=chargers, inputs=inputs,
                                            writable=self._writable, version=version) if cfg.homeassistant else {}
        self.slot = LatestSlot()
        self._lock = threading.Lock()
        self._online_due = False
        self._discovery_due = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refusal: tuple[str, str] | None = None
        # The node's retained configs come back on subscribing: those not ours any more are
        # deleted (all of them when discovery is switched off: its entities leave Home Assistant).
        subscriptions = [self.names.set_filter, self.names.config_filter]
        if cfg.homeassistant:
            subscriptions.append(self.names.ha_status)
        tls = cfg.tls
        settings = MqttSettings(
            host=cfg.host, port=cfg.port, client_id=client_id(cfg.prefix), will_topic=self.names.status,
            user=cfg.user, password=cfg.password, tls=tls is not None,
            ca=str(tls.ca) if tls is not None and tls.ca is not None else None,
            cert=str(tls.cert) if tls is not None and tls.cert is not None else None,
            key=str(tls.key) if tls is not None and tls.key is not None else None)
        self.connection = connect(settings, subscriptions=subscriptions, on_connected=self._connected,
                                  on_message=self._message)

    @property
    def discovery(self) -> dict[str, str]:
        """The Home Assistant configs this site publishes (topic → JSON)."""
        return dict(self._discovery)

    # ---- the loop's thread -------------------------------------------------------------------
    def on_cycle(self, status: Status) -> None:
        """The cycle listener: offer this cycle's payloads (never waits)."""
        self.slot.offer(state_payloads(status, self.names, session_energy_wh=self._session_energy_wh(status),
                                       writable=self._writable))

    # ---- start and stop ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._send_forever, name="mqtt-sender", daemon=True)
        self._thread.start()
        self.connection.start()

    def close(self) -> None:
        """Send what is due (briefly), say ``offline`` and disconnect. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self.slot.ready.set()
        thread.join(STOP_TIMEOUT_S)
        if self.connection.connected:
            self._publish_due()  # the last cycle's state; stop() says offline after it (QoS 1, in order)
        self.connection.stop()

    def faults(self) -> tuple[str, ...]:
        """A status line while the broker cannot be reached (the loop runs on regardless)."""
        problem = self.connection.problem() if self._thread is not None else None
        return (f"mqtt: {problem} ({self.cfg.host}:{self.cfg.port})",) if problem else ()

    # ---- the sender thread -------------------------------------------------------------------
    def _send_forever(self) -> None:
        """Publish what is due, one batch at a time: the next batch is taken only when paho has
        written the last one (or the connection broke: the reconnect sends everything again),
        so paho's own queue never holds more than one batch however slow the broker is."""
        unwritten: Published | None = None
        while not self._stop.is_set():
            if unwritten is not None:
                if self.connection.connected and not _written(unwritten, WRITE_CHECK_S):
                    continue
                unwritten = None
            self.slot.ready.wait(IDLE_CHECK_S)
            if self._stop.is_set():
                return
            if not self.connection.connected:
                continue  # the reconnect marks everything due again
            self.slot.ready.clear()
            try:
                unwritten = self._publish_due()
            except Exception:
                log.exception("mqtt: publishing failed")

    def _publish_due(self) -> Published | None:
        """Hand ``online``, the configs and the changed topics to paho, as far as they are due;
        returns the last message handed over (None: nothing was)."""
        with self._lock:
            online, discovery = self._online_due, self._discovery_due
            self._online_due = self._discovery_due = False
        sent: list[Published | None] = []
        if online:
            sent.append(self.connection.publish(self.names.status, ONLINE, qos=1, retain=True))
        if discovery:
            sent += [self.connection.publish(topic, payload, qos=1, retain=True)
                     for topic, payload in self._discovery.items()]
        sent += [self.connection.publish(topic, payload, qos=0, retain=True)
                 for topic, payload in self.slot.take().items()]
        if None in sent:
            log.debug("mqtt: %d of %d messages not sent (disconnected)", sent.count(None), len(sent))
        return next((info for info in reversed(sent) if info is not None), None)

    # ---- paho's thread -----------------------------------------------------------------------
    def _connected(self) -> None:
        with self._lock:
            self._online_due = True
            self._discovery_due = bool(self._discovery)
        self.slot.mark_due()
        self.slot.ready.set()

    def _message(self, topic: str, payload: bytes, retained: bool) -> None:
        name = self.names.set_name(topic)
        if name is not None:
            self._set(name, payload, retained)
        elif topic == self.names.ha_status:
            if payload.strip() == b"online" and self._discovery:
                log.info("mqtt: Home Assistant is online: sending the discovery configs again")
                with self._lock:
                    self._discovery_due = True
                self.slot.ready.set()
        elif self.names.is_config(topic) and retained and payload and topic not in self._discovery:
            log.info("mqtt: deleting the retained discovery config %s (no longer part of this site)", topic)
            self.connection.publish(topic, b"", qos=1, retain=True)

    def _set(self, name: str, payload: bytes, retained: bool) -> None:
        try:
            value = parse_set(name, payload, writable=self._writable, retained=retained)
            self._store.set_many([(name, value)], source=SOURCE)
        except (Refused, FormulaError) as exc:
            self._refuse(name, str(exc))
            return
        if self._last_refusal is not None and self._last_refusal[0] == name:
            self._last_refusal = None
        log.info("mqtt: set %s = %s", name, value)

    def _refuse(self, name: str, why: str) -> None:
        key = (name[:64], why)
        if key != self._last_refusal:
            log.warning("mqtt: set of %s refused: %s", name[:64], why)
            self._last_refusal = key
        else:
            log.debug("mqtt: set of %s refused again: %s", name[:64], why)
        self.connection.publish(self.names.set_error(name), why, qos=0, retain=False)
        if name in self._writable:
            self.slot.mark_due([self.names.variable(name)])


def charger_devices(cfg: Config) -> dict[str, ChargerDevice]:
    """Each charger as Home Assistant's device registry shows it: its profile's maker and
    description (an OCPP box tells neither before it connects)."""
    out: dict[str, ChargerDevice] = {}
    for charger_id, charger in cfg.chargers.items():
        if isinstance(charger, ModbusDeviceConfig):
            profile = device_profile(charger, f"chargers.{charger_id}")
            out[charger_id] = ChargerDevice(model=profile.description or profile.model,
                                            manufacturer=profile.manufacturer)
        else:
            out[charger_id] = ChargerDevice(model="OCPP 1.6J wallbox")
    return out
