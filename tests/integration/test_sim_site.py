"""The simulated site end to end: profile banks, real Modbus servers (TCP, RTU over a pty), physics.

The first part drives every packaged profile through a ``ProfileBank`` with the real device
classes (``hal.modbus.devices``) over an in-process bus, so the contract "what the simulator encodes,
the device decodes" is checked for every model without sockets. The second part runs a
``SimulatedSite`` on real servers and talks to it through ``hal.modbus.ModbusBus``. Only the
physics clock is faked (moved by hand); network waits are real but short.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fake_clock import FakeClock

from hal.modbus.devices import ModbusInput, ProfileCharger, ProfileMeter
from hal.modbus.bus import BusSpec, ModbusBus
from hal.modbus.profile import PROFILE_NAMES, Kind, load_profile
from hal.sim.bank import ProfileBank
from hal.sim.physics import KeepaliveOn, SimCar, SimContact, SimSite, SimWallbox, WallboxConfig
from hal.sim.site import (
    DEFAULT_MAX_CURRENT_A,
    ModelBehaviour,
    SimChargerSpec,
    SimInputModuleSpec,
    SimMeterSpec,
    SimulatedSite,
    demo_site,
)
from hal.types import CommError, DeviceAnswerError, IecState
from hal.modbus.types import RequestPolicy, Table

V = (230.0, 230.0, 230.0)
FAST = RequestPolicy(timeout_s=0.3)
CHARGERS = [n for n in PROFILE_NAMES if load_profile(n).kind is Kind.CHARGER]
METERS = [n for n in PROFILE_NAMES if load_profile(n).kind is Kind.METER]


class DirectBus:
    """A RegisterBus that calls banks in-process: the device ↔ bank contract without sockets."""

    name = "direct"

    def __init__(self, banks: dict[int, ProfileBank]) -> None:
        self.banks = banks

    def read(self, table: Table, address: int, count: int, unit: int, policy: RequestPolicy) -> list[int]:
        return self.banks[unit].read(table, address, count)

    def write(self, address: int, values: list[int], unit: int, policy: RequestPolicy, *, single: bool = False) -> None:
        self.banks[unit].write(Table.HOLDING, address, values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def charger_rig(model: str, clock: FakeClock, keepalive_on: str = "write",
                **box_kwargs) -> tuple[SimSite, SimWallbox, ProfileCharger]:
    site = SimSite(clock=clock, voltage_v=V)
    config = WallboxConfig(max_current_a=32, keepalive_on=keepalive_on)  # type: ignore[arg-type]
    box = site.add_wallbox("E1", SimWallbox(config, **box_kwargs))
    bank = ProfileBank(load_profile(model), box)
    return site, box, ProfileCharger("E1", load_profile(model), DirectBus({1: bank}), 1)


# -- banks: every packaged profile ---------------------------------------------------------------


@pytest.mark.parametrize("model", CHARGERS)
def test_charger_profile_round_trip(model: str, clock: FakeClock) -> None:
    site, box, charger = charger_rig(model, clock, initial_limit_a=0.0)
    assert charger.read().state is IecState.A
    site.plug_car(box, SimCar(max_current_a=16))
    reading = charger.read()
    assert reading.state is IecState.B
    assert reading.current_a == (0.0, 0.0, 0.0)
    charger.apply(10.0)
    assert box.values()["limit_written_a"] == pytest.approx(10.0)
    reading = charger.read()
    assert reading.state is IecState.C
    assert reading.current_a == pytest.approx((10.0, 10.0, 10.0))
    assert reading.power_w == pytest.approx(6900.0)
    if reading.limit_a is not None:
        assert reading.limit_a == pytest.approx(10.0)
    clock.advance(3600)
    assert charger.read().energy_wh == pytest.approx(6900.0, abs=1.0)
    charger.apply(0.0)  # pause, whichever way the profile pauses
    assert charger.read().state is IecState.B
    assert site.grid_currents_a() == (0.0, 0.0, 0.0)
    charger.apply(16.0)  # and resume
    assert charger.read().current_a == pytest.approx((16.0, 16.0, 16.0))


@pytest.mark.parametrize("model", [m for m in CHARGERS if load_profile(m).setup])
def test_charger_setup_configures_the_simulated_watchdog(model: str, clock: FakeClock) -> None:
    site, box, charger = charger_rig(model, clock, keepalive_on="write")
    site.plug_car(box, SimCar(max_current_a=32))
    charger.setup(watchdog_s=20.0, failsafe_current_a=8.0)
    values = box.values()
    assert values["watchdog_timeout_s"] == pytest.approx(20.0)
    assert values["failsafe_current_a"] == pytest.approx(8.0)
    charger.setup(watchdog_s=20.0, failsafe_current_a=8.0)  # again: flash registers read back equal
    charger.apply(16.0)
    clock.advance(19.0)
    assert charger.read().current_a == pytest.approx((16.0, 16.0, 16.0))
    clock.advance(1.0)
    assert charger.read().current_a == pytest.approx((8.0, 8.0, 8.0))
    charger.apply(16.0)
    assert charger.read().current_a == pytest.approx((16.0, 16.0, 16.0))


def test_heidelberg_standby_register_reaches_the_box(clock: FakeClock) -> None:
    _, box, charger = charger_rig("heidelberg", clock)
    assert box.values()["standby_enabled"] is True
    charger.setup(watchdog_s=15.0, failsafe_current_a=0.0)
    assert box.values()["standby_enabled"] is False


@pytest.mark.parametrize("model", METERS)
def test_meter_profile_round_trip(model: str, clock: FakeClock) -> None:
    site = SimSite(clock=clock, voltage_v=(231.0, 229.0, 230.0), base_load_a=(3.0, 4.0, 5.0))
    box = site.add_wallbox("E1", SimWallbox())
    site.plug_car(box, SimCar(max_current_a=16))
    box.set_limit(10.0)
    meter = ProfileMeter("M1", load_profile(model), DirectBus({1: ProfileBank(load_profile(model), site.grid_meter)}), 1)
    clock.advance(3600)
    reading = meter.read()
    expected_w = 13 * 231.0 + 14 * 229.0 + 15 * 230.0
    assert reading.power_w == pytest.approx(expected_w, abs=0.1)
    assert reading.import_wh == pytest.approx(expected_w, rel=1e-5, abs=10)
    assert reading.export_wh == pytest.approx(0.0)
    assert reading.current_a is not None
    phases = [v for v in ("current_l1_a", "current_l2_a", "current_l3_a") if v in load_profile(model).values]
    assert reading.current_a[: len(phases)] == pytest.approx((13.0, 14.0, 15.0)[: len(phases)], abs=0.01)
    if reading.voltage_v is not None:
        assert reading.voltage_v[0] == pytest.approx(231.0, abs=0.1)


def test_meter_exports_with_pv(clock: FakeClock) -> None:
    site = SimSite(clock=clock, voltage_v=V, base_load_a=(-10.0, -10.0, -10.0))
    bank = ProfileBank(load_profile("sdm630"), site.grid_meter)
    meter = ProfileMeter("M1", load_profile("sdm630"), DirectBus({1: bank}), 1)
    clock.advance(3600)
    reading = meter.read()
    assert reading.power_w == pytest.approx(-6900.0)
    assert reading.export_wh == pytest.approx(6900.0, rel=1e-5)
    assert reading.current_a == pytest.approx((10.0, 10.0, 10.0))


def test_bank_addresses(clock: FakeClock) -> None:
    site = SimSite(clock=clock, voltage_v=V)
    bank = ProfileBank(load_profile("sdm630"), site.grid_meter)
    for block in load_profile("sdm630").blocks:
        assert len(bank.read(block.table, block.address, block.count)) == block.count
    assert bank.read(Table.INPUT, 0x0040, 2) == [0, 0]  # inside a block, not declared: 0
    for table, address, count in [(Table.INPUT, 0x0100, 2), (Table.INPUT, 0x004C, 2), (Table.HOLDING, 0, 2),
                                  (Table.INPUT, 0x004A, 3), (Table.INPUT, 0x000C, 2)]:
        with pytest.raises(DeviceAnswerError) as info:
            bank.read(table, address, count)
        assert info.value.code == 2  # type: ignore[attr-defined]
    with pytest.raises(DeviceAnswerError):
        bank.write(Table.HOLDING, 0x0000, [1])


def test_bank_rejects_bad_writes(clock: FakeClock) -> None:
    _, box, _ = charger_rig("alfen", clock)
    bank = ProfileBank(load_profile("alfen"), box)
    with pytest.raises(DeviceAnswerError):  # half a float32: Alfen wants it in one request
        bank.write(Table.HOLDING, 1210, [0x4120])
    with pytest.raises(DeviceAnswerError):  # a measured value is read-only
        bank.write(Table.HOLDING, 320, [0, 0])
    with pytest.raises(DeviceAnswerError):
        bank.write(Table.COIL, 0, [1])
    bank.write(Table.HOLDING, 1210, [0x4120, 0x0000])  # 10.0 A
    assert box.values()["limit_written_a"] == 10.0
    assert bank.read(Table.HOLDING, 1210, 2) == [0x4120, 0x0000]  # reads back


def test_bank_source_must_fit_the_kind(clock: FakeClock) -> None:
    site = SimSite(clock=clock)
    with pytest.raises(TypeError):
        ProfileBank(load_profile("heidelberg"), site.grid_meter)
    with pytest.raises(TypeError):
        ProfileBank(load_profile("modbus_io"), site.grid_meter)


def test_heidelberg_any_request_keeps_watchdog_alive(clock: FakeClock) -> None:
    site, box, charger = charger_rig("heidelberg", clock, keepalive_on="any")
    site.plug_car(box, SimCar(max_current_a=16))
    charger.setup(watchdog_s=10.0, failsafe_current_a=6.0)
    charger.apply(16.0)
    for _ in range(5):  # reads only, as a controller does between unchanged limits
        clock.advance(9.0)
        assert charger.read().current_a == pytest.approx((16.0, 16.0, 16.0))
    clock.advance(10.0)
    assert charger.read().current_a == pytest.approx((6.0, 6.0, 6.0))
    assert box.values()["limit_a"] == pytest.approx(6.0)  # the box applies its fail-safe current


@pytest.mark.parametrize("model", CHARGERS)
def test_simulated_box_takes_its_behaviour_from_the_profile(model: str, clock: FakeClock) -> None:
    """No table per model in the simulator: max current, keep-alive and factory fall-back are facts."""
    profile = load_profile(model)
    box = SimulatedSite(meter=None, chargers=[SimChargerSpec("E1", model)], clock=clock).wallbox("E1")
    factory = profile.factory_fallback
    assert box.config.max_current_a == (profile.max_current_a or DEFAULT_MAX_CURRENT_A)
    any_request = profile.fallback is not None and profile.fallback.fed_by_any_request
    assert box.config.keepalive_on.value == ("any" if any_request else "write")
    values = box.values()
    assert values["watchdog_timeout_s"] == (factory.timeout_s if factory else 0.0)
    assert values["failsafe_current_a"] == (factory.failsafe_current_a if factory else 0.0)
    assert ModelBehaviour.of(profile) == ModelBehaviour(box.config.max_current_a, box.config.keepalive_on,
                                                        values["watchdog_timeout_s"], values["failsafe_current_a"])


def test_spec_overrides_the_profile_behaviour(clock: FakeClock) -> None:
    spec = SimChargerSpec("E1", "alfen", max_current_a=32.0, watchdog_timeout_s=0.0, failsafe_current_a=0.0,
                          keepalive_on=KeepaliveOn.ANY)
    box = SimulatedSite(meter=None, chargers=[spec], clock=clock).wallbox("E1")
    assert (box.config.max_current_a, box.config.keepalive_on) == (32.0, KeepaliveOn.ANY)
    assert (box.values()["watchdog_timeout_s"], box.values()["failsafe_current_a"]) == (0.0, 0.0)


def test_cfos_factory_watchdog_runs_before_any_setup(clock: FakeClock) -> None:
    """fail_safe_duration 300 s as shipped, fed by any request; fail_safe_current 0 stops the box."""
    site = SimulatedSite(meter=None, chargers=[SimChargerSpec("E1", "cfos_powerbrain", car=SimCar())], clock=clock)
    bank = site.bank("E1")
    clock.advance(299.0)
    bank.read(Table.HOLDING, 8092, 1)  # a read feeds it
    clock.advance(299.0)
    assert site.wallbox("E1").values()["limit_a"] == pytest.approx(16.0)
    clock.advance(1.0)
    assert site.wallbox("E1").values()["limit_a"] == pytest.approx(0.0)


def test_abb_state_uses_socket_lock(clock: FakeClock) -> None:
    site, box, charger = charger_rig("abb_terra_ac", clock)
    bank = charger.bus.banks[1]  # type: ignore[attr-defined]
    assert bank.read(Table.HOLDING, 0x400A, 2) == [0, 0]
    site.plug_car(box)
    assert bank.read(Table.HOLDING, 0x400A, 2) == [0, 0x0101]


def test_input_bank(clock: FakeClock) -> None:
    contacts = [SimContact(), SimContact(closed=True)]
    bank = ProfileBank(load_profile("modbus_io"), contacts)
    bus = DirectBus({5: bank})
    inputs = [ModbusInput(f"RSE{i}", bus, 5, i) for i in range(3)]
    assert [i.read().active for i in inputs] == [False, True, False]
    contacts[0].set(True)
    assert inputs[0].read().active
    assert ModbusInput("X", bus, 5, 1, active_low=True).read().active is False
    assert ModbusInput("C", bus, 5, 1, table="coil").read().active is True  # configured as a coil
    with pytest.raises(DeviceAnswerError):
        bank.read(Table.DISCRETE, 7, 2)


# -- the site on real servers ----------------------------------------------------------------------


@pytest.fixture
def site(clock: FakeClock) -> Iterator[SimulatedSite]:
    site = SimulatedSite(
        meter=SimMeterSpec("M1", "sdm630", "rtu"),
        chargers=[
            SimChargerSpec("E1", "heidelberg", "rtu", car=SimCar(max_current_a=16)),
            SimChargerSpec("E2", "alfen", "tcp", phases=1, phase="L2", max_current_a=32.0,
                           car=SimCar(max_current_a=32, phases=1)),
        ],
        input_modules=[SimInputModuleSpec("IO1", "modbus_io", "rtu", inputs=("RSE1", "RSE2"))],
        base_load_a=(2.0, 3.0, 4.0),
        voltage_v=V,
        clock=clock,
    )
    site.start()
    yield site
    site.stop()


def bus_for(site: SimulatedSite, device_id: str) -> ModbusBus:
    address = site.address(device_id)
    if address.link == "rtu":
        spec = BusSpec("rtu", "rtu", port=address.path, baudrate=address.baudrate or 19200, timeout_s=0.3)
    else:
        spec = BusSpec(device_id, "tcp" if address.link == "tcp" else "rtu-over-tcp", host=address.host,
                       tcp_port=address.port or 502, timeout_s=0.3)
    return ModbusBus(spec)


def test_site_end_to_end(site: SimulatedSite, clock: FakeClock) -> None:
    rtu = bus_for(site, "M1")
    tcp = bus_for(site, "E2")
    try:
        meter = ProfileMeter("M1", load_profile("sdm630"), rtu, site.address("M1").unit, FAST)
        e1 = ProfileCharger("E1", load_profile("heidelberg"), rtu, site.address("E1").unit, FAST)
        e2 = ProfileCharger("E2", load_profile("alfen"), tcp, site.address("E2").unit, FAST)
        rse1 = ModbusInput("RSE1", rtu, site.address("IO1").unit, 0, policy=FAST)

        # Boxes nobody manages yet offer their hardware maximum.
        assert e1.read().current_a == pytest.approx((16.0, 16.0, 16.0))
        e1.setup(watchdog_s=15.0, failsafe_current_a=6.0)
        e1.apply(10.0)
        e2.apply(20.0)
        assert e1.read().state is IecState.C
        assert e1.read().current_a == pytest.approx((10.0, 10.0, 10.0))
        assert e2.read().current_a == pytest.approx((0.0, 20.0, 0.0))
        reading = meter.read()
        assert reading.current_a == pytest.approx((12.0, 33.0, 14.0))
        assert reading.power_w == pytest.approx(59 * 230.0)

        # The controller stops: each box falls back on its own watchdog.
        clock.advance(15.0)  # Heidelberg: 15 s as configured
        assert e1.read().current_a == pytest.approx((6.0, 6.0, 6.0))
        assert e2.read().current_a == pytest.approx((0.0, 20.0, 0.0))  # reads do not feed an Alfen
        clock.advance(45.0)  # Alfen: 60 s validity, safe current 6 A
        assert e2.read().current_a == pytest.approx((0.0, 6.0, 0.0))
        assert meter.read().current_a == pytest.approx((8.0, 15.0, 10.0))

        # The ripple-control contact, and a broken wire to it.
        assert rse1.read().active is False
        site.set_contact("RSE1", True)
        assert rse1.read().active is True
        site.set_input_broken("RSE1")
        with pytest.raises(CommError):
            rse1.read()
        site.set_input_broken("RSE1", False)
        assert rse1.read().active is True
        assert meter.read().power_w > 0  # the line still works after a silent unit
    finally:
        rtu.close()
        tcp.close()


def test_silent_meter_and_restart(site: SimulatedSite, clock: FakeClock) -> None:
    port = site.address("E2").port
    tcp = bus_for(site, "E2")
    rtu = bus_for(site, "M1")
    try:
        meter = ProfileMeter("M1", load_profile("sdm630"), rtu, site.address("M1").unit, FAST)
        site.set_silent("M1")
        with pytest.raises(CommError):
            meter.read()
        site.set_silent("M1", False)
        assert meter.read().power_w == pytest.approx(9 * 230.0 + 16 * 690.0 + 32 * 230.0)
    finally:
        rtu.close()
        tcp.close()
    site.stop()
    site.stop()  # idempotent
    assert not site.running
    with pytest.raises(RuntimeError):
        site.config_dict()
    site.start()
    site.start()  # idempotent
    assert site.address("E2").port == port  # TCP devices keep their address across a restart
    tcp = bus_for(site, "E2")
    try:
        e2 = ProfileCharger("E2", load_profile("alfen"), tcp, site.address("E2").unit, FAST)
        assert e2.read().state is IecState.C
    finally:
        tcp.close()


def test_config_dict(site: SimulatedSite) -> None:
    config = site.config_dict()
    assert set(config) == {"buses", "meters", "chargers", "inputs"}
    rtu = config["buses"]["sim_rtu"]
    assert rtu["type"] == "rtu" and rtu["parity"] == "N" and rtu["baudrate"] == 19200
    assert rtu["port"] == site.address("M1").path
    assert config["meters"]["M1"] == {"model": "sdm630", "bus": "sim_rtu", "unit": 1}
    assert config["chargers"]["E1"] == {"model": "heidelberg", "bus": "sim_rtu", "unit": 2, "phases": 3,
                                        "min_current_a": 6, "max_current_a": 16.0}
    e2 = config["chargers"]["E2"]
    assert e2["host"] == "127.0.0.1" and e2["port"] == site.address("E2").port and e2["unit"] == 1
    assert e2["phases"] == 1 and e2["phase"] == "L2" and e2["max_current_a"] == 32.0
    assert config["inputs"] == {"RSE1": {"bus": "sim_rtu", "unit": 3, "discrete_input": 0},
                                "RSE2": {"bus": "sim_rtu", "unit": 3, "discrete_input": 1}}


def test_shared_tcp_and_gateway_layouts(clock: FakeClock) -> None:
    site = SimulatedSite(
        meter=SimMeterSpec("M1", "abb_b23", "rtu-over-tcp"),
        chargers=[
            SimChargerSpec("E1", "heidelberg", "rtu-over-tcp", car=SimCar()),
            SimChargerSpec("E2", "cfos_powerbrain", "tcp", car=SimCar()),
            SimChargerSpec("E3", "abb_terra_ac", "tcp", max_current_a=32.0, car=SimCar()),
        ],
        input_modules=[SimInputModuleSpec("IO1", link="tcp")],
        voltage_v=V,
        clock=clock,
        tcp_layout="shared",
    )
    with site:
        config = site.config_dict()
        assert config["buses"]["sim_gateway"]["type"] == "rtu-over-tcp"
        assert config["buses"]["sim_tcp"]["type"] == "tcp"
        assert {c["bus"] for c in config["chargers"].values()} == {"sim_gateway", "sim_tcp"}
        assert [config["chargers"][e]["unit"] for e in ("E2", "E3")] == [1, 2]
        assert config["inputs"]["RSE1"] == {"bus": "sim_tcp", "unit": 3, "discrete_input": 0}
        gateway, shared = bus_for(site, "M1"), bus_for(site, "E2")
        try:
            e1 = ProfileCharger("E1", load_profile("heidelberg"), gateway, site.address("E1").unit, FAST)
            e3 = ProfileCharger("E3", load_profile("abb_terra_ac"), shared, site.address("E3").unit, FAST)
            meter = ProfileMeter("M1", load_profile("abb_b23"), gateway, site.address("M1").unit, FAST)
            e1.apply(8.0)
            e3.apply(6.0)
            assert e3.read().current_a == pytest.approx((6.0, 6.0, 6.0))
            assert meter.read().current_a == pytest.approx((30.0, 30.0, 30.0))  # 8 + 6 + cFos at 16
        finally:
            gateway.close()
            shared.close()


def test_site_rejects_bad_wiring() -> None:
    with pytest.raises(ValueError):
        SimulatedSite(chargers=[SimChargerSpec("E1", "sdm630")])
    with pytest.raises(ValueError):
        SimulatedSite(chargers=[SimChargerSpec("M1", "heidelberg")])  # id taken by the meter
    with pytest.raises(ValueError):
        SimulatedSite(chargers=[SimChargerSpec("E1", "heidelberg", "rtu", unit=1)])  # meter has unit 1
    with pytest.raises(ValueError):
        SimulatedSite(chargers=[SimChargerSpec("E1", "heidelberg", "serial")])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SimulatedSite(input_modules=[SimInputModuleSpec(inputs=tuple(f"I{i}" for i in range(9)))])


def test_demo_site_serves(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with demo_site(clock=clock) as site:
        config = site.config_dict()
        assert set(config["chargers"]) == {"E1", "E2"} and set(config["inputs"]) == {"RSE1"}
        rtu = bus_for(site, "M1")
        try:
            meter = ProfileMeter("M1", load_profile("sdm630"), rtu, 1, FAST)
            assert meter.read().power_w > 0
        finally:
            rtu.close()


def test_config_dict_is_a_valid_controller_config(site: SimulatedSite) -> None:
    """The generated sections pass the controller's own validation (docs/configuration.md)."""
    config_module = pytest.importorskip("controller.config")
    data = {**site.config_dict(), "site": {"main_fuse_a": 35, "grid_meter": "M1"}, "state_dir": "/tmp/gridcharge-sim"}
    config = config_module.parse_config(data)
    assert set(config.chargers) == {"E1", "E2"}
    assert config.inputs["RSE2"].index == 1
