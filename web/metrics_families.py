"""The published ``Status`` as Prometheus metric families (``GET /metrics``, docs/api.md).

Pure: a ``Status`` in, ``prometheus_client`` metric families out, built at scrape time from the
status the loop published last, so the loop does no work for the metrics besides the cycle
histogram (``web.metrics``). Names are ``gridcharge_...`` with the unit in the name (``_watts``,
``_amperes``, ``_seconds``, ``_watt_hours_total``); the API's cFos units (mA) are not used here.

Decisions:

- A value a device does not report, or cannot report now (offline, fault), has no sample at all,
  never a made-up 0 (as ``get_dev_info`` says ``null``): a graph shows a gap, an alert on
  ``gridcharge_device_online == 0`` says why. The same for a limit that is not set (no
  ``grid_limit_w``: no ``gridcharge_grid_limit_watts``).
- Labels come from the configuration (device, link, variable, rule names) or from small fixed
  sets (phase, IEC state, reason kind), never from request data or from the numbers of a
  cycle, so the number of series is bounded by the site. The ``lreason`` text carries this
  cycle's numbers, so it is not a label; its kind and subject are.
- Energy registers are counters (``_total``): a meter's register only grows (a replaced meter
  starts again at its own reading, which Prometheus's ``increase()`` takes as a reset).
- A charger's state is a number (the cFos ``state`` of ``get_dev_info``: 1 no car, 2 car
  connected, 3 charging, 4 with ventilation, 5 error, 6 offline) and an enum: one series per IEC
  letter and ``offline``, exactly one of them 1 (``gridcharge_charger_iec_state``).
- Variables: those whose value this cycle is a number or a boolean (true = 1), by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controller.cfos import CFOS_OFFLINE, cfos_state
from controller.status import ChargerStatus, DeviceStatus, Status

PHASES = ("L1", "L2", "L3")
#: The IEC 61851-1 letters (``hal.types.IecState``; web does not import hal) and the word the
#: enum uses for a charger that does not answer.
IEC_STATES = ("A", "B", "C", "D", "E", "F")
OFFLINE = "offline"

#: ``LinkStats.details`` keys with a metric of their own: key → (name, type, help). Any other
#: key goes to ``gridcharge_link_detail{link, detail}``, so a new detail shows without a change here.
LINK_DETAILS: dict[str, tuple[str, str, str]] = {
    "timeouts": ("gridcharge_link_timeouts", "counter", "Transactions of the link that got no answer."),
    "wire_time_s": ("gridcharge_link_wire_time_seconds", "counter",
                    "Time the RS485 line was busy with frames, from the frame sizes and the baud rate."),
    "wire_time_s_per_cycle": ("gridcharge_link_wire_time_last_cycle_seconds", "gauge",
                              "Time the RS485 line was busy with frames in the last cycle."),
    "connected": ("gridcharge_link_connected_boxes", "gauge",
                  "OCPP wallboxes connected to the central system now."),
    "boxes": ("gridcharge_link_boxes", "gauge", "OCPP wallboxes configured on the central system."),
}


def number(value: Any) -> float | None:
    """A finite float, or None (unknown, not a number, NaN, infinite). Booleans count as 0/1."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _add(family: GaugeMetricFamily | CounterMetricFamily, labels: Sequence[str], value: Any) -> None:
    """One sample, left out when the value is not known (see the module docstring)."""
    known = number(value)
    if known is not None:
        family.add_metric(list(labels), known)


def _gauge(name: str, help_text: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, labels=list(labels))


def _counter(name: str, help_text: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, labels=list(labels))


def _live(dev: DeviceStatus, field: str) -> Any:
    """The reading while the device is healthy and of the kind ``field`` proves, else None."""
    reading = dev.reading if dev.error is None else None
    return reading if hasattr(reading, field) else None


# --------------------------------------------------------------------------- the loop and the site


def loop_families(status: Status) -> Iterator[Metric]:
    yield CounterMetricFamily("gridcharge_cycles", "Control cycles completed since the start.",
                              value=status.cycle_count)
    yield CounterMetricFamily("gridcharge_cycle_overruns",
                              "Scheduled cycles that ended after the next one was due.", value=status.overruns)
    yield CounterMetricFamily("gridcharge_cycles_failed", "Cycles that failed with an error (logged).",
                              value=status.failed_cycles)
    last = _gauge("gridcharge_last_cycle_timestamp_seconds",
                  "Unix time the last completed cycle started (absent before the first).")
    if status.cycle_count > 0:
        _add(last, (), status.wall_time)
    yield last


