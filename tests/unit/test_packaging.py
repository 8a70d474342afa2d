"""setup.cfg lists every importable directory as a package, so that building the wheel does not
warn "Package 'hal.modbus.profiles' is absent from the `packages` configuration" and the profiles go
in as package data. (The build itself, ``pip wheel --no-deps .``, takes too long for the suite.)"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
setupcfg = pytest.importorskip("setuptools.config.setupcfg")


def test_every_directory_with_files_is_a_listed_package() -> None:
    options = setupcfg.read_configuration(str(ROOT / "setup.cfg"))["options"]
    packages = set(options["packages"])
    for top in ("controller", "hal", "web"):
        for directory in [ROOT / top, *(ROOT / top).rglob("*")]:
            holds_files = directory.is_dir() and any(p.is_file() for p in directory.iterdir())
            if holds_files and directory.name != "__pycache__":
                name = ".".join(directory.relative_to(ROOT).parts)
                assert name in packages, f"{name} would be ignored (or warned about) by setuptools"
    assert options["package_data"]["hal.modbus.profiles"] == ["*.yaml"]
    assert list((ROOT / "hal" / "modbus" / "profiles").glob("*.yaml"))
    page_data = options["package_data"]["web.static"]  # the status page, served by an installed gridcharge
    for name in ("index.html", "app.js", "style.css", "icon.svg"):
        assert (ROOT / "web" / "static" / name).is_file() and "*" + name[name.rindex("."):] in page_data
