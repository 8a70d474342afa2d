"""The ``ocpp_backend:`` section and each charger's ``backend_id``: what parses, what
``check-config`` says (errors and warnings), and the rule that decides whether the gateway runs
through the SMGW (and so needs ``ocpp`` in ``smgw.functions``)."""

from __future__ import annotations

from typing import Any

import pytest
from test_config import changed, errors_of

from controller.config import config_warnings, parse_config
from controller.config.schema import backend_disabled_reason, runs_through_smgw

BACKEND = {"url": "wss://ocpp.supplier.example/cs", "password": "from-the-supplier"}


def with_backend(**extra: Any) -> dict[str, Any]:
    return changed(("ocpp_backend", {**BACKEND, **extra}))


def test_defaults_and_backend_ids() -> None:
    cfg = parse_config(changed(("ocpp_backend", BACKEND), ("chargers.E1.backend_id", "DE-GC-0001-E1")),
                       source="test")
    assert cfg.ocpp_backend is not None
    assert cfg.ocpp_backend.meter_values_interval_s == 60 and cfg.ocpp_backend.heartbeat_s == 300
    assert cfg.ocpp_backend.id_tag == "gridcharge" and cfg.ocpp_backend.proxy is None
    assert cfg.backend_ids == {"E1": "DE-GC-0001-E1", "E2": "E2", "E3": "E3"}


@pytest.mark.parametrize("url", ["ws://10.0.0.1:9000/ocpp", "wss://ocpp.example/cs/", "wss://[::1]:443/x"])
def test_urls_that_work(url: str) -> None:
    parse_config(with_backend(url=url, password=None), source="test")


@pytest.mark.parametrize("url", ["http://ocpp.example/cs", "ocpp.example/cs", "wss://ocpp.example/cs?x=1", ""])
def test_urls_that_do_not(url: str) -> None:
    assert any(e.startswith("ocpp_backend.url: ") for e in errors_of(with_backend(url=url)))


@pytest.mark.parametrize("proxy", ["socks5://192.168.178.1:1080", "socks5h://smgw.local:1080",
                                   "http://192.168.178.1:3128", "socks5://user:pw@10.0.0.1:1080", "socks5://[fd00::1]:1080"])
def test_proxies_that_work(proxy: str) -> None:
    parse_config(with_backend(proxy=proxy), source="test")


@pytest.mark.parametrize("proxy", ["https://10.0.0.1:3128", "socks4://10.0.0.1:1080", "10.0.0.1:1080"])
def test_proxies_that_do_not(proxy: str) -> None:
    assert any(e.startswith("ocpp_backend.proxy: ") for e in errors_of(with_backend(proxy=proxy)))


def test_two_chargers_with_one_backend_id_is_an_error() -> None:
    data = changed(("ocpp_backend", BACKEND), ("chargers.E2.backend_id", "E1"))
    assert "chargers.E2.backend_id: 'E1' is already the backend id of chargers.E1" in errors_of(data)


def test_a_backend_id_is_an_ocpp_identity() -> None:
    errors = errors_of(changed(("chargers.E1.backend_id", "has/slash")))
    assert any(e.startswith("chargers.E1.backend_id: ") for e in errors)


def test_client_certificate_needs_both_files_and_tls_settings_need_wss() -> None:
    assert "ocpp_backend.key: give both cert and key (a client certificate), or neither" in errors_of(
        with_backend(cert="/etc/gridcharge/tls/backend.pem"))
    errors = errors_of(with_backend(url="ws://10.0.0.1/cs", ca="/etc/gridcharge/tls/ca.pem", password=None))
    assert "ocpp_backend.url: ws:// uses no TLS: ca, cert and key need a wss:// url" in errors


def warnings_of(data: dict[str, Any]) -> list[str]:
    return config_warnings(parse_config(data, source="test"))


def test_through_an_smgw_without_ocpp_is_a_warning_and_the_gateway_stays_off() -> None:
    data = with_backend(proxy="socks5://192.168.178.1:1080")  # the example's smgw lists vars, status
    warnings = warnings_of(data)
    assert any(w.startswith("ocpp_backend: runs through the SMGW") and "smgw.functions does not list ocpp" in w
               for w in warnings), warnings
    cfg = parse_config(data, source="test")
    assert cfg.ocpp_backend is not None and runs_through_smgw(cfg.ocpp_backend, cfg.smgw)
    assert "smgw.functions" in (backend_disabled_reason(cfg.ocpp_backend, cfg.smgw) or "")


def test_with_ocpp_in_the_functions_it_runs() -> None:
    data = with_backend(proxy="socks5://192.168.178.1:1080")
    data["smgw"]["functions"] = ["vars", "ocpp"]
    assert not [w for w in warnings_of(data) if w.startswith("ocpp_backend")]
    cfg = parse_config(data, source="test")
    assert cfg.ocpp_backend is not None and backend_disabled_reason(cfg.ocpp_backend, cfg.smgw) is None


def test_direct_or_a_proxy_that_is_not_the_smgw_runs_without_the_function() -> None:
    for extra in ({}, {"proxy": "http://10.0.0.9:3128", "through_smgw": False}):
        cfg = parse_config(with_backend(**extra), source="test")
        assert cfg.ocpp_backend is not None and backend_disabled_reason(cfg.ocpp_backend, cfg.smgw) is None


def test_through_smgw_without_an_smgw_section_is_an_error() -> None:
    data = with_backend(through_smgw=True)
    del data["smgw"]
    assert "ocpp_backend.through_smgw: true, but there is no smgw: section" in errors_of(data)


def test_a_password_over_plain_ws_is_a_warning() -> None:
    warnings = warnings_of(with_backend(url="ws://10.0.0.1/cs"))
    assert "ocpp_backend.password: sent in clear text over ws://: use a wss:// url" in warnings