def site_families(status: Status, main_fuse_a: float | None) -> Iterator[Metric]:
    power = _gauge("gridcharge_grid_power_watts", "Power at the grid connection (import positive).")
    _add(power, (), status.grid_power_w)
    yield power
    current = _gauge("gridcharge_grid_current_amperes", "Current per phase at the grid connection.", ["phase"])
    for phase, value in zip(PHASES, status.grid_current_a or ()):
        _add(current, (phase,), value)
    yield current
    fuse = _gauge("gridcharge_main_fuse_amperes", "The main fuse per phase (site.main_fuse_a).")
    _add(fuse, (), main_fuse_a)
    yield fuse
    limits: tuple[tuple[str, float | None, str], ...] = (
        ("gridcharge_grid_limit_watts", status.grid_limit_w,
         "The grid power limit in force (site.grid_limit_w; absent: none)."),
        ("gridcharge_chargers_limit_watts", status.chargers_limit_w,
         "The power limit for all chargers in force (site.chargers_limit_w, the fail-safe; absent: none)."),
        ("gridcharge_power_headroom_watts", status.power_headroom_w,
         "Power the chargers may still draw under the power limits this cycle (absent: no power limit)."),
    )
    for name, limit, text in limits:
        family = _gauge(name, text)
        _add(family, (), limit)
        yield family
    headroom = _gauge("gridcharge_headroom_amperes",
                      "Current per phase the main fuse leaves for the chargers this cycle.", ["phase"])
    for phase, value in zip(PHASES, status.headroom_a):
        _add(headroom, (phase,), value)
    yield headroom
    yield GaugeMetricFamily("gridcharge_failsafe_active",
                            "1 while the fail-safe limit is in force (get_dev_info params.failsafe says why).",
                            value=float(status.failsafe is not None))
    limiting = _gauge("gridcharge_limiting", "1 for each site limit that limited a charger this cycle.", ["limit"])
    for name in status.limiting:
        limiting.add_metric([name], 1.0)
    yield limiting
    yield GaugeMetricFamily("gridcharge_faults", "Fault lines in force (get_dev_info params.faults).",
                            value=len(status.faults))
    yield GaugeMetricFamily("gridcharge_formula_errors", "Formulas (limits, maximums, rules) that failed this cycle.",
                            value=len(status.formula_errors))


def variable_families(status: Status) -> Iterator[Metric]:
    values = _gauge("gridcharge_variable_value", "Value of a variable this cycle (numbers; true = 1).", ["name"])
    for var in status.variables:
        if var.error is None:
            _add(values, (var.name,), var.value)
    yield values


# --------------------------------------------------------------------------- devices


def device_families(status: Status) -> Iterator[Metric]:
    """What every device has: identity, online state, age of its reading, how long a fault lasts."""
    info = _gauge("gridcharge_device_info", "A configured device (always 1), with its kind, model and address.",
                  ["device", "kind", "model", "address"])
    online = _gauge("gridcharge_device_online", "1 while the device answers with usable values.", ["device", "kind"])
    age = _gauge("gridcharge_device_reading_age_seconds",
                 "Seconds since the device's last good reading (absent: never read).", ["device", "kind"])
    fault = _gauge("gridcharge_device_fault_seconds", "How long the device's fault has lasted (0: none).",
                   ["device", "kind"])
    devices = [*status.meters, *(ch.device for ch in status.chargers), *status.inputs]
    for dev in devices:
        info.add_metric([dev.id, dev.kind, dev.model, dev.address], 1.0)
        online.add_metric([dev.id, dev.kind], float(dev.online))
        _add(age, (dev.id, dev.kind), dev.age_s)
        fault.add_metric([dev.id, dev.kind], float(dev.error_s) if dev.error is not None else 0.0)
    yield from (info, online, age, fault)


def meter_families(meters: Sequence[DeviceStatus]) -> Iterator[Metric]:
    power = _gauge("gridcharge_meter_power_watts", "Power the meter measures (import positive).", ["device"])
    current = _gauge("gridcharge_meter_current_amperes", "Current per phase the meter measures.", ["device", "phase"])
    voltage = _gauge("gridcharge_meter_voltage_volts", "Voltage per phase the meter measures.", ["device", "phase"])
    imported = _counter("gridcharge_meter_import_watt_hours", "The meter's import energy register.", ["device"])
    exported = _counter("gridcharge_meter_export_watt_hours", "The meter's export energy register.", ["device"])
    for dev in meters:
        live = _live(dev, "import_wh")
        if live is None:
            continue
        _add(power, (dev.id,), live.power_w)
        for phase, value in zip(PHASES, live.current_a or ()):
            _add(current, (dev.id, phase), value)
        for phase, value in zip(PHASES, live.voltage_v or ()):
            _add(voltage, (dev.id, phase), value)
        _add(imported, (dev.id,), live.import_wh)
        _add(exported, (dev.id,), live.export_wh)
    yield from (power, current, voltage, imported, exported)


