"""A real mosquitto on a free loopback port, and a test client that records what it receives.

``Mosquitto`` runs Debian's ``mosquitto`` binary with a config written to the test's tmp_path:
one listener on 127.0.0.1, anonymous clients allowed, no persistence (so a restarted broker has
lost every retained message, as a real one without a persistence file has). ``stop()`` and
``start()`` again use the same port: the controller's client reconnects to the same address.
``pause()``/``resume()`` (SIGSTOP/SIGCONT) make a broker that accepts nothing: a slow one. With
``tls`` (CA, certificate, key) a second listener on ``tls_port`` speaks TLS and requires a client
certificate from that CA.

``Watcher`` is a paho client of the test's own, subscribed to a filter, keeping the last message
of every topic (payload and retain flag) and letting the test wait for a condition on them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

START_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One mosquitto process on ``127.0.0.1:port`` (see the module text)."""

    def __init__(self, workdir: Path, port: int | None = None, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if binary is None:  # CI installs it (.ci/run); a machine without it must fail, not skip
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.binary = binary
        self.port = port or free_port()
        self.tls_port: int | None = None
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if tls is not None:  # a second listener: TLS, and a client certificate from the CA required
            ca, cert, key = tls
            self.tls_port = free_port()
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}",
                      "require_certificate true"]
            if os.geteuid() == 0:  # as root mosquitto would read the files as user mosquitto: tmp_path is 0700
                lines.insert(0, "user root")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@dataclass(frozen=True)
class Received:
    payload: str
    retained: bool


class Watcher:
    """A test's own MQTT client: the last message of each topic matching ``topic_filter``."""

    def __init__(self, port: int, topic_filter: str = "#", name: str = "test-watcher") -> None:
        self.messages: dict[str, Received] = {}
        self.history: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(START_TIMEOUT_S):
            raise RuntimeError("the watcher could not subscribe")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            payload = bytes(message.payload).decode("utf-8", "replace")
            self.messages[message.topic] = Received(payload, bool(message.retain))
            self.history.append((message.topic, payload))
            self._cond.notify_all()

    def wait_for(self, check: Callable[[dict[str, Received]], bool], timeout_s: float = 5.0, what: str = "") -> None:
        """Until ``check(messages)`` is true; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not check(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what or check}: {sorted(self.messages.items())[:60]}")
                self._cond.wait(left)

    def payload(self, topic: str) -> str | None:
        with self._cond:
            received = self.messages.get(topic)
            return received.payload if received is not None else None

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(START_TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
