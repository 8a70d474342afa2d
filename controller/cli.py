"""The ``gridcharge`` command line: run, demo, check-config, read, backup, restore.

Exit codes: 0 clean stop, 1 bad config (or a port that cannot be bound; ``restore``: a backup
that does not validate, or the service is running), 2 usage, 3 a device did not answer
(``read``), 4 the state directory or the grid log cannot be used (``run``: the reason is the
last line on stderr, and nothing was listening or talking to a device yet; ``backup``/``restore``:
a file cannot be read or written), 5 ``run`` ended by an unexpected error (traceback in the
log), 6 ``run`` found no chargers in the config: the site is not described yet (a first install),
so it controls nothing and says so in one line; the systemd unit does not restart it on this
code; ``status``: 7 the service cannot be reached or refused the login (one line on stderr
says which). Logs go to stderr, where journald picks them up.

Global options (``--log-level``) are accepted before and after the command
(``gridcharge check-config --log-level DEBUG``), also by commands added later: ``_parser``
gives every subcommand a copy of them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.config import Config

DEFAULT_CONFIG = "/etc/gridcharge/config.yaml"
EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_DEVICE, EXIT_STATE, EXIT_FAILED = 0, 1, 2, 3, 4, 5
EXIT_NOT_CONFIGURED = 6  # deploy/gridcharge.service: RestartPreventExitStatus=6
log = logging.getLogger("gridcharge")


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _parser() -> argparse.ArgumentParser:
    from controller.version import version

    p = argparse.ArgumentParser(prog="gridcharge", description="Grid-friendly EV charging manager.")
    p.add_argument("--version", action="version", version=f"gridcharge {version()}")
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the controller (the service)")
    run.add_argument("--config", default=DEFAULT_CONFIG)
    demo = sub.add_parser("demo", help="simulated site on loopback with the controller and a scripted scenario")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--no-scenario", action="store_true", help="just run, no scripted events")
    check = sub.add_parser("check-config", help="validate a config file without contacting any device")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    read = sub.add_parser("read", help="read one device once and print its values")
    read.add_argument("device", help="device id from the config, e.g. M1 or E2")
    read.add_argument("--config", default=DEFAULT_CONFIG)
    hashpw = sub.add_parser("hash-password", help="print a password hash for http.password_hash")
    hashpw.add_argument("--stdin", action="store_true", help="read the password from standard input")
    status = sub.add_parser(
        "status", help="show the running service's site, chargers, limits and faults (from its HTTP API)",
        description="Asks the running service over its LAN API (http.listen of the config). The password: "
                    "GRIDCHARGE_PASSWORD, else the config's http.password, else asked on the terminal.")
    status.add_argument("--config", default=DEFAULT_CONFIG)
    status.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between frames with --watch")
    status.add_argument("--user", default=None, help="API user (default: http.user of the config)")
    backup = sub.add_parser("backup", help="save config, variables, grid log and certificates into one file")
    backup.add_argument("file", help="the backup file to write (a .tar.gz)")
    backup.add_argument("--config", default=DEFAULT_CONFIG)
    restore = sub.add_parser("restore", help="check a backup completely, then put its files back")
    restore.add_argument("file", help="a file written by gridcharge backup")
    restore.add_argument("--config", default=DEFAULT_CONFIG, help="where the config goes")
    _accept_global_options_anywhere(sub)
    return p


def _accept_global_options_anywhere(sub: Any) -> None:
    """Give every subcommand the global options too, so that they may follow the command.

    The subcommand's copy has no default (``SUPPRESS``): given after the command it wins,
    left out it leaves the value given before the command (or the global default) alone.
    """
    for command in sub.choices.values():
        command.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
                             help="also accepted before the command")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if level != "DEBUG":  # the ocpp package logs every message at INFO: two lines a second per box
        logging.getLogger("ocpp").setLevel(logging.WARNING)


def _load(path: str) -> Config | None:
    """Load and validate a config, or print every error with its path and return None."""
    from controller.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        counts = [f"{len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}"]
        if exc.warnings:
            counts.append(f"{len(exc.warnings)} warning{'s' if len(exc.warnings) != 1 else ''}")
        print(f"{path}: {', '.join(counts)}", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        for line in exc.warnings:
            print(f"  warning: {line}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    from controller.config import config_warnings

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    for warning in config_warnings(cfg):
        print(f"warning: {warning}")
    print(describe(cfg))
    print("config OK")
    return EXIT_OK


def describe(cfg: Config) -> str:
    """What would run, in a few lines an installer can check against the wiring."""
    from controller.config import GpioInputConfig

    s = cfg.site
    lines = [f"site: main fuse {s.main_fuse_a:g} A per phase at {s.voltage_v:g} V, cycle {s.cycle_s:g} s, "
             f"grid meter {s.grid_meter or 'none'}, fail-safe {s.failsafe_limit_w:g} W"]
    if s.grid_limit_w is not None:
        lines.append(f"  grid_limit_w = {s.grid_limit_w}")
    if s.chargers_limit_w is not None:
        lines.append(f"  chargers_limit_w = {s.chargers_limit_w}")
    for name, bus in cfg.buses.items():
        where = bus.port if bus.type == "rtu" else f"{bus.host}:{bus.port}"
        lines.append(f"bus {name}: {bus.type} {where}")
    for dev_id, d in cfg.meters.items():
        via = d.bus or f"{d.host}:{d.tcp_port}"
        lines.append(f"meter {dev_id}: {d.model or 'custom profile'} on {via} unit {d.unit}")
    for dev_id, c in cfg.chargers.items():
        model = getattr(c, "model", None) or "custom profile"
        lines.append(f"charger {dev_id}: {model} on {c.connection_text()}")
    for dev_id, i in cfg.inputs.items():
        lines.append(f"input {dev_id}: " + (f"GPIO{i.gpio}" if isinstance(i, GpioInputConfig)
                                          else f"{i.bus_name} unit {i.unit}"))
    for name, expr in cfg.variables.items():
        lines.append(f"variable {name} = {expr}")
    for rule in cfg.rules:
        lines.append(f'rule "{rule.name}": when {rule.when}')
    return "\n".join(lines)


def cmd_read(args: argparse.Namespace) -> int:
    """Read one device once; only that device and its bus are built (no GPIO, no other bus)."""
    from controller.build import OneShotUnsupported, UnknownDevice, build_device
    from controller.commands.device_read import read_once

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    try:
        hw, handle = build_device(cfg, args.device)
    except UnknownDevice:
        known = ", ".join([*cfg.meters, *cfg.chargers, *cfg.inputs]) or "none"
        print(f"no device {args.device!r} in {args.config} (its devices: {known})", file=sys.stderr)
        return EXIT_USAGE
    except OneShotUnsupported as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        report = read_once(hw, handle)
    finally:
        hw.close()
    print(report.text, file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_DEVICE


def cmd_run(args: argparse.Namespace) -> int:
    """All or nothing: the state is opened before anything listens; once the listeners are up,
    every way out of ``service.run()`` closes them, so the process always ends (SIGTERM too)."""
    from controller.config import config_warnings
    from controller.service import Service, StartError

    from web.runtime import start_web  # the entry point wires the web layer onto the controller

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if not cfg.chargers:  # nothing to control: start nothing (no listener, no device, no state)
        log.error("%s", site_not_configured(args.config))
        return EXIT_NOT_CONFIGURED
    for warning in config_warnings(cfg):
        log.warning("config: %s", warning)
    try:
        service = Service(cfg)
    except StartError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STATE
    except OSError as exc:  # the hardware (a serial port that cannot be opened)
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    _stop_on_signals(service.stop)  # from here on a SIGTERM makes run() return at once
    try:
        start_web(service)
    except OSError as exc:
        log.error("cannot start the HTTP API: %s", exc)
        service.close()
        return EXIT_CONFIG
    except Exception:
        log.exception("cannot start the HTTP API")
        service.close()
        return EXIT_FAILED
    try:
        service.run()
    except Exception:
        log.exception("gridcharge stopped by an unexpected error")
        return EXIT_FAILED
    return EXIT_OK


def site_not_configured(path: str) -> str:
    """The one line ``run`` logs for a config without chargers, naming the next three steps."""
    check = "gridcharge check-config" + ("" if path == DEFAULT_CONFIG else f" --config {path}")
    return f"site not configured: edit {path}, run {check}, then systemctl enable --now gridcharge"


def _stop_on_signals(stop: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print a werkzeug scrypt hash to paste into ``http.password_hash``."""
    import getpass

    from werkzeug.security import generate_password_hash

    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    if len(password) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return EXIT_USAGE
    print(generate_password_hash(password, method="scrypt"))
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    """Write config, variables, grid log and TLS files to one file; safe while the service runs."""
    import sqlite3
    from pathlib import Path

    from controller.records.backup import create_backup

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    try:
        result = create_backup(cfg, Path(args.config).absolute(), Path(args.file))
    except (OSError, sqlite3.Error) as exc:
        print(f"backup failed, nothing written: {exc}", file=sys.stderr)
        return EXIT_STATE
    for line in result.missing:
        print(f"warning: {line}")
    for entry in result.manifest.entries:
        print(f"  {entry.name:24} {entry.size:>12} bytes  from {entry.source}")
    print(f"backup written: {result.path} ({result.size} bytes, {len(result.manifest.entries)} files); "
          "keep it private: it holds the API password (hash) and any TLS private keys")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Check a backup completely, refuse while the service runs, then replace file by file."""
    from pathlib import Path

    from controller.records.restore import RestoreRefused, restore_backup

    try:
        result = restore_backup(Path(args.file), Path(args.config))
    except RestoreRefused as exc:
        print(f"restore refused, nothing changed: {args.file}", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"restore failed, nothing changed: {exc}", file=sys.stderr)
        return EXIT_STATE
    m = result.manifest
    print(f"restored the backup of {m.host} made {_utc(m.created)} by gridcharge {m.gridcharge}:")
    for f in result.files:
        kept = f"; the previous one is kept as {f.kept_as.name}" if f.kept_as is not None else ""
        print(f"  {f.path}: {f.outcome}{kept}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print("next: sudo systemctl start gridcharge")
    return EXIT_OK


def _utc(unix_s: float) -> str:
    from controller.records.statedir import utc_text

    return utc_text(unix_s)


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo

    return run_demo(duration_s=args.duration, scenario=not args.no_scenario, on_signal=_stop_on_signals)


def cmd_status(args: argparse.Namespace) -> int:
    from controller.commands.live_screen import console_for
    from controller.commands.status_client import StatusUnavailable, client_for, terminal_prompt
    from controller.commands.status_command import EXIT_SERVICE, show_once, watch

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    try:
        client = client_for(cfg.http, user=args.user, ask=terminal_prompt())
        if args.watch:
            watch(client, console_for(sys.stdout), interval_s=args.interval)
        else:
            show_once(client, console_for(sys.stdout))
    except StatusUnavailable as exc:
        print(f"gridcharge status: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    except (KeyboardInterrupt, EOFError):  # Ctrl-C while watching, or at the password prompt
        return EXIT_OK
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    commands = {"run": cmd_run, "demo": cmd_demo, "check-config": cmd_check_config, "read": cmd_read,
                "hash-password": cmd_hash_password, "status": cmd_status}
    commands.update({"backup": cmd_backup, "restore": cmd_restore})
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
