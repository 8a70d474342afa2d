"""sd_notify against a real Unix datagram socket, as systemd listens on one."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.sdnotify import Notifier


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_as_datagrams(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.notify("READY=1\nSTATUS=control loop running")
    assert sock.recv(4096) == b"READY=1\nSTATUS=control loop running"
    assert n.notify("WATCHDOG=1")
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_address() -> None:
    name = f"gridcharge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"
    finally:
        sock.close()


def test_without_systemd_it_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and not n.notify("READY=1") and n.watchdog_s is None


def test_a_dead_socket_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.notify("WATCHDOG=1") is False


@pytest.mark.parametrize(
    "env, expected",
    [({"WATCHDOG_USEC": "30000000"}, 15.0),
     ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
     ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
     ({"WATCHDOG_USEC": "junk"}, None),
     ({}, None)],
)
def test_watchdog_interval_is_half_of_watchdogsec(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_s == expected
