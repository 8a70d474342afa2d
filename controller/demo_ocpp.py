"""The demo's OCPP wallbox: a simulated OCPP 1.6J box E3 on the same fuse as the Modbus boxes.

``gridcharge demo`` runs the controller's OCPP central system on loopback (an ``ocpp:`` section
listening on 127.0.0.1 at a free port) and a :class:`~hal.sim.ocpp_box.SimOcppBox` that connects
to it over a real WebSocket, with a password, as a box on the LAN would. The box's wallbox joins
the simulated site's physics, so the grid meter sees its car's draw beside the Modbus boxes' and
the controller shares one house connection between all three.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from hal.sim.ocpp_box import SimOcppBox
from hal.sim.physics import SimCar
from hal.sim.site import SimulatedSite
from hal.sim.wallbox import SimWallbox, WallboxConfig

DEMO_OCPP_CHARGER = "E3"
DEMO_CHARGE_BOX_ID = "DEMO-E3"
DEMO_OCPP_HOST = "127.0.0.1"
#: A 1-phase 16 A box on L2 (the Alfen E2 is on L1), with a car that follows a changed offer
#: within a second: when the oven loads L1, E3 keeps charging on L2.
DEMO_OCPP_BOX = WallboxConfig(phases=1, phase="L2", max_current_a=16.0)
DEMO_OCPP_CAR = SimCar(max_current_a=16, phases=1, follow_delay_s=1.0)
CONNECT_TIMEOUT_S = 5.0
SETTLE_S = 0.2  # a few of the box's polls (``hal.sim.ocpp_box.POLL_S``)


def free_port(host: str = DEMO_OCPP_HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class DemoOcppBox:
    """E3: where the central system listens, the box's credentials, and the simulated box."""

    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    box: SimOcppBox | None = None

    @property
    def url(self) -> str:
        """The central system's URL as the box is told it (the charge box id is appended)."""
        return f"ws://{DEMO_OCPP_HOST}:{self.port}/ocpp"

    def config_sections(self) -> dict[str, Any]:
        """The ``ocpp:`` section and E3's charger entry, to merge into the demo's config."""
        return {
            "ocpp": {"listen": f"{DEMO_OCPP_HOST}:{self.port}"},
            "charger": {"model": "ocpp", "charge_box_id": DEMO_CHARGE_BOX_ID, "password": self.password,
                        "phases": DEMO_OCPP_BOX.phases, "phase": DEMO_OCPP_BOX.phase, "min_current_a": 6,
                        "max_current_a": DEMO_OCPP_BOX.max_current_a},
        }

    def install(self, site: SimulatedSite) -> SimOcppBox:
        """Create the box with a car plugged in and put its draw on the site's grid meter."""
        wallbox = SimWallbox(DEMO_OCPP_BOX)
        site.physics.add_wallbox(DEMO_OCPP_CHARGER, wallbox)
        self.box = SimOcppBox(self.url, DEMO_CHARGE_BOX_ID, password=self.password, wallbox=wallbox)
        self.box.plug(DEMO_OCPP_CAR)
        return self.box

    def start(self) -> bool:
        """Connect to the listening central system; True once the box has booted, has its first
        charging profile and has started its transaction. So the first cycle finds E3 online
        (not reserving its maximum), and the box's first messages, which wake the loop, come
        before it (a cycle takes every wake-up so far) rather than cutting its reads short."""
        box = self.box
        if box is None:
            return False
        box.start()
        ready = box.wait_for(lambda: box.connected and box.has_profile and bool(box.transactions),
                             CONNECT_TIMEOUT_S)
        time.sleep(SETTLE_S)  # the StatusNotification that follows the StartTransaction
        return ready

    def stop(self) -> None:
        if self.box is not None:
            self.box.stop()
