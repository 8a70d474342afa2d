"""Appliance deployment: install.sh into a temporary root, the systemd unit, udev rules, first start.

What each check proves, and why it is done this way on Debian 12 (systemd/udev 252):

- ``shellcheck`` on every shell script: no findings at all.
- ``systemd-analyze verify`` exits 0 even for unknown keys ("Unknown key 'WatchdgSec'... ignoring"),
  so a test requires *empty* output. Without ``--root`` it fails on the ExecStart binary, which does
  not exist on a CI machine. Hence two checks: (1) fast, a copy of the unit whose ExecStart names
  ``/bin/true`` (the only line changed); (2) after the full install, the unit *as installed* is
  verified with ``--root=DIR``. That needs the stock units (sysinit.target, ...) inside DIR: a
  copy of the host's ``/usr/lib/systemd/system`` works (a symlink to it loops), and the check then
  also proves that ExecStart names the executable the installer built inside DIR.
- udev: ``udevadm verify`` only exists from systemd 253 on. Two checks instead: (1) a small parser
  of the rule syntax (keys, operators per key, quoting, commas, GOTO labels, substitutions), since
  udev 252 accepts ``SUBSYSTEM=="tty" SYMLINK+="x"`` (missing comma) without a word, plus a model of
  udev's matching that plays the rules against the sysfs chains of the supported adapters (a VM has
  no USB bus to plug one into); (2) ``udevadm test`` on a real tty device, which runs udev's own
  parser over our files and reports "Invalid key"/"Invalid operator" with file:line. ``udevadm
  test`` is not side-effect free (it creates symlinks in /dev and writes /run/udev), so it runs in
  a private mount namespace (``unshare --mount``) with tmpfs over /dev, /run and /etc/udev holding
  only our rules. The device is a non-USB serial port, which must get no gridcharge name.
- install.sh ``--root DIR``: everything lands under DIR, each system action is reported as
  ``skipped (--root): ...``; the result is checked file by file. ``--no-venv`` runs are fast (the
  project's own interpreter hashes the password and checks the config); one full run builds the
  real virtualenv with pip (about 30 s) and runs its ``gridcharge check-config``. Whether the
  service counts as enabled inside DIR is read from DIR (``systemctl --root``), so a test enables
  it there with the symlink ``systemctl enable`` would make. Set
  ``GRIDCHARGE_SKIP_VENV_INSTALL=1`` to skip that one where pip cannot reach an index; it is
  ignored under CI, where the full run always happens.

Tools missing on the machine skip their test, except under CI (``.ci/run`` installs them).
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from werkzeug.security import check_password_hash

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "deploy" / "install.sh"
UNIT = REPO / "deploy" / "gridcharge.service"
EXAMPLE = REPO / "deploy" / "config.example.yaml"
FIRST_INSTALL = REPO / "deploy" / "config.first-install.yaml"
SERIAL_RULES = REPO / "udev" / "99-gridcharge-serial.rules"
GPIO_RULES = REPO / "udev" / "99-gridcharge-gpio.rules"
RULE_FILES = (SERIAL_RULES, GPIO_RULES)
EXEC_START = "/opt/gridcharge/venv/bin/gridcharge run --config /etc/gridcharge/config.yaml"
PASSWORD_LINE = re.compile(r"^  password: (\S+)$", re.M)
NEXT_STEPS = ["Next steps:",
              "  1. edit /etc/gridcharge/config.yaml (meters, chargers, inputs)",
              "  2. sudo gridcharge check-config",
              "  3. sudo systemctl enable --now gridcharge"]
NOT_CONFIGURED = ("site not configured: edit /etc/gridcharge/config.yaml, run gridcharge check-config, "
                  "then systemctl enable --now gridcharge")
IN_CI = bool(os.environ.get("CI"))


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


USER_EXISTED = _user_exists("gridcharge")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is missing: .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------- shellcheck
def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = need_tool("shellcheck")
    scripts = [INSTALL_SH, REPO / ".ci" / "run"]
    res = subprocess.run([shellcheck, "--shell=bash", *map(str, scripts)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr


def test_install_script_is_executable() -> None:
    assert mode(INSTALL_SH) & 0o111 == 0o111


# ----------------------------------------------------------------------------------- systemd unit
def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order; systemd allows repeated keys such as DeviceAllow=."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def test_unit_has_the_required_settings() -> None:
    from controller.cli import EXIT_NOT_CONFIGURED

    s = unit_settings(UNIT.read_text())

    def one(key: str, section: str = "Service") -> str:
        values = s.get((section, key), [])
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("ExecStart") == EXEC_START
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "TimeoutStopSec": "15",
        "Restart": "always", "RestartSec": "5", "User": "gridcharge", "Group": "gridcharge",
        "StateDirectory": "gridcharge", "ConfigurationDirectory": "gridcharge",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "DevicePolicy": "closed", "UMask": "0027", "SystemCallArchitectures": "native",
        "WorkingDirectory": "/run/gridcharge", "RuntimeDirectory": "gridcharge",
        "LimitNOFILE": "4096",  # the HTTP caps (512 + 64) plus the device reserve (256) fit with room
        # "site not configured" is final until someone edits the config: no restart every 5 s
        "RestartPreventExitStatus": str(EXIT_NOT_CONFIGURED),
    }
    for key, value in expected.items():
        assert one(key) == value, key
    assert set(one("SupplementaryGroups").split()) == {"dialout", "gpio"}
    # sd_notify needs AF_UNIX; Modbus TCP and HTTP need AF_INET/AF_INET6.
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    allowed = set(s[("Service", "DeviceAllow")])
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-gpiochip rw"} <= allowed
    assert "LG_WD=/run/gridcharge" in s[("Service", "Environment")]
    assert one("WantedBy", "Install") == "multi-user.target"
    # Nothing that would hide the devices DeviceAllow opens, or /proc/cpuinfo from gpiozero.
    assert ("Service", "PrivateDevices") not in s and ("Service", "ProcSubset") not in s


def systemd_verify(*args: str) -> subprocess.CompletedProcess[str]:
    tool = need_tool("systemd-analyze")
    return subprocess.run([tool, "verify", *args], capture_output=True, text=True, timeout=60)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC_START}\n") == 1
    copy = tmp_path / "gridcharge.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", "ExecStart=/bin/true run"))
    res = systemd_verify(str(copy))
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


def test_systemd_analyze_verify_reports_unknown_keys(tmp_path: Path) -> None:
    """The check above relies on verify printing something for a bad unit: make sure it does."""
    copy = tmp_path / "gridcharge.service"
    copy.write_text(UNIT.read_text().replace(f"ExecStart={EXEC_START}", "ExecStart=/bin/true\nWatchdgSec=30"))
    res = systemd_verify(str(copy))
    assert "Unknown key" in res.stdout + res.stderr


# --------------------------------------------------------------------------------- udev: syntax
MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER", "DRIVERS",
              "ATTRS", "TAGS", "CONST", "TEST", "PROGRAM", "RESULT"}
ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
MATCH_OR_ASSIGN = {"NAME", "SYMLINK", "ATTR", "SYSCTL", "ENV", "TAG"}
NEEDS_ATTR = {"ATTR", "ATTRS", "SYSCTL", "ENV", "CONST", "SECLABEL"}
MAY_HAVE_ATTR = NEEDS_ATTR | {"TEST", "IMPORT", "RUN"}
ASSIGN_OPS = {"=", "+=", "-=", ":="}
TOKEN = re.compile(r'(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]*)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"')
SUBSTITUTION = re.compile(r"%s\{[^}]+\}|%[nkbpNMmcrPDE%]|\$env\{[^}]+\}|\$attr\{[^}]+\}|\$(kernel|number|devpath|id"
                          r"|driver|major|minor|result|parent|name|links|root|sys|devnode|tempnode)\b|\$\$")


@dataclass(frozen=True)
class Token:
    key: str
    attr: str | None
    op: str
    value: str


@dataclass(frozen=True)
class Rule:
    line_no: int
    tokens: tuple[Token, ...]


def parse_rules(text: str, name: str = "rules") -> list[Rule]:
    """Parse udev rules strictly; raise ValueError with file:line on anything udev would not take."""
    rules: list[Rule] = []
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{line_no}"
        if line.endswith("\\"):
            raise ValueError(f"{where}: line continuation is not used in our rules")
        tokens, pos = [], 0
        while pos < len(line):
            m = TOKEN.match(line, pos)
            if m is None:
                raise ValueError(f"{where}: cannot parse at {line[pos:]!r}")
            tokens.append(_check_token(Token(m["key"], m["attr"], m["op"], m["value"]), where))
            pos = m.end()
            sep = re.compile(r"\s*,\s*|\s*$").match(line, pos)
            if sep is None or (sep.end() == pos and pos < len(line)):
                raise ValueError(f"{where}: missing comma before {line[pos:]!r}")
            pos = sep.end()
        rules.append(Rule(line_no, tuple(tokens)))
    labels = {t.value for r in rules for t in r.tokens if t.key == "LABEL"}
    for rule in rules:
        for t in rule.tokens:
            if t.key == "GOTO" and t.value not in labels:
                raise ValueError(f"{name}:{rule.line_no}: GOTO to unknown LABEL {t.value!r}")
    return rules


def _check_token(t: Token, where: str) -> Token:
    known = MATCH_ONLY | ASSIGN_ONLY | MATCH_OR_ASSIGN
    if t.key not in known:
        raise ValueError(f"{where}: unknown key {t.key}")
    if t.key in NEEDS_ATTR and not t.attr:
        raise ValueError(f"{where}: {t.key} needs {{attribute}}")
    if t.attr is not None and t.key not in MAY_HAVE_ATTR:
        raise ValueError(f"{where}: {t.key} takes no {{attribute}}")
    is_match = t.op in ("==", "!=")
    if is_match and t.key in ASSIGN_ONLY:
        raise ValueError(f"{where}: {t.key} cannot be matched")
    if not is_match and t.key in MATCH_ONLY:
        raise ValueError(f"{where}: {t.key} cannot be assigned")
    if t.key in ("LABEL", "GOTO", "OWNER", "GROUP", "MODE") and t.op not in ("=", ":="):
        raise ValueError(f"{where}: {t.key} takes = only")
    if t.key == "MODE" and not re.fullmatch(r"0?[0-7]{3}", t.value):
        raise ValueError(f"{where}: MODE must be octal")
    if not is_match:
        rest = SUBSTITUTION.sub("", t.value)
        if "%" in rest or "$" in rest:
            raise ValueError(f"{where}: unknown substitution in {t.value!r}")
        if t.key == "SYMLINK" and not re.fullmatch(r"[0-9A-Za-z#+\-.:=@_/ ]*", rest):
            raise ValueError(f"{where}: characters udev would replace in {t.value!r}")
    return t


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_parse_strictly(path: Path) -> None:
    assert parse_rules(path.read_text(), path.name)


@pytest.mark.parametrize("bad", [
    'SUBSYSTEM=="tty" SYMLINK+="x"',          # missing comma: udev 252 says nothing
    'SUBSYSTEM=="tty", FOO=="bar"',
    'SUBSYSTEM=="tty", GROUP=="dialout"',
    'SUBSYSTEM=="tty", KERNEL="ttyUSB0"',
    'SUBSYSTEM=="tty", SYMLINK+="gc-%q"',
    'SUBSYSTEM=="tty", ATTRS=="x"',
    'GOTO="nowhere"',
    "SUBSYSTEM=='tty'",
])
def test_rule_checker_rejects_mistakes(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rules(bad)


# ------------------------------------------------------------------------ udev: matching model
@dataclass(frozen=True)
class SysDev:
    """One device in a sysfs chain: the event's device first, then its parents."""

    kernel: str
    subsystem: str
    driver: str = ""
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    links: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    mode: str | None = None
    attr_writes: dict[str, str] = field(default_factory=dict)


