"""The metrics of a hand-built ``Status`` (``web.metrics_families``), the cycle histogram and the
request counter (``web.metrics``), read back through prometheus-client's own exposition and parser."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controller.allocation.types import Reason, Why
from controller.status import (
    EMPTY_STATUS,
    BackendStatus,
    ChargePointStatus,
    ChargerStatus,
    DeviceStatus,
    FormulaStatus,
    Status,
    VariableStatus,
)
from hal.types import ChargerReading, IecState, InputReading, LinkStats, MeterReading
from web.metrics import CYCLE_BUCKETS_S, ApiRequests, CycleDurations, Metrics
from web.metrics_families import IEC_STATES

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def device(id: str, kind: str, reading: Any, *, error: str | None = None, model: str = "sdm630") -> DeviceStatus:
    return DeviceStatus(id=id, kind=kind, model=model, address=f"tcp:10.0.0.1:502 unit 1 ({id})",
                        online=error is None, age_s=0.4 if reading else None, error=error,
                        error_s=12.5 if error else 0.0, reading=reading)


def charger(id: str, reading: Any, *, error: str | None = None, **kw: Any) -> ChargerStatus:
    fields: dict[str, Any] = dict(phases=3, phase=0, priority=1, min_current_a=6.0, max_current_a=16.0,
                                  command_a=10.0, written_a=10.0, reason=Reason(Why.SITE_LIMIT, "fuse L1: 10 A", "fuse L1"),
                                  enabled=True, override_a=None)
    fields.update(kw)
    return ChargerStatus(device=device(id, "charger", reading, error=error, model="heidelberg"), **fields)


def site_status(**kw: Any) -> Status:
    meter = device("M1", "meter", MeterReading(power_w=5230.7, current_a=(10.0, 8.0, 7.0),
                                               voltage_v=(230.1, 229.9, 231.0), import_wh=123456.0, export_wh=0.0))
    e1 = charger("E1", ChargerReading(state=IecState.C, current_a=(9.9, 10.0, 10.1), power_w=6900.0,
                                      energy_wh=12345.0, raw_state=7))
    # E2 was read once, then fell silent: its old reading must not show as a live value
    e2 = charger("E2", ChargerReading(state=IecState.C, current_a=(16.0, 16.0, 16.0), power_w=11000.0),
                 error="no answer", command_a=16.0, written_a=None, override_a=8.0, enabled=False,
                 reason=Reason(Why.OFFLINE, "offline: reserving 16 A as last given"))
    rse1 = device("RSE1", "input", InputReading(active=True), model="gpio")
    base = replace(
        EMPTY_STATUS, cycle_count=42, overruns=1, failed_cycles=2, cycle_time_s=0.0834, wall_time=1767614400.25,
        failsafe=None, grid_limit_w=11000.0, chargers_limit_w=None, headroom_a=(12.5, 7.25, 9.0),
        power_headroom_w=4000.0, limiting=("fuse L1",), grid_power_w=5230.7, grid_current_a=(10.0, 8.0, 7.0),
        meters=(meter,), chargers=(e1, e2), inputs=(rse1,),
        variables=(VariableStatus("AVAIL", 75, 75, None), VariableStatus("RIPPLE", "RSE1", True, None),
                   VariableStatus("NOTE", '"text"', "text", None), VariableStatus("BAD", "1/0", None, "division")),
        formula_errors=(FormulaStatus("site.grid_limit_w", "boom"),),
        links=(LinkStats("rs485", 100, 2, 0.021, "no answer", {"timeouts": 3.0, "wire_time_s": 12.5,
                                                               "wire_time_s_per_cycle": 0.119}),
               LinkStats("ocpp", 40, 0, None, None, {"connected": 1.0, "boxes": 2.0, "future_figure": 7.0})),
        faults=("E2: no answer", "fail-safe: nothing"),
    )
    return replace(base, **kw)


def scrape(status: Status, **kw: Any) -> tuple[Samples, str]:
    metrics = Metrics(lambda: status, version="1.2.3", main_fuse_a=25.0, process=False, **kw)
    body, content_type = metrics.render()
    text = body.decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return samples, text


def v(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def has(samples: Samples, metric: str, /, **labels: str) -> bool:
    return (metric, frozenset(labels.items())) in samples


def test_site_loop_and_variables() -> None:
    s, _ = scrape(site_status())
    assert v(s, "gridcharge_cycles_total") == 42 and v(s, "gridcharge_cycle_overruns_total") == 1
    assert v(s, "gridcharge_cycles_failed_total") == 2
    assert v(s, "gridcharge_last_cycle_timestamp_seconds") == 1767614400.25
    assert v(s, "gridcharge_grid_power_watts") == 5230.7
    assert [v(s, "gridcharge_grid_current_amperes", phase=p) for p in ("L1", "L2", "L3")] == [10.0, 8.0, 7.0]
    assert [v(s, "gridcharge_headroom_amperes", phase=p) for p in ("L1", "L2", "L3")] == [12.5, 7.25, 9.0]
    assert v(s, "gridcharge_grid_limit_watts") == 11000 and v(s, "gridcharge_power_headroom_watts") == 4000
    assert not has(s, "gridcharge_chargers_limit_watts")  # no limit: no sample, never a made-up 0
    assert v(s, "gridcharge_main_fuse_amperes") == 25 and v(s, "gridcharge_failsafe_active") == 0
    assert v(s, "gridcharge_limiting", limit="fuse L1") == 1
    assert v(s, "gridcharge_faults") == 2 and v(s, "gridcharge_formula_errors") == 1
    assert v(s, "gridcharge_variable_value", name="AVAIL") == 75
    assert v(s, "gridcharge_variable_value", name="RIPPLE") == 1  # a boolean is 0/1
    assert not has(s, "gridcharge_variable_value", name="NOTE")  # text is not a number
    assert not has(s, "gridcharge_variable_value", name="BAD")  # an error has no value
    assert v(s, "gridcharge_build_info", version="1.2.3") == 1


def test_devices_meters_chargers_inputs() -> None:
    s, _ = scrape(site_status())
    assert v(s, "gridcharge_device_online", device="M1", kind="meter") == 1
    assert v(s, "gridcharge_device_online", device="E2", kind="charger") == 0
    assert v(s, "gridcharge_device_fault_seconds", device="E2", kind="charger") == 12.5
    assert v(s, "gridcharge_device_reading_age_seconds", device="E1", kind="charger") == 0.4
    assert v(s, "gridcharge_device_info", device="E1", kind="charger", model="heidelberg",
             address="tcp:10.0.0.1:502 unit 1 (E1)") == 1
    assert v(s, "gridcharge_meter_power_watts", device="M1") == 5230.7
    assert v(s, "gridcharge_meter_current_amperes", device="M1", phase="L3") == 7.0
    assert v(s, "gridcharge_meter_voltage_volts", device="M1", phase="L1") == 230.1
    assert v(s, "gridcharge_meter_import_watt_hours_total", device="M1") == 123456
    # a charging box
    assert v(s, "gridcharge_charger_state", device="E1") == 3  # the cFos number of C
    assert {state: v(s, "gridcharge_charger_iec_state", device="E1", state=state)
            for state in (*IEC_STATES, "offline")} == {"A": 0, "B": 0, "C": 1, "D": 0, "E": 0, "F": 0, "offline": 0}
    assert v(s, "gridcharge_charger_current_amperes", device="E1", phase="L2") == 10.0
    assert v(s, "gridcharge_charger_power_watts", device="E1") == 6900
    assert v(s, "gridcharge_charger_energy_watt_hours_total", device="E1") == 12345
    assert v(s, "gridcharge_charger_command_amperes", device="E1") == 10
    assert v(s, "gridcharge_charger_written_amperes", device="E1") == 10
    assert v(s, "gridcharge_charger_max_current_amperes", device="E1") == 16
    assert v(s, "gridcharge_charger_min_current_amperes", device="E1") == 6
    assert v(s, "gridcharge_charger_enabled", device="E1") == 1
    assert v(s, "gridcharge_charger_limited_by", device="E1", why="site limit", subject="fuse L1") == 1
    assert not has(s, "gridcharge_charger_override_amperes", device="E1")
    # a silent box: offline, no live values, no write yet, its override shown
    assert v(s, "gridcharge_charger_state", device="E2") == 6
    assert v(s, "gridcharge_charger_iec_state", device="E2", state="offline") == 1
    assert v(s, "gridcharge_charger_iec_state", device="E2", state="C") == 0
    assert not has(s, "gridcharge_charger_current_amperes", device="E2", phase="L1")
    assert not has(s, "gridcharge_charger_power_watts", device="E2")
    assert not has(s, "gridcharge_charger_written_amperes", device="E2")
    assert v(s, "gridcharge_charger_override_amperes", device="E2") == 8
    assert v(s, "gridcharge_charger_enabled", device="E2") == 0
    assert v(s, "gridcharge_charger_limited_by", device="E2", why="offline", subject="") == 1
    assert v(s, "gridcharge_input_active", device="RSE1") == 1


def test_iec_states_are_the_hal_letters() -> None:
    assert list(IEC_STATES) == [state.value for state in IecState]


def test_links_with_their_details() -> None:
    s, _ = scrape(site_status())
    assert v(s, "gridcharge_link_requests_total", link="rs485") == 100
    assert v(s, "gridcharge_link_errors_total", link="rs485") == 2
    assert v(s, "gridcharge_link_latency_p95_seconds", link="rs485") == 0.021
    assert v(s, "gridcharge_link_timeouts_total", link="rs485") == 3
    assert v(s, "gridcharge_link_wire_time_seconds_total", link="rs485") == 12.5
    assert v(s, "gridcharge_link_wire_time_last_cycle_seconds", link="rs485") == 0.119
    assert not has(s, "gridcharge_link_latency_p95_seconds", link="ocpp")  # no latency known yet
    assert v(s, "gridcharge_link_connected_boxes", link="ocpp") == 1 and v(s, "gridcharge_link_boxes", link="ocpp") == 2
    assert v(s, "gridcharge_link_detail", link="ocpp", detail="future_figure") == 7  # a detail not known here


def test_backend_only_when_configured() -> None:
    s, _ = scrape(site_status())
    assert not any(name.startswith("gridcharge_backend_") for name, _ in s)
    cp = ChargePointStatus(charger_id="E1", backend_id="DE-1", connected=True, state="connected", reason=None,
                           since=None, queued=4, ocpp_status="Charging", transaction_id=7, cap_a=None, cap_reason=None)
    backend = BackendStatus(url="wss://x/cs", proxy=None, enabled=True, reason=None,
                            charge_points=(cp, replace(cp, charger_id="E2", connected=False, queued=0)), dropped=1)
    s, _ = scrape(site_status(backend=backend))
    assert v(s, "gridcharge_backend_enabled") == 1 and v(s, "gridcharge_backend_dropped_messages_total") == 1
    assert v(s, "gridcharge_backend_connected", charger="E1") == 1
    assert v(s, "gridcharge_backend_connected", charger="E2") == 0
    assert v(s, "gridcharge_backend_queued_messages", charger="E1") == 4


def test_before_the_first_cycle() -> None:
    s, _ = scrape(EMPTY_STATUS)
    assert v(s, "gridcharge_cycles_total") == 0 and v(s, "gridcharge_failsafe_active") == 1  # "not started"
    assert not has(s, "gridcharge_last_cycle_timestamp_seconds") and not has(s, "gridcharge_grid_power_watts")
    assert v(s, "gridcharge_cycle_duration_seconds_count") == 0


def test_every_family_is_named_and_explained() -> None:
    _, text = scrape(site_status())
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("gridcharge_") for f in families)
    assert all(f.documentation for f in families)
    assert "NaN" not in text and "Inf " not in text.replace('le="+Inf"', "")


def test_the_cycle_histogram() -> None:
    cycles = CycleDurations()
    status = replace(EMPTY_STATUS, cycle_count=1, cycle_time_s=0.04)
    cycles.observe(status)
    cycles.observe(replace(status, failed_cycles=1))  # a failed cycle republishes the same cycle_count
    cycles.observe(replace(status, cycle_count=2, cycle_time_s=0.1))  # on a bound: that bucket (le)
    cycles.observe(replace(status, cycle_count=3, cycle_time_s=60.0))  # above every bound: +Inf only
    cycles.observe(replace(status, cycle_count=4, cycle_time_s=float("nan")))  # never a NaN in the sum
    family = cycles.family()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets["0.025"] == 0 and buckets["0.05"] == 1 and buckets["0.1"] == 2 and buckets["10.0"] == 2
    assert buckets["+Inf"] == 3 and len(buckets) == len(CYCLE_BUCKETS_S) + 1
    totals = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert totals["gridcharge_cycle_duration_seconds_count"] == 3
    assert abs(totals["gridcharge_cycle_duration_seconds_sum"] - 60.14) < 1e-9


def test_the_request_counter_is_bounded() -> None:
    counter = ApiRequests(max_series=3)
    for command in ("get_cm_vars", "get_cm_vars", "set_cm_vars", "/metrics", "get_dev_info", "get_grid_log"):
        counter.count("lan", command, 200)
    counts = {s.labels["command"]: s.value for s in counter.family().samples}
    assert counts == {"get_cm_vars": 2, "set_cm_vars": 1, "/metrics": 1, "other": 2}
