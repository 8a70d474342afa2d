"""A LAN listener alone in a process with a low descriptor limit, for the out-of-descriptors tests.

``python tests/integration/listener_proc.py --nofile N --mode raw|servers`` lowers its
``RLIMIT_NOFILE`` to N, starts the real API app behind basic auth (admin / ``PASSWORD``) and
prints ``{"port": P}``; its log goes to stderr. Then it answers one JSON line per command on
stdin:

- ``connect PORT``: open (and close) a TCP connection to 127.0.0.1:PORT, as a Modbus client
  reconnecting to its device would: ``{"ok": bool, "error": str|null, "fds": open descriptors}``;
- ``quit`` (or end of input): stop the listener and exit 0.

``--mode servers`` starts it the way ``gridcharge run`` does (``WebServers``: caps fitted to the
descriptor limit, a reserve kept for devices); ``--mode raw`` starts an ``HttpListener`` whose
caps are far above the limit, so that ``accept()`` itself runs out of descriptors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.config.schema import Http  # noqa: E402
from controller.status import EMPTY_STATUS  # noqa: E402
from controller.records.variables import VariableStore  # noqa: E402
from web.app import ApiContext, create_app  # noqa: E402
from web.auth import BasicAuth  # noqa: E402
from web.limits import ListenerLimits  # noqa: E402
from web.listener import HttpListener  # noqa: E402
from web.server import WebServers  # noqa: E402

PASSWORD = "proc-test-pass-1234"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int, required=True)
    parser.add_argument("--mode", choices=("raw", "servers"), required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    ctx = ApiContext(store=VariableStore({"AVAIL": 100}), status=lambda: EMPTY_STATUS,
                     update_override=lambda dev_id, **change: None, grid_log=None, tls=None, version="test")
    http = Http.model_construct(listen="127.0.0.1:0", user="admin", password=PASSWORD, password_hash=None)
    stop: Callable[[], None]
    if args.mode == "servers":
        servers = WebServers(ctx, http, None, None)
        servers.start()
        port, stop = servers.lan_port, servers.stop
    else:
        app = create_app(ctx, listener="lan", auth=BasicAuth.from_config(http))
        listener = HttpListener("LAN", "127.0.0.1", 0, app, ListenerLimits(max_connections=100_000,
                                                                           max_per_address=100_000))
        listener.start()
        port, stop = listener.port, listener.stop
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "quit":
            break
        if word == "connect":
            answer: dict[str, Any] = {"ok": True, "error": None}
            try:
                socket.create_connection(("127.0.0.1", int(arg)), timeout=2).close()
            except OSError as exc:
                answer = {"ok": False, "error": os.strerror(exc.errno) if exc.errno else str(exc)}
            try:
                answer["fds"] = len(os.listdir("/proc/self/fd"))
            except OSError:  # no descriptor left even to list them
                answer["fds"] = args.nofile
            print(json.dumps(answer), flush=True)
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