PARENT_KEYS = {"KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS"}
MATCH_OPS = ("==", "!=")


def _glob(pattern: str, value: str | None) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in pattern.split("|"))


def _own_value(t: Token, dev: SysDev, env: dict[str, str], action: str) -> str:
    """The value a match key (other than a parent key) compares: of the event's device itself."""
    if t.key == "ENV":
        return env.get(t.attr or "", "")
    if t.key == "ATTR":
        return dev.attrs.get(t.attr or "", "")
    return {"ACTION": action, "KERNEL": dev.kernel, "SUBSYSTEM": dev.subsystem, "DRIVER": dev.driver}[t.key]


def _parent_value(t: Token, dev: SysDev) -> str | None:
    if t.key == "ATTRS":
        return dev.attrs.get(t.attr or "")
    return {"KERNELS": dev.kernel, "SUBSYSTEMS": dev.subsystem, "DRIVERS": dev.driver}[t.key]


def _match(rule: Rule, chain: list[SysDev], env: dict[str, str], action: str) -> SysDev | None:
    """The device that %b / %s{} refer to when ``rule`` matches (the parent matched by the parent
    keys, else the device itself); None when it does not match."""
    dev = chain[0]
    for t in rule.tokens:
        if t.op in MATCH_OPS and t.key not in PARENT_KEYS:
            hit = _glob(t.value, _own_value(t, dev, env, action))
            if hit != (t.op == "=="):
                return None
    parent_tokens = [t for t in rule.tokens if t.key in PARENT_KEYS]
    if not parent_tokens:
        return dev
    return next((d for d in chain if all(_glob(t.value, _parent_value(t, d)) for t in parent_tokens)), None)


