"""``gridcharge demo`` with a three-second scenario, run as a program by the tests (under tmux
or into a pipe): the real demo, its view and its output, without waiting a minute.

Usage: python demo_short.py DURATION_S
"""

from __future__ import annotations

import logging
import sys

from controller.demo import Step, run_demo, set_vars
from hal.sim.physics import SimCar

STEPS = (
    Step(1.0, "short scenario: a car arrives at E2", lambda site, _: site.plug_car("E2", SimCar(max_current_a=16))),
    Step(2.0, "short scenario: AVAIL=75", set_vars(AVAIL=75)),  # room for E1, E2 and E3 (OCPP), all limited
)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # as the CLI does: not every OCPP message
    sys.exit(run_demo(steps=STEPS, settle_s=1.0, duration_s=float(sys.argv[1])))
