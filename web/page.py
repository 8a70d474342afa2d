"""The status page: ``GET /`` and its assets under ``/static/``, on the LAN listener only.

The page is three static files in the package (``web/static``: HTML, CSS, JS; no build step, no
CDN, nothing fetched from the internet) that draw everything themselves from the API they poll
(``get_dev_info`` every cycle, ``get_cm_vars``, ``get_grid_log``, ``get_history`` less often).
The routes sit behind the listener's basic auth like ``/cnf``: a browser asks for the password
once and sends it with every request of the page after that; a wrong password gets the API's
401 JSON and nothing of the page. ``/?cmd=...`` (an API client that left out ``/cnf``) stays
the API's 404, which says where the API is.

The files are read once, when the app is built, and served from memory with an ``ETag`` and
``Cache-Control: no-cache``: a browser revalidates them at each load and gets a body-less 304
when nothing changed. A Content-Security-Policy allows scripts, styles and requests from the
box itself only, so even a hostile variable name or formula cannot run as script on the page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import flask
from flask import Response, request

from web.errors import ApiError

STATIC_DIR = "static"  # inside the web package
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``web/static`` with a known type, by file name."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("web").joinpath(STATIC_DIR).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def _serve(asset: Asset) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return Response(status=304, headers=headers)
    return Response(asset.body, status=200, headers=headers, content_type=asset.content_type)


def register_page(app: flask.Flask) -> None:
    """Add ``/`` and ``/static/<name>`` to the app of the LAN listener."""
    assets = load_assets()

    @app.route("/", methods=["GET"])
    def index() -> Response:
        if "cmd" in request.args:  # an API client that left out /cnf gets told, not a web page
            raise ApiError(404, "no such path '/': the API is /cnf?cmd=...")
        return _serve(assets["index.html"])

    @app.route("/static/<name>", methods=["GET"])
    def static_file(name: str) -> Response:
        asset = assets.get(name)
        if asset is None or name == "index.html":
            raise ApiError(404, f"no such path {('/static/' + name)[:80]!r}: the status page is /, "
                                "the API is /cnf?cmd=...")
        return _serve(asset)