def _expand(value: str, dev: SysDev, source: SysDev) -> str:
    value = re.sub(r"%s\{([^}]+)\}", lambda m: source.attrs.get(m[1], ""), value)
    number = re.search(r"\d+$", dev.kernel)
    return value.replace("%n", number[0] if number else "").replace("%b", source.kernel).replace("%k", dev.kernel)


def play(rules: list[Rule], chain: list[SysDev], action: str = "add",
         env: dict[str, str] | None = None) -> Outcome:
    """What udev does with these rules for one event: a model of the subset our rules use.

    As in udev, all parent keys of one rule (KERNELS, SUBSYSTEMS, DRIVERS, ATTRS) must match the
    same device of the chain (the event's device first, then up), and %b / %s{...} refer to it.
    """
    out = Outcome(env=dict(env or {}))
    goto: str | None = None
    for rule in rules:
        if goto is not None:
            if any(t.key == "LABEL" and t.value == goto for t in rule.tokens):
                goto = None
            continue
        source = _match(rule, chain, out.env, action)
        if source is None:
            continue
        for t in rule.tokens:
            if t.op in MATCH_OPS:
                continue
            if t.key == "SYMLINK":
                out.links.append(_expand(t.value, chain[0], source))
            elif t.key == "ENV":
                out.env[t.attr or ""] = _expand(t.value, chain[0], source)
            elif t.key == "GROUP":
                out.group = t.value
            elif t.key == "MODE":
                out.mode = t.value
            elif t.key == "ATTR":
                out.attr_writes[t.attr or ""] = t.value
            elif t.key == "GOTO":
                goto = t.value
    return out


ROOT_HUB = SysDev("usb1", "usb", "usb", {"idVendor": "1d6b", "idProduct": "0002",
                                           "serial": "0000:01:00.0", "busnum": "1", "devpath": "0"})


def usb_serial_chain(tty: str, vid: str, pid: str, port: str, serial: str | None = None,
                     interface: int = 0, driver: str = "ftdi_sio") -> tuple[list[SysDev], list[SysDev]]:
    """The tty event's chain and the usb-serial event's chain of one adapter on USB port ``port``."""
    usb_dev = SysDev(f"1-{port}", "usb", "usb", {"idVendor": vid, "idProduct": pid, "busnum": "1",
                                                  "devpath": port, **({"serial": serial} if serial else {})})
    iface = SysDev(f"1-{port}:1.{interface}", "usb", driver, {"bInterfaceNumber": f"{interface:02d}"})
    port_dev = SysDev(tty, "usb-serial", driver, {"latency_timer": "16"})
    tail = [iface, usb_dev, ROOT_HUB, SysDev("0000:01:00.0", "pci", "xhci_hcd")]
    return [SysDev(tty, "tty"), port_dev, *tail], [port_dev, *tail]


ADAPTERS = [  # (vendor, product, driver, serial) the common USB-RS485 chips: FTDI, CH340/CH341, CP210x
    *[("0403", pid, "ftdi_sio", "A10K1234") for pid in ("6001", "6010", "6011", "6014", "6015")],
    ("1a86", "7523", "ch341", None), ("1a86", "5523", "ch341", None),
    ("10c4", "ea60", "cp210x", "0001"),
]


@pytest.fixture(scope="module")
def serial_rules() -> list[Rule]:
    return parse_rules(SERIAL_RULES.read_text(), SERIAL_RULES.name)


