"""``gridcharge read`` as an installer runs it: the CLI as a process against simulated devices on
loopback (an RS485 line over a pty pair and Modbus TCP), printing rounded values, the IEC state
with the vendor's code, and on failure the likely causes by kind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
import yaml

from hal.sim.physics import SimCar
from hal.sim.site import SimChargerSpec, SimInputModuleSpec, SimMeterSpec, SimulatedSite
from site_helpers import BASE_SITE

ROOT = Path(__file__).resolve().parents[2]
NO_RETRY = "reconnect in"  # the service's backoff wording, wrong for a one-shot read


@pytest.fixture(scope="module")
def site() -> Iterator[SimulatedSite]:
    """An SDM630 and a Heidelberg on one RS485 line, an Alfen and an I/O module on TCP."""
    sim = SimulatedSite(
        meter=SimMeterSpec("M1", "sdm630", "rtu", unit=1),
        chargers=[SimChargerSpec("E1", "heidelberg", "rtu", unit=2, car=SimCar(max_current_a=16)),
                  SimChargerSpec("E2", "alfen", "tcp", unit=1, max_current_a=32.0, car=SimCar(max_current_a=16))],
        input_modules=[SimInputModuleSpec("IO1", "modbus_io", "tcp", unit=5, inputs=("RSE1",))],
        base_load_a=(10.0, 5.0, 5.0),
    )
    sim.start()
    yield sim
    sim.stop()


def config(tmp_path: Path, site: SimulatedSite, **patch: dict[str, Any]) -> Path:
    data = site.config_dict(timeout_s=0.3)
    data["site"] = dict(BASE_SITE)
    data["state_dir"] = str(tmp_path / "state")
    for section, changes in patch.items():
        for key, value in changes.items():
            data.setdefault(section, {}).setdefault(key, {}).update(value)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read(device: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPIOZERO")}
    return subprocess.run([sys.executable, "-m", "controller.cli", "read", device, "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def value_line(out: str, name: str) -> str:
    match = re.search(rf"^  {name} +(.*)$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def test_values_rounded_to_their_meaning_and_the_state_in_iec_words(tmp_path: Path, site: SimulatedSite) -> None:
    path = config(tmp_path, site)
    m1 = read("M1", path)
    assert m1.returncode == 0, m1.stderr
    assert m1.stdout.startswith("M1: sdm630 at sim_rtu unit 1, answered in ")
    assert re.fullmatch(r"2\d\d\.\d V", value_line(m1.stdout, "voltage_l1_v"))  # the sim has 231.2 V
    assert re.fullmatch(r"\d+\.\d\d A", value_line(m1.stdout, "current_l1_a"))
    assert re.fullmatch(r"\d+ W", value_line(m1.stdout, "power_w"))
    assert re.fullmatch(r"\d+ Wh", value_line(m1.stdout, "import_wh"))
    assert not re.search(r"\d\.\d{3,}", m1.stdout), m1.stdout  # no float noise (231.1999969482422)

    e1 = read("E1", path)
    assert e1.returncode == 0, e1.stderr
    assert value_line(e1.stdout, "state") == "C (charging)   raw 7"
    e2 = read("E2", path)
    assert value_line(e2.stdout, "state") == "C (charging)   raw C2"
    assert re.fullmatch(r"\d+\.\d\d A", value_line(e2.stdout, "limit_a"))


def test_silent_rs485_unit_names_the_rs485_causes_and_exits_3(tmp_path: Path, site: SimulatedSite) -> None:
    res = read("M1", config(tmp_path, site, meters={"M1": {"unit": 9}}))  # nobody answers unit 9
    assert res.returncode == 3, res.stdout
    assert "M1: sdm630 at sim_rtu unit 9 did not answer" in res.stderr and "no answer within 0.3 s" in res.stderr
    for cause in ("A/B swapped", "wrong unit id: the device's own Modbus address must be 9",
                  "baud rate/parity: the device must be set to 19200 8N1",
                  "the service still holds the port: sudo systemctl stop gridcharge"):
        assert cause in res.stderr, res.stderr
    assert NO_RETRY not in res.stderr


def test_refused_tcp_port_names_the_tcp_causes(tmp_path: Path, site: SimulatedSite) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    res = read("E2", config(tmp_path, site, chargers={"E2": {"port": closed_port}}))
    assert res.returncode == 3
    assert f"cannot open 127.0.0.1:{closed_port}: connection refused" in res.stderr
    assert "wrong host/port" in res.stderr and "Modbus TCP disabled on the box" in res.stderr
    assert NO_RETRY not in res.stderr and "retrying with backoff" not in res.stderr


def test_tcp_connect_timeout_says_host_not_reachable(tmp_path: Path, site: SimulatedSite) -> None:
    """A listener whose accept queue is full drops new SYNs: the connect times out, as it does
    for an address where nothing answers at all."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        res = read("E2", config(tmp_path, site, chargers={"E2": {"port": port}}))
    finally:
        for sock in [*fillers, server]:
            sock.close()
    assert res.returncode == 3
    assert re.search(r"cannot open 127\.0\.0\.1:\d+: no connection within [\d.]+ s", res.stderr), res.stderr
    assert "host not reachable / wrong address: check 127.0.0.1" in res.stderr


def test_port_held_by_another_program_names_the_service(tmp_path: Path, site: SimulatedSite) -> None:
    path = config(tmp_path, site)
    holder = serial.serial_for_url(site.address("M1").path, exclusive=True)  # as the running service does
    try:
        res = read("M1", path)
    finally:
        holder.close()
    assert res.returncode == 3
    assert "another program holds" in res.stderr and "sudo systemctl stop gridcharge" in res.stderr


def test_modbus_exception_says_the_unit_answered_but_refused(tmp_path: Path, site: SimulatedSite) -> None:
    res = read("M1", config(tmp_path, site, meters={"M1": {"model": "sdm120"}}))  # an SDM630 answers
    assert res.returncode == 3
    assert "answered with an error" in res.stderr and "Modbus exception 2" in res.stderr
    assert "the unit answered but refused: wrong model/profile or register map" in res.stderr


def test_reading_m1_starts_no_gpio(tmp_path: Path, site: SimulatedSite) -> None:
    """This machine has no GPIO: building the GPIO input would log gpiozero's failure."""
    path = config(tmp_path, site, inputs={"RSE9": {"gpio": 17}})
    res = read("M1", path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    gpio = read("RSE9", path)  # the input itself does try the pin: the check above can fail
    assert gpio.returncode == 3 and "GPIO17" in gpio.stderr


def test_unknown_device_lists_the_devices(tmp_path: Path, site: SimulatedSite) -> None:
    res = read("M2", config(tmp_path, site))
    assert res.returncode == 2
    assert "no device 'M2'" in res.stderr and "M1, E1, E2, RSE1" in res.stderr
