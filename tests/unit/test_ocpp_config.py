"""The ``ocpp:`` section and ``model: ocpp`` charger entries: strict keys, the checks that span them."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from controller.config import ConfigError, OcppChargerConfig, config_warnings, parse_config


def config(ocpp: dict[str, Any] | None = None, **chargers: dict[str, Any]) -> Any:
    data: dict[str, Any] = {"site": {"main_fuse_a": 25}, "state_dir": tempfile.mkdtemp(prefix="gc-ocpp-cfg-"),
                            "chargers": chargers}
    if ocpp is not None:
        data["ocpp"] = ocpp
    return parse_config(data)


def errors(*args: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config(*args, **kwargs)
    return err.value.errors


def box(charge_box_id: str = "EVB-P2231", **extra: Any) -> dict[str, Any]:
    return {"model": "ocpp", "charge_box_id": charge_box_id, "password": "box-secret", **extra}


def test_an_ocpp_box_parses_with_its_keys() -> None:
    cfg = config({"listen": "127.0.0.1:8887"}, E3=box(phases=1, phase="L2", id_tags=["04A1B2C3"]))
    e3 = cfg.chargers["E3"]
    assert isinstance(e3, OcppChargerConfig) and e3.connector == 1 and e3.id_tags == ("04A1B2C3",)
    assert e3.connection_text() == "OCPP EVB-P2231 connector 1"
    assert cfg.ocpp is not None and cfg.ocpp.port == 8887 and cfg.ocpp.cert is None
    assert "box-secret" not in repr(e3)


def test_the_keys_are_strict() -> None:
    text = "\n".join(errors({"listen": "0.0.0.0:8887", "certs": "/x"},
                            E3=box("a/b", connecter=2, unit=1), E4=box("", connector=0)))
    assert "ocpp.certs: unknown key (did you mean 'cert'?)" in text
    assert "chargers.E3.charge_box_id: 1 to 48 printable characters" in text
    assert "chargers.E3.connecter: unknown key (did you mean 'connector'?)" in text
    assert "chargers.E3.unit: unknown key" in text
    assert "chargers.E4.connector: Input should be greater than or equal to 1" in text
    assert "chargers.E4.charge_box_id" in text
    assert any("chargers.E3.charge_box_id" in e for e in errors({}, E3=box("x" * 49)))


def test_ocpp_boxes_need_the_section_and_their_own_ids() -> None:
    assert "chargers.E3.model: model 'ocpp' needs the ocpp: section (listen: ...)" in errors(None, E3=box())
    text = errors({}, E3=box(), E4=box())
    assert "chargers.E4.charge_box_id: 'EVB-P2231' is already chargers.E3" in text


def test_tls_needs_both_files_and_a_port_of_its_own() -> None:
    assert "ocpp.key: give both cert and key (wss), or neither (ws)" in errors({"cert": "/etc/x.pem"}, E3=box())
    with pytest.raises(ConfigError) as err:
        parse_config({"site": {"main_fuse_a": 25}, "state_dir": tempfile.mkdtemp(),
                      "http": {"listen": "0.0.0.0:8887", "password": "longenough"},
                      "ocpp": {}, "chargers": {"E3": box()}})
    assert "ocpp.listen: port 8887 is already http.listen" in err.value.errors


def test_warnings_missing_tls_files_and_no_password_on_the_lan() -> None:
    cfg = config({"listen": "0.0.0.0:8887", "cert": "/nonexistent/ocpp.pem", "key": "/nonexistent/ocpp.key"},
                 E3=box(), E4={"model": "ocpp", "charge_box_id": "B2"})
    warnings = config_warnings(cfg)
    assert "ocpp.cert: /nonexistent/ocpp.pem does not exist on this machine" in warnings
    assert any(w.startswith("chargers.E4.password: none: anyone on the network can connect as 'B2'")
               for w in warnings)
    assert not any(w.startswith("chargers.E3.password") for w in warnings)
    local = config({"listen": "127.0.0.1:8887"}, E4={"model": "ocpp", "charge_box_id": "B2"})
    assert not any("password" in w for w in config_warnings(local))