@pytest.mark.parametrize(("vid", "pid", "driver", "serial"), ADAPTERS, ids=lambda v: str(v))
def test_every_supported_adapter_gets_stable_names(serial_rules: list[Rule], vid: str, pid: str,
                                                   driver: str, serial: str | None) -> None:
    tty_chain, _ = usb_serial_chain("ttyUSB0", vid, pid, "1.3", serial, driver=driver)
    out = play(serial_rules, tty_chain)
    expected = ["gridcharge-rs485-0", "gridcharge-rs485-usb-1-1.3:1.0"]
    if serial:
        expected.append(f"gridcharge-rs485-sn-{serial}")
    assert out.links == expected
    assert (out.group, out.mode) == ("dialout", "0660")
    assert out.env.get("ID_MM_DEVICE_IGNORE") == "1"


def test_adapter_without_serial_is_not_named_after_the_root_hub(serial_rules: list[Rule]) -> None:
    """The root hub above a CH340 has a "serial" attribute; the rule must not pick that up."""
    tty_chain, _ = usb_serial_chain("ttyUSB1", "1a86", "7523", "1.4", None, driver="ch341")
    links = play(serial_rules, tty_chain).links
    assert links == ["gridcharge-rs485-1", "gridcharge-rs485-usb-1-1.4:1.0"]


def test_each_port_of_a_multiport_ftdi_has_its_own_usb_name(serial_rules: list[Rule]) -> None:
    names = {play(serial_rules, usb_serial_chain(f"ttyUSB{i}", "0403", "6011", "1.2", "FT4X", i)[0]).links[1]
             for i in range(4)}
    assert names == {f"gridcharge-rs485-usb-1-1.2:1.{i}" for i in range(4)}


def test_ftdi_latency_timer_is_cut_to_1_ms(serial_rules: list[Rule]) -> None:
    _, port_chain = usb_serial_chain("ttyUSB0", "0403", "6001", "1.3", "A1")
    assert play(serial_rules, port_chain).attr_writes == {"latency_timer": "1"}
    _, ch340_port = usb_serial_chain("ttyUSB0", "1a86", "7523", "1.3", driver="ch341")
    assert play(serial_rules, ch340_port).attr_writes == {}


@pytest.mark.parametrize("chain", [
    usb_serial_chain("ttyUSB0", "067b", "2303", "1.3", "X", driver="pl2303")[0],   # unsupported
    [SysDev("ttyAMA0", "tty"), SysDev("fe201000.serial", "amba", "uart-pl011")],   # Pi UART
    [SysDev("ttyACM0", "tty"), SysDev("1-1.3:1.0", "usb", "cdc_acm", {"bInterfaceNumber": "00"})],
], ids=["pl2303", "ttyAMA0", "ttyACM0"])
def test_other_serial_ports_get_no_names(serial_rules: list[Rule], chain: list[SysDev]) -> None:
    out = play(serial_rules, chain)
    assert (out.links, out.group, out.attr_writes) == ([], None, {})


def test_remove_events_are_left_alone(serial_rules: list[Rule]) -> None:
    tty_chain, port_chain = usb_serial_chain("ttyUSB0", "0403", "6001", "1.3", "A1")
    assert play(serial_rules, tty_chain, action="remove").links == []
    assert play(serial_rules, port_chain, action="remove").attr_writes == {}


def test_gpio_chips_belong_to_group_gpio() -> None:
    rules = parse_rules(GPIO_RULES.read_text(), GPIO_RULES.name)
    out = play(rules, [SysDev("gpiochip0", "gpio"), SysDev("1f000d0000.gpio", "platform", "rp1-gpio")])
    assert (out.group, out.mode) == ("gpio", "0660")
    assert play(rules, [SysDev("ttyUSB0", "tty")]).group is None


# ------------------------------------------------------------------------- udev: udevadm itself
def test_udevadm_test_reads_our_rules_without_complaint() -> None:
    udevadm = need_tool("udevadm")
    unshare = need_tool("unshare")
    if os.geteuid() != 0:
        pytest.skip("udevadm test in a private mount namespace needs root")
    ttys = sorted(Path("/sys/class/tty").glob("ttyS*")) or sorted(Path("/sys/class/tty").glob("tty*"))
    if not ttys:
        pytest.skip("no tty device in /sys/class/tty")
    rules_src = " ".join(f"'{p}'" for p in RULE_FILES)
    script = ("set -e; mount -t tmpfs gc-run /run; mount -t tmpfs gc-dev /dev; "
              "mount -t tmpfs gc-udev /etc/udev; mkdir /etc/udev/rules.d; "
              f"cp {rules_src} /etc/udev/rules.d/; exec {udevadm} test {ttys[0]}")
    res = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    output = res.stdout + res.stderr
    if res.returncode != 0 and "mount" in output and "ermission" in output:
        pytest.skip(f"cannot mount in a private namespace here: {output[-300:]}")
    assert res.returncode == 0, output
    for path in RULE_FILES:
        assert f"Reading rules file: /etc/udev/rules.d/{path.name}" in output
    complaints = [line for line in output.splitlines()
                  if "gridcharge" in line and re.search(r"Invalid|Unknown|rror|ignoring", line)]
    if not _group_exists("gpio"):   # the installer creates it; this machine may not have it
        complaints = [c for c in complaints if "Unknown group 'gpio'" not in c]
    assert complaints == []
    devlinks = [line for line in output.splitlines() if line.startswith("DEVLINKS=")]
    assert not any("gridcharge" in line for line in devlinks), devlinks   # not an RS485 adapter


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


