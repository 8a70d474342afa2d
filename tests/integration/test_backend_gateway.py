"""The gateway to the supplier's OCPP backend, end to end: the simulated home site (a Heidelberg
E1 and an Alfen E2 on real Modbus TCP sockets, both with a car charging), a ``Service`` whose
cycles the test runs, and a real OCPP 1.6J backend (``BackendCsms``, written with the ``ocpp``
package) on loopback, reached directly, through a SOCKS5 proxy or an HTTP CONNECT proxy, over
``ws`` or over ``wss`` with a CA of the test's own.

- A full session (boot, status, start, meter values, stop) reaches the backend in order, with
  the energy the box's register counted, and the backend's transactionId is kept with the session.
- The backend away while cars come and go: afterwards every transaction message arrives, in
  order, none twice.
- The backend's charging profile caps a charger (``lreason`` "backend profile", a grid log row),
  its clearing lifts the cap; RemoteStopTransaction pauses the charger (``lreason`` "backend")
  and stops the transaction, RemoteStartTransaction lets it charge again in a new one.
- ChangeAvailability, Get/ChangeConfiguration, TriggerMessage, Reset, and a NotSupported action.
- A wrong password: a clear reason in the status, retries with growing waits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backend_csms import BackendCsms, server_ssl_context
from backend_helpers import GatewaySite, actions, backend_section
from ocpp.v16 import call
from pki import Pki, make_pki
from proxies import HttpConnectProxy, Socks5Proxy

from hal.sim.physics import SimCar
from hal.sim.site import SimulatedSite


def gateway_site(cleanup: list[Callable[[], None]], sim: SimulatedSite, backend: dict[str, Any],
                 **kw: Any) -> GatewaySite:
    site = GatewaySite(sim, backend, **kw)
    cleanup.append(site.close)
    return site


def server_context(pki: Pki) -> Any:
    """The backend's TLS: a server certificate of the test's own CA (for 127.0.0.1 and localhost)."""
    return server_ssl_context(*pki.server_paths)


def test_a_full_session_reaches_the_backend_in_order_with_the_register_energy(
        sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]]) -> None:
    site = gateway_site(cleanup, sim, backend_section(csms), chargers={"E1": {"backend_id": "DE-GC-0001-E1"}})
    csms.wait_connected("DE-GC-0001-E1", 10)
    csms.wait_connected("E2", 10)  # the default backend_id is the charger's name
    site.run_until(lambda: csms.of("StartTransaction", "DE-GC-0001-E1"), what="StartTransaction")
    site.run_until(lambda: len(csms.of("MeterValues", "DE-GC-0001-E1")) >= 2, what="two MeterValues")
    sim.unplug("E1")
    site.run_until(lambda: csms.of("StopTransaction", "DE-GC-0001-E1"), what="StopTransaction")

    seen = actions(csms.received(), "DE-GC-0001-E1")
    assert seen[0] == "BootNotification"
    boot = csms.of("BootNotification", "DE-GC-0001-E1")[0].payload
    assert boot["charge_point_vendor"] == "gridcharge" and boot["charge_point_model"] == "heidelberg"
    transaction = [a for a in seen if a in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert transaction[0] == "StartTransaction" and transaction[-1] == "StopTransaction"
    assert seen.index("StatusNotification") < seen.index("StartTransaction")
    statuses = [m.payload["status"] for m in csms.of("StatusNotification", "DE-GC-0001-E1")
                if m.payload["connector_id"] == 1]
    assert "Charging" in statuses and statuses[-1] == "Available"

    start = csms.of("StartTransaction", "DE-GC-0001-E1")[0].payload
    stop = csms.of("StopTransaction", "DE-GC-0001-E1")[0].payload
    tx_id = stop["transaction_id"]
    assert stop["reason"] == "EVDisconnected"
    for meter in csms.of("MeterValues", "DE-GC-0001-E1"):
        assert meter.payload["transaction_id"] == tx_id
        measurands = {v["measurand"] for v in meter.payload["meter_value"][0]["sampled_value"]}
        assert {"Energy.Active.Import.Register", "Power.Active.Import", "Current.Import"} <= measurands
    site.service.sessions.flush()
    session = [s for s in site.service.sessions.query() if s.charger_id == "E1"][-1]
    assert session.energy_wh is not None and session.energy_wh > 0
    assert stop["meter_stop"] - start["meter_start"] == pytest.approx(session.energy_wh, abs=1)
    assert start["meter_start"] == pytest.approx(session.start_wh, abs=1)
    assert session.backend_transaction_id == str(tx_id)
    assert len(csms.of("StartTransaction", "DE-GC-0001-E1")) == 1


@pytest.mark.parametrize("kind", ["socks5", "http-connect"])
def test_through_the_smgw_proxy(sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]],
                                tmp_path: Path, kind: str) -> None:
    proxy = (Socks5Proxy() if kind == "socks5" else HttpConnectProxy()).start()
    try:
        smgw = smgw_section(tmp_path, functions=["vars", "ocpp"])
        site = gateway_site(cleanup, sim, backend_section(csms, proxy=proxy.url), smgw=smgw)
        csms.wait_connected("E1", 10)
        site.run_until(lambda: csms.of("StartTransaction", "E1"), what="StartTransaction")
        assert proxy.tunnels >= 2  # one per charger
        assert ("127.0.0.1", csms.port) in proxy.targets
        assert site.backend()["E1"].connected
        # the proxy goes away: the link drops, and comes back with it
        proxy.stop()
        site.run_until(lambda: not site.backend()["E1"].connected, what="link down")
        assert site.backend()["E1"].reason
        proxy.start()
        site.run_until(lambda: site.backend()["E1"].connected, timeout_s=15, what="link back")
        sim.unplug("E1")  # the session ends: its StopTransaction comes through the proxy too
        site.run_until(lambda: csms.of("StopTransaction", "E1"), what="StopTransaction")
        start, stop = csms.of("StartTransaction", "E1")[0].payload, csms.of("StopTransaction", "E1")[0].payload
        site.service.sessions.flush()
        session = [s for s in site.service.sessions.query() if s.charger_id == "E1"][-1]
        assert stop["meter_stop"] - start["meter_start"] == pytest.approx(session.energy_wh, abs=1)
        assert len(csms.of("StartTransaction", "E1")) == 1
    finally:
        proxy.stop()


def smgw_section(tmp_path: Path, functions: list[str]) -> dict[str, Any]:
    pki = make_pki(tmp_path / "pki")
    return {"listen": "127.0.0.1:18443", "cert": str(pki.server_paths[0]), "key": str(pki.server_paths[1]),
            "client_ca": str(pki.ca_path), "functions": functions}


def test_through_an_smgw_without_the_ocpp_function_the_gateway_stays_off(
        sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]], tmp_path: Path) -> None:
    smgw = smgw_section(tmp_path, functions=["vars"])
    site = gateway_site(cleanup, sim, backend_section(csms, proxy="socks5://127.0.0.1:9"), smgw=smgw)
    site.cycle(3)
    status = site.service.status().backend
    assert status is not None and not status.enabled
    assert "smgw.functions" in (status.reason or "")
    assert csms.connections == 0


def test_the_backend_away_while_cars_come_and_go_gets_everything_in_order_once(
        sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]]) -> None:
    site = gateway_site(cleanup, sim, backend_section(csms, meter_values_interval_s=2))
    csms.wait_connected("E1", 10)
    site.run_until(lambda: csms.of("StartTransaction", "E1"), what="first StartTransaction")
    csms.stop()
    site.run_until(lambda: not site.backend()["E1"].connected, what="link down")
    for _ in range(2):  # two more sessions while the backend is away
        site.cycle(2)
        sim.unplug("E1")
        site.cycle(3)
        sim.plug_car("E1", SimCar(max_current_a=16))
        site.cycle(3)
    sim.unplug("E1")
    site.cycle(3)
    queued = site.backend()["E1"].queued
    assert queued >= 6  # stop, (start, meter values..., stop) × 2
    csms.start()
    site.run_until(lambda: site.backend()["E1"].queued == 0 and site.backend()["E1"].connected,
                   timeout_s=20, what="queue delivered")
    tx_messages = [m for m in csms.received() if m.cp_id == "E1"
                   and m.action in ("StartTransaction", "StopTransaction")]
    kinds = [m.action for m in tx_messages]
    assert kinds == ["StartTransaction", "StopTransaction"] * 3
    stops = [m.payload for m in tx_messages if m.action == "StopTransaction"]
    assert len({s["transaction_id"] for s in stops}) == 3  # each its own transaction, none twice
    starts = [m.payload["timestamp"] for m in tx_messages if m.action == "StartTransaction"]
    assert starts == sorted(starts)
    site.service.sessions.flush()
    kept = [s.backend_transaction_id for s in site.service.sessions.query() if s.charger_id == "E1"]
    assert kept == [str(s["transaction_id"]) for s in stops]


def test_a_backend_profile_caps_the_charger_and_its_clearing_lifts_the_cap(
        sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]]) -> None:
    sim.set_base_load(0, 0, 0)  # 25 A for two 16 A cars: 12.5 A each
    site = gateway_site(cleanup, sim, backend_section(csms))
    csms.wait_connected("E1", 10)
    site.run_until(lambda: site.service.status().charger("E1").command_a >= 10, what="E1 charging")
    profile = {"charging_profile_id": 7, "stack_level": 1, "charging_profile_purpose": "TxDefaultProfile",
               "charging_profile_kind": "Relative",
               "charging_schedule": {"charging_rate_unit": "A",
                                     "charging_schedule_period": [{"start_period": 0, "limit": 7.0}]}}
    answer = csms.call("E1", call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile))
    assert answer.status == "Accepted"
    status = site.run_until(lambda: (s := site.service.status()).charger("E1").command_a <= 7 and s,
                            what="E1 capped")
    assert "backend profile" in str(status.charger("E1").reason)
    assert site.backend()["E1"].cap_a == 7
    site.service.grid_log.flush()
    rows = [r for r in site.service.grid_log.query() if r.kind == "backend"]
    assert rows and rows[-1].name == "E1" and rows[-1].new["cap_a"] == 7  # type: ignore[index]
    assert rows[-1].source == "backend:E1"
    answer = csms.call("E1", call.ClearChargingProfile(id=7))
    assert answer.status == "Accepted"
    site.run_until(lambda: site.service.status().charger("E1").command_a > 7, what="cap lifted")
    assert site.backend()["E1"].cap_a is None


def test_remote_stop_pauses_and_remote_start_resumes(sim: SimulatedSite, csms: BackendCsms,
                                                     cleanup: list[Callable[[], None]]) -> None:
    site = gateway_site(cleanup, sim, backend_section(csms))
    csms.wait_connected("E1", 10)
    site.run_until(lambda: site.backend()["E1"].transaction_id, what="transaction id known")
    tx_id = site.backend()["E1"].transaction_id
    assert csms.call("E1", call.RemoteStopTransaction(transaction_id=tx_id + 999)).status == "Rejected"
    assert csms.call("E1", call.RemoteStopTransaction(transaction_id=tx_id)).status == "Accepted"
    status = site.run_until(lambda: (s := site.service.status()).charger("E1").command_a == 0 and s,
                            what="E1 paused")
    assert str(status.charger("E1").reason) == "backend"
    site.run_until(lambda: csms.of("StopTransaction", "E1"), what="StopTransaction")
    assert csms.of("StopTransaction", "E1")[0].payload["reason"] == "Remote"
    site.run_until(lambda: any(m.payload["status"] == "SuspendedEVSE" for m in csms.of("StatusNotification", "E1")),
                   what="SuspendedEVSE")
    assert csms.call("E1", call.RemoteStartTransaction(id_tag="CARD-42")).status == "Accepted"
    site.run_until(lambda: site.service.status().charger("E1").command_a > 0, what="E1 charging again")
    site.run_until(lambda: len(csms.of("StartTransaction", "E1")) == 2, what="second StartTransaction")
    assert csms.of("StartTransaction", "E1")[1].payload["id_tag"] == "CARD-42"


def test_availability_configuration_trigger_reset_and_what_is_not_offered(
        sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]]) -> None:
    from ocpp.exceptions import NotSupportedError

    site = gateway_site(cleanup, sim, backend_section(csms))
    csms.wait_connected("E2", 10)
    site.cycle(2)
    assert csms.call("E2", call.ChangeAvailability(connector_id=0, type="Inoperative")).status == "Accepted"
    status = site.run_until(lambda: (s := site.service.status()).charger("E2").command_a == 0 and s,
                            what="E2 paused")
    assert str(status.charger("E2").reason) == "backend: unavailable"
    assert csms.call("E2", call.ChangeAvailability(connector_id=0, type="Operative")).status == "Accepted"
    site.run_until(lambda: site.service.status().charger("E2").command_a > 0, what="E2 charging again")

    config = csms.call("E2", call.GetConfiguration(key=["MeterValueSampleInterval", "Nonsense"]))
    assert config.configuration_key[0]["value"] == "1" and config.unknown_key == ["Nonsense"]
    assert csms.call("E2", call.ChangeConfiguration(key="MeterValueSampleInterval", value="30")).status == "Accepted"
    assert csms.call("E2", call.ChangeConfiguration(key="NumberOfConnectors", value="2")).status == "Rejected"
    assert csms.call("E2", call.ChangeConfiguration(key="Nonsense", value="2")).status == "NotSupported"
    assert csms.call("E2", call.GetConfiguration(key=["MeterValueSampleInterval"])).configuration_key[0][
        "value"] == "30"

    before = len(csms.of("MeterValues", "E2"))
    assert csms.call("E2", call.TriggerMessage(requested_message="MeterValues")).status == "Accepted"
    site.run_until(lambda: len(csms.of("MeterValues", "E2")) > before, what="triggered MeterValues")

    boots = len(csms.of("BootNotification", "E2"))
    assert csms.call("E2", call.Reset(type="Soft")).status == "Accepted"
    site.run_until(lambda: len(csms.of("BootNotification", "E2")) > boots, timeout_s=10, what="boot after reset")

    with pytest.raises(NotSupportedError):
        csms.call("E2", call.UnlockConnector(connector_id=1))


def test_wss_with_the_suppliers_own_ca(sim: SimulatedSite, cleanup: list[Callable[[], None]], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    backend = BackendCsms(ssl_context=server_context(pki)).start()
    try:
        site = gateway_site(cleanup, sim, backend_section(backend, ca=str(pki.ca_path)))
        backend.wait_connected("E1", 10)
        site.run_until(lambda: site.backend()["E1"].connected, what="wss connected")
        assert backend.url.startswith("wss://")
    finally:
        backend.stop()


def test_wss_without_the_ca_says_the_certificate_is_not_trusted(sim: SimulatedSite, cleanup: list[Callable[[], None]],
                                                                 tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    backend = BackendCsms(ssl_context=server_context(pki)).start()
    try:
        site = gateway_site(cleanup, sim, backend_section(backend))
        site.run_until(lambda: "not trusted" in (site.backend()["E1"].reason or ""), what="untrusted")
        assert backend.connections == 0
    finally:
        backend.stop()


def test_a_wrong_password_is_said_clearly_and_retried_with_growing_waits(
        sim: SimulatedSite, cleanup: list[Callable[[], None]]) -> None:
    backend = BackendCsms(password="the-right-one").start()
    try:
        site = gateway_site(cleanup, sim, backend_section(backend, password="a-wrong-one"))
        site.run_until(lambda: len([c for c, _ in backend.refused if c == "E1"]) >= 3, timeout_s=15,
                       what="three refused attempts")
        reason = site.backend()["E1"].reason or ""
        assert "password" in reason and "401" in reason
        dev_info = site.backend()["E1"]
        assert not dev_info.connected and dev_info.state.startswith("reconnecting in")
        times = [t for (c, _), t in zip(backend.refused, backend.refused_at) if c == "E1"]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert 0.7 <= gaps[0] <= 1.5 and gaps[1] > gaps[0] * 1.4  # 1 s, then 2 s (jittered 75-100 %)
    finally:
        backend.stop()


def test_get_dev_info_shows_the_backend(sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]]) -> None:
    from web.devinfo import dev_info

    site = gateway_site(cleanup, sim, backend_section(csms))
    site.run_until(lambda: site.backend()["E1"].connected and site.backend()["E2"].connected, what="both connected")
    params = dev_info(site.service.status(), "test")["params"]
    backend = params["backend"]
    assert backend["connected"] == 2 and backend["charge_points"] == 2 and backend["enabled"]
    assert backend["chargers"]["E1"]["connected"] is True and backend["chargers"]["E1"]["state"] == "connected"
    assert backend["url"] == csms.url
