"""One charge point's connection (``hal.ocpp.backend_link.BackendLink``) alone, against a real
``BackendCsms``: a backend that answers BootNotification with Pending or Rejected hears nothing
else until it accepts; heartbeats follow the interval it gave; a stored message the backend
refuses is reported, not lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from backend_csms import BackendCsms

from hal.ocpp.backend_link import BackendLink, Route, StoredCall


class Delegate:
    """A charge point with one stored StartTransaction and nothing else to say."""

    def __init__(self) -> None:
        self.stored = [StoredCall(1, "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 5,
                                                          "timestamp": "2026-12-02T10:00:00Z"}, 1)]
        self.delivered: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.states: list[tuple[bool, str, str | None]] = []

    def boot_payload(self) -> dict[str, Any]:
        return {"charge_point_vendor": "gridcharge", "charge_point_model": "test"}

    def status_now(self) -> tuple[str, str, str]:
        return "Available", "Available", "NoError"

    def meter_values_now(self) -> dict[str, Any] | None:
        return None

    def next_stored(self) -> StoredCall | None:
        return self.stored[0] if self.stored else None

    def stored_delivered(self, stored: StoredCall, answer: dict[str, Any]) -> None:
        self.stored.pop(0)
        self.delivered.append(answer)

    def stored_refused(self, stored: StoredCall, error: str) -> None:
        self.refused.append(error)
        self.stored.pop(0)

    def handle(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Rejected"}

    def link_changed(self, connected: bool, state: str, reason: str | None) -> None:
        self.states.append((connected, state, reason))

    def status_sent(self, connector_status: str) -> None:
        pass

    def heartbeat_s(self) -> int:
        return 300


@pytest.fixture()
def csms() -> Iterator[BackendCsms]:
    backend = BackendCsms(boot_status="Pending", heartbeat_s=1).start()
    yield backend
    backend.stop()


async def run_link(link: BackendLink, seconds: float) -> None:
    task = asyncio.create_task(link.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_nothing_but_boot_until_accepted_then_heartbeats_at_the_given_interval(csms: BackendCsms) -> None:
    delegate = Delegate()
    link = BackendLink("CP1", Route(csms.url, None, None, None, 5.0), delegate, min_boot_retry_s=0.5)

    async def scenario() -> None:
        task = asyncio.create_task(link.run())
        await asyncio.sleep(1.3)
        assert set(csms.actions("CP1")) == {"BootNotification"} and len(csms.actions("CP1")) >= 2
        assert (False, "boot pending", "BootNotification Pending") in delegate.states
        csms.boot_status = "Accepted"
        await asyncio.sleep(3.6)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    seen = csms.actions("CP1")
    after_boot = seen[seen.index("StatusNotification"):]
    assert after_boot[:3] == ["StatusNotification", "StatusNotification", "StartTransaction"]
    assert delegate.delivered and delegate.delivered[0]["transaction_id"] == 1000
    assert 2 <= after_boot.count("Heartbeat") <= 4  # every 1 s, as the backend said
    assert (True, "connected", None) in delegate.states


def test_a_refused_stored_message_is_reported_and_the_link_stays_up(csms: BackendCsms) -> None:
    csms.boot_status = "Accepted"
    csms.fail_next("StartTransaction")
    delegate = Delegate()
    link = BackendLink("CP1", Route(csms.url, None, None, None, 5.0), delegate)
    asyncio.run(run_link(link, 1.0))
    assert delegate.refused and delegate.refused[0].startswith("InternalError")
    assert link.attempts == 1  # no reconnect for the backend's own judgement


def test_a_status_change_does_not_wait_for_a_backlog(csms: BackendCsms) -> None:
    csms.boot_status = "Accepted"
    csms.delay("MeterValues", 0.2)
    delegate = Delegate()
    meter = {"connectorId": 1, "transactionId": 1, "meterValue": [
        {"timestamp": "2026-12-02T10:00:00Z", "sampledValue": [{"value": "5", "measurand": "Energy.Active.Import.Register",
                                                               "unit": "Wh"}]}]}
    delegate.stored = [StoredCall(n, "MeterValues", meter, 1) for n in range(1, 9)]
    status = ["Available"]
    delegate.status_now = lambda: ("Available", status[0], "NoError")  # type: ignore[method-assign]
    link = BackendLink("CP1", Route(csms.url, None, None, None, 5.0), delegate)

    async def scenario() -> None:
        task = asyncio.create_task(link.run())
        while "MeterValues" not in csms.actions("CP1"):
            await asyncio.sleep(0.02)
        status[0] = "Charging"
        link.wake()
        await asyncio.sleep(2.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    seen = csms.actions("CP1")
    charging = next(i for i, m in enumerate(csms.received()) if m.cp_id == "CP1" and m.action == "StatusNotification"
                    and m.payload["status"] == "Charging")
    assert charging < len(seen) - 3 and seen.count("MeterValues") == 8  # not after the whole backlog
