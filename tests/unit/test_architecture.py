"""The dependency direction of docs/architecture.md, kept by a test that scans the imports.

web → controller → hal; hal imports neither; web never imports hal; pymodbus (whose API moves
between 3.x releases) is imported only inside hal/modbus/, the Modbus driver; the allocation
sees only the generic hal.types; ocpp and
websockets are imported only inside hal/ocpp/, the OCPP driver.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> dict[str, set[str]]:
    """The top-level packages each file of ``package`` imports (``hal``, ``pymodbus``, ...)."""
    return {path: {name.split(".")[0] for name in names} for path, names in full_imports(package).items()}


def test_hal_imports_neither_controller_nor_web() -> None:
    bad = {p: n & {"controller", "web"} for p, n in imports("hal").items() if n & {"controller", "web"}}
    assert not bad


def test_web_never_imports_hal() -> None:
    bad = {p for p, n in imports("web").items() if "hal" in n}
    assert not bad


def test_pymodbus_is_imported_inside_the_modbus_driver_only() -> None:
    users = {p for pkg in ("hal", "controller", "web") for p, n in imports(pkg).items() if "pymodbus" in n}
    assert users and all(p.startswith("hal/modbus/") for p in users), users


def test_ocpp_is_imported_inside_the_ocpp_driver_only() -> None:
    """ocpp and websockets stay in hal/ocpp/ and the simulated OCPP box (hal/sim/ocpp_box.py)."""
    allowed = ("hal/ocpp/", "controller/ocpp_wiring.py", "hal/sim/ocpp_box.py")  # the simulated box speaks it too
    users = {p for pkg in ("hal", "controller", "web") for p, n in imports(pkg).items()
             if n & {"ocpp", "websockets"}}
    assert all(p.startswith(allowed) for p in users), users


def full_imports(package: str) -> dict[str, set[str]]:
    """Every absolute module each file of ``package`` imports, with its dotted path."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_allocation_sees_only_the_generic_hal_types() -> None:
    """The pure core works on any protocol's devices: no driver module, only ``hal.types``."""
    bad = {p: {n for n in names if n.split(".")[0] == "hal" and n != "hal.types"}
           for p, names in full_imports("controller/allocation").items()}
    assert not {p: n for p, n in bad.items() if n}, bad


def test_paho_is_imported_by_the_mqtt_connection_only() -> None:
    """paho-mqtt stays in hal/mqtt_client.py; the bridge (controller/mqtt/) only sees its interface."""
    users = {p for pkg in ("hal", "controller", "web") for p, n in imports(pkg).items() if "paho" in n}
    assert users == {"hal/mqtt_client.py"}, users
