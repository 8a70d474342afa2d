"""Who may open an OCPP connection, decided from the upgrade request alone."""

from __future__ import annotations

import base64
from http import HTTPStatus

from hal.ocpp.access import basic_auth_matches, charge_box_id_of, decide


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


PASSWORDS = {"EVB-P2231": "box-secret", "OPEN": None}


def test_the_id_is_the_last_path_segment() -> None:
    assert charge_box_id_of("/ocpp/EVB-P2231") == "EVB-P2231"
    assert charge_box_id_of("/ocpp/EVB%20X?x=1") == "EVB X"
    assert charge_box_id_of("/ocpp/") is None and charge_box_id_of("/ocpp/a/b") is None
    assert charge_box_id_of("/ocpp/a%2Fb") is None and charge_box_id_of("/other/a") is None


def test_basic_auth() -> None:
    assert basic_auth_matches(basic("EVB-P2231:box-secret"), "EVB-P2231", "box-secret")
    assert basic_auth_matches(basic("EVB-P2231:pass:with:colons"), "EVB-P2231", "pass:with:colons")
    assert not basic_auth_matches(basic("EVB-P2231:wrong"), "EVB-P2231", "box-secret")
    assert not basic_auth_matches(basic("OTHER:box-secret"), "EVB-P2231", "box-secret")
    assert not basic_auth_matches("Bearer abc", "EVB-P2231", "box-secret")
    assert not basic_auth_matches("Basic !!!", "EVB-P2231", "box-secret")
    assert not basic_auth_matches(basic("no-colon"), "EVB-P2231", "box-secret")
    assert not basic_auth_matches(None, "EVB-P2231", "box-secret")


def test_verdicts() -> None:
    assert decide("/ocpp/EVB-P2231", basic("EVB-P2231:box-secret"), PASSWORDS).status is None
    assert decide("/ocpp/OPEN", None, PASSWORDS).status is None
    assert decide("/ocpp/UNKNOWN", None, PASSWORDS).status is HTTPStatus.NOT_FOUND
    missing = decide("/ocpp/EVB-P2231", None, PASSWORDS)
    assert missing.status is HTTPStatus.UNAUTHORIZED and missing.reason == "no credentials"
    assert decide("/ocpp/EVB-P2231", basic("EVB-P2231:x"), PASSWORDS).reason == "wrong credentials"
