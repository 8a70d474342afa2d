"""The cFos Charging Manager's numeric charger state, which gridcharge keeps for compatibility.

cFos clients read ``state`` from ``get_dev_info`` and cFos formulas compare ``E1.state`` with
numbers: 1 no car, 2 car connected, 3 charging, 4 charging with ventilation, 5 error, 6 offline.
gridcharge's own vocabulary is the IEC 61851 letter (``hal.types.IecState``); this module is the
one place that turns a letter into the cFos number, for the API (``web/devinfo.py``) and for the
formula symbols (``controller/formulas/symbols.py``).
"""

from __future__ import annotations

from hal.types import IecState

#: ``state`` of a charger that does not answer (cFos has no letter for it).
CFOS_OFFLINE = 6
_CODES = {IecState.A: 1, IecState.B: 2, IecState.C: 3, IecState.D: 4, IecState.E: 5, IecState.F: 5}


def cfos_state(state: IecState) -> int:
    """The cFos code of an IEC state (E and F are both 5, "error")."""
    return _CODES[state]