def charger_families(chargers: Sequence[ChargerStatus]) -> Iterator[Metric]:
    state = _gauge("gridcharge_charger_state",
                   "The cFos state: 1 no car, 2 car connected, 3 charging, 4 with ventilation, 5 error, 6 offline.",
                   ["device"])
    iec = _gauge("gridcharge_charger_iec_state",
                 "1 for the charger's IEC 61851 state (A..F) or 'offline', 0 for the others.", ["device", "state"])
    current = _gauge("gridcharge_charger_current_amperes", "Current per phase the car draws.", ["device", "phase"])
    power = _gauge("gridcharge_charger_power_watts", "Charging power the box reports.", ["device"])
    energy = _counter("gridcharge_charger_energy_watt_hours", "The box's energy register.", ["device"])
    command = _gauge("gridcharge_charger_command_amperes",
                     "Current the allocation gave the charger this cycle (0: paused).", ["device"])
    written = _gauge("gridcharge_charger_written_amperes",
                     "Current limit last written to the box (absent: none written yet).", ["device"])
    maximum = _gauge("gridcharge_charger_max_current_amperes", "The charger's maximum in force this cycle.", ["device"])
    minimum = _gauge("gridcharge_charger_min_current_amperes", "The charger's minimum (below it: paused).", ["device"])
    override = _gauge("gridcharge_charger_override_amperes",
                      "Current cap of an override_device call (absent: none).", ["device"])
    enabled = _gauge("gridcharge_charger_enabled", "0 while an override disables the charger (flags=C).", ["device"])
    reason = _gauge("gridcharge_charger_limited_by",
                    "1 for what decided the charger's current this cycle: its kind and subject "
                    "(get_dev_info lreason has the words).", ["device", "why", "subject"])
    for ch in chargers:
        dev_id = ch.device.id
        live = _live(ch.device, "state")
        letter = live.state.value if live is not None else OFFLINE
        state.add_metric([dev_id], float(cfos_state(live.state) if live is not None else CFOS_OFFLINE))
        for name in (*IEC_STATES, OFFLINE):
            iec.add_metric([dev_id, name], float(name == letter))
        if live is not None:
            for phase, value in zip(PHASES, live.current_a or ()):
                _add(current, (dev_id, phase), value)
            _add(power, (dev_id,), live.power_w)
            _add(energy, (dev_id,), live.energy_wh)
        _add(command, (dev_id,), ch.command_a)
        _add(written, (dev_id,), ch.written_a)
        _add(maximum, (dev_id,), ch.max_current_a)
        _add(minimum, (dev_id,), ch.min_current_a)
        _add(override, (dev_id,), ch.override_a)
        enabled.add_metric([dev_id], float(ch.enabled))
        kind = getattr(ch.reason, "kind", None)
        reason.add_metric([dev_id, str(getattr(kind, "value", "other")), str(getattr(ch.reason, "subject", ""))], 1.0)
    yield from (state, iec, current, power, energy, command, written, maximum, minimum, override, enabled, reason)


def input_families(inputs: Sequence[DeviceStatus]) -> Iterator[Metric]:
    active = _gauge("gridcharge_input_active", "1 while the input (a ripple-control contact) is active.", ["device"])
    for dev in inputs:
        live = _live(dev, "active")
        if live is not None:
            active.add_metric([dev.id], float(live.active))
    yield active


# --------------------------------------------------------------------------- links and the backend


def link_families(status: Status) -> Iterator[Metric]:
    requests = _counter("gridcharge_link_requests", "Requests made on the link (a Modbus bus, the OCPP server).",
                        ["link"])
    errors = _counter("gridcharge_link_errors", "Requests on the link that failed.", ["link"])
    latency = _gauge("gridcharge_link_latency_p95_seconds",
                     "95th percentile of the link's recent request latencies.", ["link"])
    known: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        key: (_counter if kind == "counter" else _gauge)(name, text, ["link"])
        for key, (name, kind, text) in LINK_DETAILS.items()
    }
    other = _gauge("gridcharge_link_detail", "A figure only this kind of link has, by name.", ["link", "detail"])
    for link in status.links:
        _add(requests, (link.name,), link.requests)
        _add(errors, (link.name,), link.errors)
        _add(latency, (link.name,), link.latency_p95_s)
        for key, value in link.details.items():
            if key in known:
                _add(known[key], (link.name,), value)
            else:
                _add(other, (link.name, key), value)
    yield from (requests, errors, latency, *known.values(), other)


def backend_families(status: Status) -> Iterator[Metric]:
    """The gateway to the supplier's OCPP backend; nothing when it is not configured."""
    backend = status.backend
    if backend is None:
        return
    yield GaugeMetricFamily("gridcharge_backend_enabled", "1 while the gateway to the supplier's backend runs.",
                            value=float(backend.enabled))
    yield CounterMetricFamily("gridcharge_backend_dropped_messages",
                              "Transaction messages the backend refused for good.", value=backend.dropped)
    connected = _gauge("gridcharge_backend_connected",
                       "1 while the charger's charge point is connected to the backend and booted.", ["charger"])
    queued = _gauge("gridcharge_backend_queued_messages",
                    "Transaction messages of the charger stored and not yet delivered.", ["charger"])
    for cp in backend.charge_points:
        connected.add_metric([cp.charger_id], float(cp.connected))
        queued.add_metric([cp.charger_id], float(cp.queued))
    yield from (connected, queued)


def status_families(status: Status, *, main_fuse_a: float | None = None) -> list[Metric]:
    """Every family of one ``Status`` (``main_fuse_a``: the config's fuse, not in the status)."""
    return [
        *loop_families(status),
        *site_families(status, main_fuse_a),
        *variable_families(status),
        *device_families(status),
        *meter_families(status.meters),
        *charger_families(status.chargers),
        *input_families(status.inputs),
        *link_families(status),
        *backend_families(status),
    ]
