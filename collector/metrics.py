"""Prometheus metrics of one collector process (opt-in), with their own registry and HTTP endpoint.

Each process owns a `Metrics` (its own `CollectorRegistry`, never the global default one, so several
instances can live in one process, e.g. in tests) and may expose it with `Metrics.serve(host, port)`.
Label values are bounded: services are connector names (at most `max_services` of them, the rest
are reported as "other"), outcomes are the `Kind` values of collector/states.py, modes are the
modes of collector/config.py. No network id, user or token is ever a label.

Metrics
-------
collector_info{mode,owner,version}                  1; who this process is (owner = the lease owner id)
collector_runs_total{service,outcome}               runs finished, by outcome kind (page, not_modified,
                                                    rate_limited, unauthorized, transient, permanent)
collector_items_stored_total{service}               new items stored (duplicates not counted)
collector_run_duration_seconds{service}             histogram of the wall time of one run (claim to save)
collector_runs_in_flight{service}                   runs executing right now in this process
collector_due_backlog{mode,service}                 networks due now and not leased (a fleet-wide view read
                                                    from the database: every process reports the same value)
collector_overdue_seconds{mode,service}             how late the oldest due, unleased network is (fleet-wide)
collector_uncovered_due{mode,service}               due networks that no live process's selectors cover (fleet-
                                                    wide; alert on > 0: they wait until a process covers them)
collector_rate_limit_pauses_total{service,scope}    rate-limit pauses: scope="network" (one account waits) or
                                                    scope="service" (the whole service waits, app-wide quota)
collector_auth_incidents_total{service}             401 storms declared (collector/incidents.py): the service is
                                                    paused fleet-wide, nobody is disabled; alert on any increase
collector_service_paused{service}                   1 while the whole service is paused by an app-wide limit
collector_service_paused_until_seconds{service}     when that pause ends (unix time), 0 when not paused
collector_database_up                               1 if the last database call succeeded, 0 otherwise
                                                    (0 until the first call)
collector_lease_lost_total                          state saves dropped because the lease was lost (the items
                                                    were kept; the page is re-run by the new lease holder)
collector_webhook_deliveries_total{result}          webhook delivery attempts: ok, failed, dead (dead-lettered)

Counters also expose the `*_created` series of the Prometheus client library.

Example PromQL
--------------
Runs per second by outcome::

    sum by (outcome) (rate(collector_runs_total[5m]))

Error ratio (failed runs / all runs) per service::

    sum by (service) (rate(collector_runs_total{outcome=~"transient|permanent|unauthorized"}[5m]))
      / sum by (service) (rate(collector_runs_total[5m]))

p95 run duration per service::

    histogram_quantile(0.95, sum by (le, service) (rate(collector_run_duration_seconds_bucket[5m])))

New items per second::

    sum by (service) (rate(collector_items_stored_total[5m]))

Backlog lag alert (the fleet falls behind; backlog gauges are fleet-wide, so take max, never sum)::

    max by (mode, service) (collector_overdue_seconds) > 600        # for: 10m

Database unreachable, service paused, leases lost::

    collector_database_up == 0                                       # for: 2m
    max by (service) (collector_service_paused) == 1
    sum(increase(collector_lease_lost_total[1h])) > 0
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import MetricsHandler

from collector.config import MODES
from collector.observe import Observer
from collector.states import Kind

__all__ = ["DURATION_BUCKETS", "Metrics", "MetricsError", "MetricsServer"]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
OUTCOMES = tuple(k.value for k in Kind)
SCOPES = ("network", "service")
OTHER = "other"
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class MetricsError(Exception):
    """The metrics endpoint could not be started."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scraper never blocks shutdown
    allow_reuse_address = True  # restart while the old socket is in TIME_WAIT
    allow_reuse_port = False  # never share a port with another process (Python 3.13.0 turned it on)

    def __init__(self, address: tuple[str, int], handler: type, family: int):
        self.address_family = family
        super().__init__(address, handler)

    def server_bind(self) -> None:  # HTTPServer.server_bind does a reverse DNS lookup: skip it
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class MetricsServer:
    """A running metrics endpoint; `port` is the bound port (useful with port 0)."""

    def __init__(self, httpd: _Server, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread
        self._closed = False
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket (the port is free afterwards) and join the thread."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _timestamp(when: datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


class Metrics(Observer):
    """The metrics of one process, the daemon's observer (collector/observe.py). Thread-safe; every method is
    cheap and never raises on odd input."""

    enabled = True

    def __init__(self, mode: str, owner: str, version: str, *, services: Iterable[str] = (),
                 max_services: int = 50):
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_services = max_services
        self._lock = threading.Lock()
        self._services: set[str] = set()
        self._in_flight_seen: set[str] = set()
        self._backlog_seen: set[tuple[str, str]] = set()
        self._uncovered_seen: set[tuple[str, str]] = set()
        self._paused_seen: set[str] = set()
        r = self.registry

        self.info = Gauge("collector_info", "Identity of this collector process (always 1).",
                          ["mode", "owner", "version"], registry=r)
        self.runs = Counter("collector_runs_total", "Runs finished, by outcome kind.",
                            ["service", "outcome"], registry=r)
        self.items_stored = Counter("collector_items_stored_total", "New items stored (duplicates not counted).",
                                    ["service"], registry=r)
        self.run_duration = Histogram("collector_run_duration_seconds", "Wall time of one run.",
                                      ["service"], buckets=DURATION_BUCKETS, registry=r)
        self.in_flight = Gauge("collector_runs_in_flight", "Runs executing now in this process.",
                               ["service"], registry=r)
        self.due_backlog = Gauge("collector_due_backlog", "Networks due now and not leased (fleet-wide).",
                                 ["mode", "service"], registry=r)
        self.overdue = Gauge("collector_overdue_seconds", "Lag of the oldest due, unleased network (fleet-wide).",
                             ["mode", "service"], registry=r)
        self.uncovered = Gauge("collector_uncovered_due",
                               "Due networks no live process's selectors cover (fleet-wide).", ["mode", "service"],
                               registry=r)
        self.rate_limit_pauses = Counter("collector_rate_limit_pauses_total",
                                         "Rate-limit pauses, per network or for the whole service.",
                                         ["service", "scope"], registry=r)
        self.auth_incidents = Counter("collector_auth_incidents_total",
                                      "401 storms this process declared: the service paused, nobody disabled.",
                                      ["service"], registry=r)
        self.service_paused = Gauge("collector_service_paused", "1 while the service is paused by an app-wide limit.",
                                    ["service"], registry=r)
        self.service_paused_until = Gauge("collector_service_paused_until_seconds",
                                          "Unix time the service pause ends, 0 when not paused.",
                                          ["service"], registry=r)
        self.database = Gauge("collector_database_up", "1 if the last database call succeeded.", registry=r)
        self.lease_lost = Counter("collector_lease_lost_total",
                                  "State saves dropped because the lease was lost.", registry=r)
        self.webhooks = Counter("collector_webhook_deliveries_total", "Webhook delivery attempts, by result "
                                "(ok, failed, dead: the failure that dead-lettered a user).", ["result"], registry=r)

        self.info.labels(mode=self._mode(mode), owner=str(owner), version=str(version)).set(1)
        for service in services:
            self._service(service)

    # -- bounded labels -------------------------------------------------------------------------

    def _service(self, name: Any) -> str:
        """The label for a service name: itself if it looks like a connector name and the cap allows."""
        if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
            return OTHER
        with self._lock:
            if name in self._services:
                return name
            if len(self._services) >= self.max_services:
                return OTHER
            self._services.add(name)
        for outcome in OUTCOMES:  # every series exists from the start, so rate() sees the first run
            self.runs.labels(service=name, outcome=outcome)
        self.items_stored.labels(service=name)
        return name

    @staticmethod
    def _mode(mode: Any) -> str:
        return mode if mode in MODES else OTHER

    # -- events ---------------------------------------------------------------------------------

    def run_finished(self, service: str, outcome: str, new_items: int, duration: float, saved: bool = True) -> None:
        """One run ended: `outcome` is a Kind value, `saved` False if the state save lost its lease."""
        label = self._service(service)
        outcome = str(outcome)  # a Kind is a StrEnum: str() is its value
        self.runs.labels(service=label, outcome=outcome if outcome in OUTCOMES else OTHER).inc()
        if new_items and new_items > 0:
            self.items_stored.labels(service=label).inc(new_items)
        self.run_duration.labels(service=label).observe(max(float(duration), 0.0))
        if not saved:
            self.lease_lost.inc()

    def rate_limit_pause(self, service: str, scope: str) -> None:
        """A run was rate limited (scope "network") or paused the whole service (scope "service")."""
        self.rate_limit_pauses.labels(service=self._service(service), scope=scope if scope in SCOPES else OTHER).inc()

    def auth_incident(self, service: str) -> None:
        """A run declared a 401 storm on its service (collector/incidents.py)."""
        self.auth_incidents.labels(service=self._service(service)).inc()

    def webhook_delivery(self, result: str) -> None:
        """One webhook delivery attempt ended (collector/webhooks.py): ok, failed or dead."""
        self.webhooks.labels(result=result if result in ("ok", "failed", "dead") else OTHER).inc()

    def database_up(self, ok: bool) -> None:
        self.database.set(1 if ok else 0)

    # -- snapshots: label sets absent from the new snapshot are set to 0 -------------------------

    def set_in_flight(self, counts: Mapping[str, int]) -> None:
        current: dict[str, int] = {}
        for service, n in counts.items():
            label = self._service(service)
            current[label] = current.get(label, 0) + max(int(n), 0)
        with self._lock:
            stale = self._in_flight_seen - current.keys()
            self._in_flight_seen = stale | current.keys()
        for label in stale:
            self.in_flight.labels(service=label).set(0)
        for label, n in current.items():
            self.in_flight.labels(service=label).set(n)

    def set_backlog(self, rows: Iterable[tuple[str, str, int, float]]) -> None:
        """Rows of (mode, service, due_count, oldest_lag_seconds)."""
        current: dict[tuple[str, str], tuple[int, float]] = {}
        for mode, service, count, lag in rows:
            key = (self._mode(mode), self._service(service))
            old_count, old_lag = current.get(key, (0, 0.0))
            current[key] = (old_count + max(int(count), 0), max(old_lag, float(lag)))
        with self._lock:
            stale = self._backlog_seen - current.keys()
            self._backlog_seen = stale | current.keys()
        for mode, service in stale:
            self.due_backlog.labels(mode=mode, service=service).set(0)
            self.overdue.labels(mode=mode, service=service).set(0)
        for (mode, service), (count, lag) in current.items():
            self.due_backlog.labels(mode=mode, service=service).set(count)
            self.overdue.labels(mode=mode, service=service).set(lag)

    def set_uncovered(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Rows of (mode, service, due networks no live process covers): collector.status.uncovered."""
        current: dict[tuple[str, str], int] = {}
        for mode, service, count in rows:
            key = (self._mode(mode), self._service(service))
            current[key] = current.get(key, 0) + max(int(count), 0)
        with self._lock:
            stale = self._uncovered_seen - current.keys()
            self._uncovered_seen = stale | current.keys()
        for mode, service in stale:
            self.uncovered.labels(mode=mode, service=service).set(0)
        for (mode, service), count in current.items():
            self.uncovered.labels(mode=mode, service=service).set(count)

    def set_paused(self, paused: Mapping[str, datetime]) -> None:
        """Services paused by an app-wide rate limit, with when the pause ends."""
        current: dict[str, float] = {}
        for service, until in paused.items():
            label = self._service(service)
            current[label] = max(current.get(label, 0.0), _timestamp(until))
        with self._lock:
            stale = self._paused_seen - current.keys()
            self._paused_seen = stale | current.keys()
        for label in stale:
            self.service_paused.labels(service=label).set(0)
            self.service_paused_until.labels(service=label).set(0)
        for label, at in current.items():
            self.service_paused.labels(service=label).set(1)
            self.service_paused_until.labels(service=label).set(at)

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve the metrics over HTTP (any path, e.g. /metrics) in a daemon thread; port 0 picks a free one."""
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            handler = type("CollectorMetricsHandler", (MetricsHandler,), {"registry": self.registry, "timeout": 10})
            httpd = _Server((str(sockaddr[0]), int(port)), handler, family)
        except (OSError, OverflowError, ValueError) as exc:  # OverflowError: port out of range
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                  name=f"metrics-{httpd.server_address[1]}", daemon=True)
        thread.start()
        return MetricsServer(httpd, thread)
