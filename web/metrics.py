"""``GET /metrics``: the controller in the Prometheus text format, via ``prometheus-client``.

``Metrics`` is one per controller (``web.runtime.start_web`` builds it and hands it to both
listeners through ``ApiContext.metrics``). It owns:

- ``CycleDurations``, the only per-cycle work the metrics cost: a cycle listener of the loop that
  puts the cycle's duration into fixed buckets (a few integer additions into memory that never
  grows) and publishes an immutable snapshot for the scrape. It never blocks the loop: no lock,
  no I/O, nothing that waits for a scrape.
- ``ApiRequests``, the requests both listeners answered, by listener, command and HTTP status,
  counted in the app's ``after_request`` hook under a lock held for one dictionary update.
- A ``CollectorRegistry`` that builds everything else at scrape time from the ``Status`` the loop
  published last (``web.metrics_families``), plus the process figures ``prometheus-client``
  reads from ``/proc`` (CPU seconds, resident memory, open descriptors) and ``python_info``.

Only the LAN listener serves ``/metrics``. ``http.metrics_auth`` (default true) asks for the
API's basic auth there; false answers without a password, for a Prometheus on the LAN that
should not hold the admin password (it can read the site, it can change nothing). The SMGW
listener never serves it, but its requests are counted.

The ``command`` label: the ``cmd`` of a ``/cnf`` request when it is one of the API's commands,
``unknown`` for any other ``cmd`` (or none), the route for other paths (``/metrics``, also when
the method is refused), and ``unmatched`` for a path nobody serves. It never carries request data, so a client cannot grow
the number of series.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
from collections.abc import Callable, Collection, Iterator, Sequence

import flask
from flask import Response, request
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from controller.status import Status
from web.metrics_families import status_families

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
#: Upper bounds of the cycle duration buckets (seconds): prometheus-client's defaults, which
#: span a 5 ms prompt cycle to a 10 s stall; the ``1.0`` bucket is the default ``cycle_s``.
CYCLE_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                      10.0)
#: Series of the request counter at most; a new (listener, command, status) beyond it counts as
#: command ``other``. The labels are bounded anyway; this keeps a future mistake from growing memory.
MAX_REQUEST_SERIES = 512


class CycleDurations:
    """The cycle duration histogram; ``observe`` is a cycle listener (loop thread only)."""

    def __init__(self, buckets_s: Sequence[float] = CYCLE_BUCKETS_S) -> None:
        self.bounds_s = tuple(sorted(buckets_s))
        self._counts = [0] * (len(self.bounds_s) + 1)  # the last one: above every bound (+Inf)
        self._sum_s = 0.0
        self._last_cycle: int | None = None
        #: What a scrape reads: replaced whole after every cycle, so it is always consistent.
        self.snapshot: tuple[tuple[int, ...], float] = (tuple(self._counts), 0.0)

    def observe(self, status: Status) -> None:
        """Count the cycle ``status`` reports. A failed cycle publishes the previous status again
        (same ``cycle_count``): it has no duration of its own and is not counted here."""
        if status.cycle_count == self._last_cycle or status.cycle_count == 0:
            return
        self._last_cycle = status.cycle_count
        seconds = status.cycle_time_s
        if not math.isfinite(seconds) or seconds < 0:
            return
        self._counts[bisect.bisect_left(self.bounds_s, seconds)] += 1  # a bucket holds values <= its bound
        self._sum_s += seconds
        self.snapshot = (tuple(self._counts), self._sum_s)

    def family(self) -> HistogramMetricFamily:
        counts, sum_s = self.snapshot
        cumulative = list(itertools.accumulate(counts))
        buckets = [(floatToGoString(bound), float(n)) for bound, n in zip(self.bounds_s, cumulative)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return HistogramMetricFamily("gridcharge_cycle_duration_seconds",
                                     "Duration of each completed control cycle (reads, decision, writes).",
                                     buckets=buckets, sum_value=sum_s)


class ApiRequests:
    """Requests the listeners answered, by listener, command and status (thread-safe)."""

    def __init__(self, max_series: int = MAX_REQUEST_SERIES) -> None:
        self.max_series = max_series
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}

    def count(self, listener: str, command: str, status: int) -> None:
        key = (listener, command, str(status))
        with self._lock:
            if key not in self._counts and len(self._counts) >= self.max_series:
                key = (listener, "other", str(status))
            self._counts[key] = self._counts.get(key, 0) + 1

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily("gridcharge_api_requests", "HTTP requests answered, by listener, command "
                                     "and status.", labels=["listener", "command", "status"])
        with self._lock:
            counts = sorted(self._counts.items())
        for labels, n in counts:
            family.add_metric(list(labels), float(n))
        return family


class Metrics:
    """Everything ``/metrics`` shows; see the module docstring.

    ``status`` is the service's ``status()`` (read once per scrape); ``main_fuse_a`` the config's
    fuse; ``auth_required`` is ``http.metrics_auth``; ``process`` adds prometheus-client's process
    and platform collectors (off in unit tests that compare whole outputs).
    """

    def __init__(self, status: Callable[[], Status], *, version: str, main_fuse_a: float | None = None,
                 auth_required: bool = True, process: bool = True) -> None:
        self.status = status
        self.version = version
        self.main_fuse_a = main_fuse_a
        self.auth_required = auth_required
        self.cycles = CycleDurations()
        self.requests = ApiRequests()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def collect(self) -> Iterator[Metric]:
        """The registry's collector: built from the latest status at every scrape."""
        info = GaugeMetricFamily("gridcharge_build_info", "The running gridcharge version (always 1).",
                                 labels=["version"])
        info.add_metric([self.version], 1.0)
        yield info
        yield self.cycles.family()
        yield from status_families(self.status(), main_fuse_a=self.main_fuse_a)
        yield self.requests.family()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for a request's ``Accept`` header: the Prometheus text format, or
        OpenMetrics when the scraper asks for it. Returns (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def command_label(commands: Collection[str]) -> str:
    """The ``command`` label of the request being answered (see the module docstring)."""
    rule = request.url_rule
    if rule is None:  # no route for this path, or none for this method (405): tell them apart
        served = {r.rule for r in flask.current_app.url_map.iter_rules()}
        return request.path if request.path in served else "unmatched"
    if rule.rule == "/cnf":
        cmd = request.args.get("cmd")
        return cmd if cmd is not None and cmd in commands else "unknown"
    return rule.rule


def install_metrics(app: flask.Flask, metrics: Metrics, *, listener: str, commands: Collection[str]) -> None:
    """Count every answer of ``app``; on the LAN listener also serve ``GET /metrics``."""

    @app.after_request
    def _count_request(response: Response) -> Response:
        metrics.requests.count(listener, command_label(commands), response.status_code)
        return response

    if listener != "lan":
        return

    @app.route(METRICS_PATH, methods=["GET"])
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render(request.headers.get("Accept"))
        return Response(body, content_type=content_type)


def open_to_all(metrics: Metrics | None, listener: str) -> bool:
    """True when ``/metrics`` of this listener answers without a password (``metrics_auth: false``)."""
    return metrics is not None and listener == "lan" and not metrics.auth_required