# ----------------------------------------------------------------------------- install.sh --root
def run_install(root: Path, *args: str, script: Path = INSTALL_SH, python: str = sys.executable,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """install.sh --root ROOT; ``python`` hashes the password and checks the config (--no-venv)."""
    return subprocess.run(["bash", str(script), "--root", str(root), "--python", python, *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


INSTALLED_FILES = {
    "etc/systemd/system/gridcharge.service",
    "etc/udev/rules.d/99-gridcharge-serial.rules",
    "etc/udev/rules.d/99-gridcharge-gpio.rules",
    "etc/gridcharge/config.yaml",
    "usr/local/bin/gridcharge",   # a link to the venv's command (dangling here: --no-venv)
}
VENV_COMMAND = "/opt/gridcharge/venv/bin/gridcharge"
WANTS_LINK = "etc/systemd/system/multi-user.target.wants/gridcharge.service"


def installed_password(res: subprocess.CompletedProcess[str]) -> str:
    found: list[str] = PASSWORD_LINE.findall(res.stdout)
    assert len(found) == 1, res.stdout
    return found[0]


def config_hash(config: Path) -> str:
    found: list[str] = re.findall(r'^  password_hash: "([^"]+)"$', config.read_text(), re.M)
    assert len(found) == 1
    return found[0]


def enable_in_root(root: Path) -> None:
    """What ``systemctl --root=ROOT enable gridcharge.service`` writes (WantedBy=multi-user.target)."""
    wants = root / WANTS_LINK
    wants.parent.mkdir(parents=True, exist_ok=True)
    wants.symlink_to("/etc/systemd/system/gridcharge.service")


@pytest.fixture()
def installed(tmp_path: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """A first install of one's own, for tests that change it (upgrade, uninstall)."""
    root = tmp_path / "root"
    root.mkdir()
    res = run_install(root, "--no-venv")
    assert res.returncode == 0, res.stdout + res.stderr
    yield root, res


@pytest.fixture(scope="module")
def first_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One first install shared by the tests that only look at it."""
    root = tmp_path_factory.mktemp("first") / "root"
    root.mkdir()
    res = run_install(root, "--no-venv")
    assert res.returncode == 0, res.stdout + res.stderr
    return root, res


def test_install_into_a_root_file_by_file(first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, res = first_install
    assert files_under(root) == INSTALLED_FILES
    unit = root / "etc/systemd/system/gridcharge.service"
    assert unit.read_bytes() == UNIT.read_bytes() and mode(unit) == 0o644
    for rules in RULE_FILES:
        installed_rules = root / "etc/udev/rules.d" / rules.name
        assert installed_rules.read_bytes() == rules.read_bytes() and mode(installed_rules) == 0o644
    assert (root / "var/lib/gridcharge").is_dir() and mode(root / "var/lib/gridcharge") == 0o750
    assert mode(root / "etc/gridcharge") == 0o755 and mode(root / "etc/gridcharge/tls") == 0o750
    assert os.readlink(root / "usr/local/bin/gridcharge") == VENV_COMMAND

    config = root / "etc/gridcharge/config.yaml"
    assert mode(config) == 0o640
    text = config.read_text()
    assert not re.search(r"^\s*password:", text, re.M), "a plain password was left in the config"
    password = installed_password(res)
    assert len(password) == 16
    pw_hash = config_hash(config)
    assert pw_hash.startswith("scrypt:") and check_password_hash(pw_hash, password)
    assert password not in text


def skipped_actions(res: subprocess.CompletedProcess[str]) -> list[str]:
    prefix = "skipped (--root): "
    return [line[len(prefix):] for line in res.stdout.splitlines() if line.startswith(prefix)]


def test_install_reports_every_system_action_as_skipped(
        first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, res = first_install
    skipped = skipped_actions(res)
    for action in ("useradd", "usermod", "groupadd", "chown gridcharge:gridcharge", "chown root:gridcharge",
                   "udevadm control", "systemctl daemon-reload"):
        assert any(action in line for line in skipped), action
    if not USER_EXISTED:   # --root must not have created an account on this machine
        with pytest.raises(KeyError):
            pwd.getpwnam("gridcharge")


def test_first_install_neither_enables_nor_starts_the_service(
        first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, res = first_install
    assert not [a for a in skipped_actions(res) if re.search(r"systemctl (enable|start|restart)", a)]
    assert "gridcharge.service is not enabled and not started: the site is not described yet" in res.stdout
    assert not (root / WANTS_LINK).is_symlink()


def test_first_install_ends_with_url_credentials_and_the_three_steps(
        first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, res = first_install
    last = res.stdout.splitlines()[-10:]
    assert re.fullmatch(r"  HTTP API: http://[0-9a-zA-Z.:\[\]-]+:80/cnf", last[0]), last
    assert last[1] == f"  status page: {last[0].split()[-1].removesuffix('cnf')} (a browser on the same network, " \
                      "same user and password)"
    assert last[2] == "  user:     admin"
    assert last[3] == f"  password: {installed_password(res)}"
    assert "shown only this once" in last[4] and last[5] == ""
    assert last[6:] == NEXT_STEPS
    assert res.stdout.count(installed_password(res)) == 1
    assert res.stderr == ""


def test_install_names_each_phase(first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, res = first_install
    phases = [line for line in res.stdout.splitlines() if line.startswith("==> ")]
    assert [p.split()[1] for p in phases] == ["system", "virtualenv", "systemd", "config:", "applying", "service"]
    assert "==> config: writing " in res.stdout and "for a first install (no devices yet" in res.stdout


def test_first_install_config_describes_no_devices(
        first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    from controller.config import load_config

    root, _ = first_install
    config = root / "etc/gridcharge/config.yaml"
    template = FIRST_INSTALL.read_text().splitlines()
    installed_lines = config.read_text().splitlines()
    others = [line for line in template if not re.match(r"^\s+password:", line)]
    assert [line for line in installed_lines if line in others] == others, "other lines changed or moved"

    cfg = load_config(str(config))
    assert (cfg.buses, cfg.meters, cfg.chargers, cfg.inputs, cfg.variables, cfg.rules) == ({}, {}, {}, {}, {}, ())
    assert cfg.smgw is None and cfg.site.grid_limit_w is None and cfg.site.chargers_limit_w is None
    assert cfg.http is not None and cfg.http.password is None and cfg.http.password_hash == config_hash(config)
    assert str(cfg.state_dir) == "/var/lib/gridcharge"

    check = subprocess.run([sys.executable, "-m", "controller.cli", "check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert check.returncode == 0 and "config OK" in check.stdout, check.stdout + check.stderr


def uncommented_examples(text: str) -> str:
    """The first-install template with its commented device sections (and the commented site keys)
    switched on, the way an electrician edits it: remove "# " in front of the lines."""
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if re.match(r"^# (buses|meters|chargers|inputs|variables):", line):
            in_block = True
        elif in_block and not line.startswith("#   "):
            in_block = False
        if in_block or re.match(r"^  # (grid_meter|chargers_limit_w):", line):
            line = line.replace("# ", "", 1)
        out.append(line)
    return "\n".join(out) + "\n"


def test_first_install_template_examples_form_a_valid_site(tmp_path: Path) -> None:
    """The commented devices in the first-install config are right as they stand: switched on, they
    pass check-config, so an electrician only changes addresses and ratings."""
    from controller.config import load_config

    site = tmp_path / "site.yaml"
    site.write_text(uncommented_examples(FIRST_INSTALL.read_text()).replace('password: ""', 'password: "12345678"'))
    cfg = load_config(str(site))
    assert set(cfg.meters) == {"M1"} and set(cfg.chargers) == {"E1", "E2"} and set(cfg.inputs) == {"RSE1"}
    assert set(cfg.buses) == {"rs485", "garage"} and cfg.site.grid_meter == "M1"
    assert cfg.site.chargers_limit_w is not None and cfg.variables == {"AVAIL": 100}


def test_the_template_alone_ships_no_usable_password(tmp_path: Path) -> None:
    """Copied by hand, without install.sh, the template fails check-config: no known password."""
    res = subprocess.run([sys.executable, "-m", "controller.cli", "check-config", "--config", str(FIRST_INSTALL)],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 1 and "http.password" in res.stderr, res.stdout + res.stderr


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_run_on_the_first_install_config_controls_nothing(
        first_install: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """``gridcharge run`` on the first-install config, given a meter to talk to (a real listening
    socket) and a free loopback port for its API: it says why it stops and stops, with exit code 6,
    before anything listens, a device is contacted or the state directory is made."""
    from controller.cli import EXIT_NOT_CONFIGURED, site_not_configured

    assert site_not_configured("/etc/gridcharge/config.yaml") == NOT_CONFIGURED
    root, _ = first_install
    data = yaml.safe_load((root / "etc/gridcharge/config.yaml").read_text())
    api_port = free_loopback_port()
    state = tmp_path / "state"
    with socket.socket() as meter:   # stands in for a Modbus TCP meter: any connection would queue here
        meter.bind(("127.0.0.1", 0))
        meter.listen()
        meter.setblocking(False)
        data["http"]["listen"] = f"127.0.0.1:{api_port}"
        data["state_dir"] = str(state)
        data["meters"] = {"M1": {"model": "sdm630", "host": "127.0.0.1", "port": meter.getsockname()[1],
                                 "unit": 1}}
        data["site"]["grid_meter"] = "M1"
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(data))
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                with socket.socket() as probe:   # the API port stays closed the whole time
                    probe.settimeout(1)
                    assert probe.connect_ex(("127.0.0.1", api_port)) != 0
                time.sleep(0.02)
            out, err = proc.communicate(timeout=5)
        finally:
            proc.kill()
        with pytest.raises(BlockingIOError):
            meter.accept()
    assert proc.returncode == EXIT_NOT_CONFIGURED, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"ERROR gridcharge: site not configured: edit {config}, run gridcharge check-config --config {config}, "
        f"then systemctl enable --now gridcharge"), err
    assert not state.exists()


def test_upgrade_keeps_config_and_state_and_leaves_a_never_enabled_service_off(
        installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = installed
    config = root / "etc/gridcharge/config.yaml"
    before = config.read_bytes()
    state_file = root / "var/lib/gridcharge/variables.json"
    state_file.write_text('{"AVAIL": 40}')
    res = run_install(root, "--no-venv")
    assert res.returncode == 0, res.stdout + res.stderr
    assert config.read_bytes() == before and mode(config) == 0o640
    assert state_file.read_text() == '{"AVAIL": 40}'
    assert "keeping existing" in res.stdout and not PASSWORD_LINE.search(res.stdout)
    assert "config OK" in res.stdout   # the kept config is checked again
    assert "gridcharge.service was never enabled: it is not enabled or started now either" in res.stdout
    assert not [a for a in skipped_actions(res) if re.search(r"systemctl (enable|start|restart)", a)]
    assert res.stdout.splitlines()[-4:] == NEXT_STEPS
    assert not (root / WANTS_LINK).is_symlink()


def test_upgrade_restarts_an_enabled_service(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = installed
    config = root / "etc/gridcharge/config.yaml"
    config.write_text(EXAMPLE.read_text())   # the site has been described since
    config.chmod(0o640)
    before = config.read_bytes()
    enable_in_root(root)
    res = run_install(root, "--no-venv")
    assert res.returncode == 0, res.stdout + res.stderr
    assert config.read_bytes() == before
    assert "skipped (--root): systemctl restart gridcharge.service" in res.stdout
    assert not [a for a in skipped_actions(res) if "systemctl enable" in a] and "Next steps:" not in res.stdout
    assert res.stdout.splitlines()[-1] == "  logs:     journalctl -u gridcharge -f"


def test_uninstall_keeps_config_and_state(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = installed
    config = root / "etc/gridcharge/config.yaml"
    before = config.read_bytes()
    (root / "opt/gridcharge/venv/bin").mkdir(parents=True)   # stands in for the venv
    local_rules = root / "etc/udev/rules.d/98-gridcharge-local.rules"
    local_rules.write_text('SUBSYSTEM=="tty", ATTRS{serial}=="A1", SYMLINK+="gridcharge-rs485-meters"\n')
    res = run_install(root, "--uninstall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skipped (--root): systemctl disable --now gridcharge.service" in res.stdout
    assert not (root / "opt/gridcharge").exists()
    assert files_under(root) == {"etc/gridcharge/config.yaml", "etc/udev/rules.d/98-gridcharge-local.rules"}
    assert config.read_bytes() == before and (root / "var/lib/gridcharge").is_dir()


def test_a_foreign_gridcharge_command_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    foreign = root / "usr/local/bin/gridcharge"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("#!/bin/sh\n")
    res = run_install(root, "--no-venv")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "is not gridcharge's link: left alone" in res.stderr
    assert run_install(root, "--uninstall").returncode == 0
    assert foreign.read_text() == "#!/bin/sh\n"


def test_uninstall_purge_removes_everything(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = installed
    (root / "etc/udev/rules.d/98-gridcharge-local.rules").write_text("\n")
    (root / "var/lib/gridcharge/variables.json").write_text("{}")
    res = run_install(root, "--uninstall", "--purge")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skipped (--root): userdel gridcharge" in res.stdout
    assert files_under(root) == set()
    assert not any("gridcharge" in str(p) for p in root.rglob("*"))


def test_refuses_bad_options(tmp_path: Path) -> None:
    assert run_install(tmp_path, "--purge").returncode == 2
    assert run_install(tmp_path, "--frobnicate").returncode == 2
    res = subprocess.run(["bash", str(INSTALL_SH), "--root", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "no such directory" in res.stderr
    assert files_under(tmp_path) == set()


def test_never_installs_a_known_password(tmp_path: Path) -> None:
    """A template without the expected password line must stop the installer, not ship a config
    whose password is written in this repository."""
    checkout = tmp_path / "checkout"
    for part in ("deploy", "udev", "docs"):
        shutil.copytree(REPO / part, checkout / part)
    for name in ("setup.cfg", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    template = checkout / "deploy/config.first-install.yaml"
    assert template.read_text().count('  password: ""') == 1
    template.write_text(template.read_text().replace('  password: ""', '  passwd: "1234abcd"'))
    root = tmp_path / "root"
    root.mkdir()
    res = run_install(root, "--no-venv", script=checkout / "deploy/install.sh")
    assert res.returncode != 0
    assert "expected exactly one" in res.stderr
    assert not (root / "etc/gridcharge/config.yaml").exists()
    assert not list((root / "etc/gridcharge").glob(".config.yaml*"))


# ------------------------------------------------- without --root, in a throwaway overlay of /
def test_real_install_in_a_throwaway_overlay(tmp_path: Path) -> None:
    """The production path (useradd, groups, chown, systemctl) on this machine's own /etc, /opt,
    /var and /usr/local, but through overlays in a private mount namespace, so nothing is left
    behind. /run is hidden too: the script then sees no running systemd or udev (as in a chroot).
    The first install enables nothing; an upgrade leaves a never-enabled unit off; once the
    electrician has enabled it, an upgrade keeps it enabled (it starts at the next boot)."""
    unshare = need_tool("unshare")
    dirs = ("etc", "opt", "var", "usr/local")
    if os.geteuid() != 0 or not all(Path("/", d).is_dir() for d in dirs):
        pytest.skip("needs root and /etc, /opt, /var, /usr/local")
    work = tmp_path / "overlay"
    work.mkdir()
    facts = ("stat -c '%a %U:%G %n' /etc/gridcharge/config.yaml /etc/gridcharge/tls /var/lib/gridcharge "
             "/etc/systemd/system/gridcharge.service /etc/udev/rules.d/99-gridcharge-serial.rules; "
             f"test -e /{WANTS_LINK} || echo 'not enabled'; "
             "echo link: $(readlink /usr/local/bin/gridcharge); "
             "echo groups: $(id -nG gridcharge); getent passwd gridcharge")
    script = f"""
set -e
mount -t tmpfs gc-overlay '{work}' || exit 77
for d in {' '.join(dirs)}; do
    n=$(echo "$d" | tr / -)
    mkdir -p '{work}'/$n-up '{work}'/$n-work
    mount -t overlay gc-$n -o lowerdir=/$d,upperdir='{work}'/$n-up,workdir='{work}'/$n-work /$d || exit 77
done
mount -t tmpfs gc-run /run
bash '{INSTALL_SH}' --no-venv --python '{sys.executable}'
echo '== facts'; {facts}
echo '== again'; bash '{INSTALL_SH}' --no-venv --python '{sys.executable}'
echo '== enabled'; systemctl enable gridcharge.service 2>&1; readlink /{WANTS_LINK}
bash '{INSTALL_SH}' --no-venv --python '{sys.executable}'
echo '== purge'; bash '{INSTALL_SH}' --uninstall --purge
getent passwd gridcharge || echo 'no user gridcharge'
test ! -e /etc/gridcharge && test ! -e /var/lib/gridcharge && test ! -L /usr/local/bin/gridcharge && echo 'all gone'
"""
    res = subprocess.run([unshare, "--mount", "--propagation", "private", "bash", "-c", script],
                         capture_output=True, text=True, timeout=120)
    if res.returncode == 77:
        pytest.skip(f"overlay mounts are not possible here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stdout + res.stderr
    first, rest = res.stdout.split("== facts\n")
    facts_out, rest = rest.split("== again\n")
    again, rest = rest.split("== enabled\n")
    enabled, purge = rest.split("== purge\n")
    assert "skipped (--root)" not in res.stdout
    assert "gridcharge.service is not enabled and not started: the site is not described yet" in first
    assert first.splitlines()[-4:] == NEXT_STEPS
    password = installed_password(subprocess.CompletedProcess([], 0, first, ""))
    assert len(password) == 16
    for line in ("640 root:gridcharge /etc/gridcharge/config.yaml", "750 root:gridcharge /etc/gridcharge/tls",
                 "750 gridcharge:gridcharge /var/lib/gridcharge",
                 "644 root:root /etc/systemd/system/gridcharge.service",
                 "644 root:root /etc/udev/rules.d/99-gridcharge-serial.rules",
                 "not enabled", f"link: {VENV_COMMAND}"):
        assert line in facts_out.splitlines(), facts_out
    groups = next(line for line in facts_out.splitlines() if line.startswith("groups:")).split()[1:]
    assert {"gridcharge", "dialout", "gpio"} <= set(groups)
    assert ":/var/lib/gridcharge:/usr/sbin/nologin" in facts_out
    assert "keeping existing /etc/gridcharge/config.yaml" in again and not PASSWORD_LINE.search(again)
    assert "gridcharge.service was never enabled: it is not enabled or started now either" in again
    assert "/etc/systemd/system/gridcharge.service" in enabled.splitlines()
    assert "gridcharge.service stays enabled and starts at the next boot" in enabled
    assert "no user gridcharge" in purge and "all gone" in purge
    assert _user_exists("gridcharge") == USER_EXISTED   # the machine itself is untouched
    assert not Path("/usr/local/bin/gridcharge").is_symlink()


# ------------------------------------------------------------------- the real venv, one full run
def base_python() -> str:
    """The interpreter behind this test's venv: it has the venv module (it made .venv)."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate) if candidate.exists() else getattr(sys, "_base_executable", sys.executable)


@pytest.fixture(scope="module")
def full_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    if os.environ.get("GRIDCHARGE_SKIP_VENV_INSTALL") == "1" and not IN_CI:
        pytest.skip("GRIDCHARGE_SKIP_VENV_INSTALL=1")
    root = tmp_path_factory.mktemp("full") / "root"
    root.mkdir()
    build_existed = (REPO / "build").exists()
    res = run_install(root, python=base_python(), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    if not build_existed:
        assert not (REPO / "build").exists(), "install.sh built in the checkout"
    return root, res


def test_full_install_builds_a_working_venv(full_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, res = full_install
    gridcharge = root / "opt/gridcharge/venv/bin/gridcharge"
    config = root / "etc/gridcharge/config.yaml"
    check = subprocess.run([str(gridcharge), "check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "config OK" in check.stdout and "smgw" not in check.stdout
    assert check_password_hash(config_hash(config), installed_password(res))
    assert (root / "opt/gridcharge/README.md").is_file() and (root / "opt/gridcharge/docs/install.md").is_file()
    assert (root / "opt/gridcharge/config.example.yaml").read_bytes() == EXAMPLE.read_bytes()
    assert os.readlink(root / "usr/local/bin/gridcharge") == VENV_COMMAND and gridcharge.is_file()


def test_full_install_shows_its_progress(full_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """A line per phase, and pip's own lines for the long step, so a slow Pi is seen working."""
    _, res = full_install
    lines = res.stdout.splitlines()
    pip_phase = lines.index("==> installing gridcharge and its dependencies (pip, about a minute)")
    assert any(line.startswith("==> creating the virtualenv ") for line in lines[:pip_phase])
    next_phase = next(i for i in range(pip_phase + 1, len(lines)) if lines[i].startswith("==> "))
    pip_lines = lines[pip_phase + 1:next_phase]
    assert any(line.startswith("Successfully installed") for line in pip_lines), pip_lines
    assert any(line.startswith(("Processing ", "Collecting ", "Requirement already")) for line in pip_lines)


def test_installed_command_stops_on_the_first_install_config(
        full_install: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    root, _ = full_install
    data = yaml.safe_load((root / "etc/gridcharge/config.yaml").read_text())
    data["http"]["listen"] = f"127.0.0.1:{free_loopback_port()}"
    data["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    res = subprocess.run([str(root / "opt/gridcharge/venv/bin/gridcharge"), "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 6 and "site not configured: edit " in res.stderr, res.stderr
    assert not (tmp_path / "state").exists()


def test_installed_unit_verifies_inside_the_root(full_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = full_install
    stock_units = Path("/usr/lib/systemd/system")
    if not stock_units.is_dir():
        need_tool("systemd-analyze")   # fails in CI, skips elsewhere
        pytest.skip("no /usr/lib/systemd/system")
    target = root / "usr/lib/systemd/system"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stock_units, target, symlinks=True, dirs_exist_ok=True)
    try:
        res = systemd_verify(f"--root={root}", "gridcharge.service")
        assert (res.returncode, res.stdout + res.stderr) == (0, "")
    finally:
        shutil.rmtree(root / "usr")


def test_rerun_upgrades_the_code_and_keeps_the_config(
        full_install: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = full_install
    config = root / "etc/gridcharge/config.yaml"
    before = config.read_bytes()
    site_packages = next((root / "opt/gridcharge/venv/lib").glob("python3*/site-packages"))
    installed_cli = site_packages / "controller" / "cli.py"
    installed_cli.write_text("# an older release\n")
    res = run_install(root, python=base_python(), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert installed_cli.read_bytes() == (REPO / "controller" / "cli.py").read_bytes()
    assert config.read_bytes() == before
    assert not PASSWORD_LINE.search(res.stdout)
    assert "==> updating the virtualenv " in res.stdout
    assert "gridcharge.service was never enabled" in res.stdout
