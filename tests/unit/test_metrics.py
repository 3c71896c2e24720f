"""The metrics endpoint: real HTTP scrapes on 127.0.0.1 (port 0), parsed with the Prometheus text parser."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import DURATION_BUCKETS, Metrics, MetricsError, MetricsServer
from collector.states import Kind

HOST = "127.0.0.1"


@pytest.fixture
def servers():
    """Start servers with `servers(metrics)`; all are closed at the end of the test."""
    started: list[MetricsServer] = []

    def start(metrics: Metrics) -> MetricsServer:
        server = metrics.serve(HOST, 0)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def scrape(server: MetricsServer) -> dict[tuple[str, frozenset], float]:
    """Every sample of the endpoint, keyed by (sample name, labels)."""
    with httpx.Client(trust_env=False, timeout=5) as client:  # never through a proxy
        response = client.get(f"http://{HOST}:{server.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metrics(mode: str = "normal") -> Metrics:
    return Metrics(mode, f"host:123:{mode}:abcdef", "1.2.3")


def test_info_and_database_up(servers):
    m = metrics()
    server = servers(m)
    s = scrape(server)
    assert value(s, "collector_info", mode="normal", owner="host:123:normal:abcdef", version="1.2.3") == 1
    assert value(s, "collector_database_up") == 0  # unknown until the first database call
    m.database_up(True)
    assert value(scrape(server), "collector_database_up") == 1
    m.database_up(False)
    assert value(scrape(server), "collector_database_up") == 0


def test_runs_and_items_are_counted_per_service_and_outcome(servers):
    m = metrics()
    server = servers(m)
    m.run_finished("github", "page", new_items=30, duration=1.0)
    m.run_finished("github", Kind.PAGE, new_items=5, duration=1.0)
    m.run_finished("github", "not_modified", new_items=0, duration=0.1)
    m.run_finished("stackoverflow", "transient", new_items=0, duration=2.0)
    m.run_finished("stackoverflow", "page", new_items=7, duration=0.5)
    s = scrape(server)
    assert value(s, "collector_runs_total", service="github", outcome="page") == 2
    assert value(s, "collector_runs_total", service="github", outcome="not_modified") == 1
    assert value(s, "collector_runs_total", service="stackoverflow", outcome="transient") == 1
    assert value(s, "collector_runs_total", service="stackoverflow", outcome="page") == 1
    # every outcome of a known service exists from the start, at 0
    for kind in Kind:
        assert value(s, "collector_runs_total", service="github", outcome=kind.value) is not None
    assert value(s, "collector_runs_total", service="github", outcome="unauthorized") == 0
    assert value(s, "collector_items_stored_total", service="github") == 35
    assert value(s, "collector_items_stored_total", service="stackoverflow") == 7
    assert value(s, "collector_lease_lost_total") == 0

    m.run_finished("github", "page", new_items=1, duration=1.0)
    s2 = scrape(server)
    assert value(s2, "collector_runs_total", service="github", outcome="page") == 3
    assert value(s2, "collector_items_stored_total", service="github") == 36


def test_run_duration_histogram_count_sum_and_buckets(servers):
    m = metrics()
    server = servers(m)
    for duration in (0.03, 0.2, 0.2, 3.0, 500.0):
        m.run_finished("github", "page", new_items=0, duration=duration)
    m.run_finished("github", "transient", new_items=0, duration=-1.0)  # a clock step: counted as 0
    s = scrape(server)
    assert value(s, "collector_run_duration_seconds_count", service="github") == 6
    assert value(s, "collector_run_duration_seconds_sum", service="github") == pytest.approx(503.43)
    bucket = lambda le: value(s, "collector_run_duration_seconds_bucket", service="github", le=le)  # noqa: E731
    assert DURATION_BUCKETS[0] == 0.05 and DURATION_BUCKETS[-1] == 120
    assert bucket("0.05") == 2  # 0.03 and the clamped -1
    assert bucket("0.25") == 4
    assert bucket("5.0") == 5
    assert bucket("120.0") == 5
    assert bucket("+Inf") == 6


def test_lease_lost_is_counted_when_the_save_was_dropped(servers):
    m = metrics()
    server = servers(m)
    m.run_finished("github", "page", new_items=4, duration=1.0, saved=False)
    m.run_finished("github", "page", new_items=0, duration=1.0, saved=True)
    m.run_finished("github", "transient", new_items=0, duration=1.0, saved=False)
    s = scrape(server)
    assert value(s, "collector_lease_lost_total") == 2
    assert value(s, "collector_runs_total", service="github", outcome="page") == 2  # the run still counts
    assert value(s, "collector_items_stored_total", service="github") == 4  # items are written before the state


def test_rate_limit_pauses_by_scope(servers):
    m = metrics()
    server = servers(m)
    m.rate_limit_pause("github", "network")
    m.rate_limit_pause("github", "network")
    m.rate_limit_pause("stackoverflow", "service")
    s = scrape(server)
    assert value(s, "collector_rate_limit_pauses_total", service="github", scope="network") == 2
    assert value(s, "collector_rate_limit_pauses_total", service="github", scope="service") is None
    assert value(s, "collector_rate_limit_pauses_total", service="stackoverflow", scope="service") == 1


def test_in_flight_is_zeroed_when_a_service_disappears(servers):
    m = metrics()
    server = servers(m)
    m.set_in_flight({"github": 3, "stackoverflow": 1})
    s = scrape(server)
    assert value(s, "collector_runs_in_flight", service="github") == 3
    assert value(s, "collector_runs_in_flight", service="stackoverflow") == 1
    m.set_in_flight({"github": 2})
    s = scrape(server)
    assert value(s, "collector_runs_in_flight", service="github") == 2
    assert value(s, "collector_runs_in_flight", service="stackoverflow") == 0
    m.set_in_flight({})
    s = scrape(server)
    assert value(s, "collector_runs_in_flight", service="github") == 0
    assert value(s, "collector_runs_in_flight", service="stackoverflow") == 0
    m.set_in_flight({"stackoverflow": 4})
    assert value(scrape(server), "collector_runs_in_flight", service="stackoverflow") == 4


def test_backlog_and_overdue_are_zeroed_when_a_label_set_disappears(servers):
    m = metrics()
    server = servers(m)
    m.set_backlog([("initial", "github", 12, 340.5), ("normal", "github", 3, 20.0), ("normal", "stackoverflow", 1, 5)])
    s = scrape(server)
    assert value(s, "collector_due_backlog", mode="initial", service="github") == 12
    assert value(s, "collector_overdue_seconds", mode="initial", service="github") == 340.5
    assert value(s, "collector_due_backlog", mode="normal", service="github") == 3
    assert value(s, "collector_overdue_seconds", mode="normal", service="stackoverflow") == 5

    m.set_backlog([("normal", "github", 1, 2.0)])
    s = scrape(server)
    assert value(s, "collector_due_backlog", mode="normal", service="github") == 1
    assert value(s, "collector_overdue_seconds", mode="normal", service="github") == 2
    for mode, service in (("initial", "github"), ("normal", "stackoverflow")):
        assert value(s, "collector_due_backlog", mode=mode, service=service) == 0
        assert value(s, "collector_overdue_seconds", mode=mode, service=service) == 0

    m.set_backlog(iter([]))  # any iterable, e.g. a generator over database rows
    s = scrape(server)
    assert value(s, "collector_due_backlog", mode="normal", service="github") == 0
    assert value(s, "collector_overdue_seconds", mode="normal", service="github") == 0


def test_paused_gauges_are_zeroed_when_a_pause_ends(servers):
    m = metrics()
    server = servers(m)
    until = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)
    m.set_paused({"stackoverflow": until, "github": datetime(2026, 11, 25, 13, 0)})  # naive = UTC (MongoDB)
    s = scrape(server)
    assert value(s, "collector_service_paused", service="stackoverflow") == 1
    assert value(s, "collector_service_paused_until_seconds", service="stackoverflow") == until.timestamp()
    assert value(s, "collector_service_paused_until_seconds", service="github") == (
        until + timedelta(minutes=30)).timestamp()

    m.set_paused({"github": datetime(2026, 11, 25, 13, 0, tzinfo=UTC)})
    s = scrape(server)
    assert value(s, "collector_service_paused", service="github") == 1
    assert value(s, "collector_service_paused", service="stackoverflow") == 0
    assert value(s, "collector_service_paused_until_seconds", service="stackoverflow") == 0

    m.set_paused({})
    s = scrape(server)
    assert value(s, "collector_service_paused", service="github") == 0
    assert value(s, "collector_service_paused_until_seconds", service="github") == 0


def test_two_instances_do_not_share_values(servers):
    a, b = metrics("initial"), metrics("normal")
    server_a, server_b = servers(a), servers(b)
    assert server_a.port != server_b.port
    a.run_finished("github", "page", new_items=10, duration=1.0)
    a.set_in_flight({"github": 2})
    b.run_finished("github", "transient", new_items=0, duration=1.0)
    b.database_up(True)
    sa, sb = scrape(server_a), scrape(server_b)
    assert value(sa, "collector_runs_total", service="github", outcome="page") == 1
    assert value(sa, "collector_runs_total", service="github", outcome="transient") == 0
    assert value(sb, "collector_runs_total", service="github", outcome="page") == 0
    assert value(sb, "collector_runs_total", service="github", outcome="transient") == 1
    assert value(sa, "collector_items_stored_total", service="github") == 10
    assert value(sb, "collector_items_stored_total", service="github") == 0
    assert value(sa, "collector_runs_in_flight", service="github") == 2
    assert value(sb, "collector_runs_in_flight", service="github") is None
    assert (value(sa, "collector_database_up"), value(sb, "collector_database_up")) == (0, 1)
    assert value(sa, "collector_info", mode="initial", owner="host:123:initial:abcdef", version="1.2.3") == 1
    assert value(sb, "collector_info", mode="initial", owner="host:123:initial:abcdef", version="1.2.3") is None
    # nothing leaks into the library's global default registry
    assert prometheus_client.REGISTRY.get_sample_value("collector_database_up") is None


def test_render_is_the_served_exposition():
    m = metrics()
    m.run_finished("github", "page", new_items=2, duration=0.5)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert families["collector_runs"].type == "counter"
    assert families["collector_run_duration_seconds"].type == "histogram"
    assert families["collector_runs_in_flight"].type == "gauge"
    for name in ("collector_info", "collector_runs", "collector_items_stored", "collector_run_duration_seconds",
                 "collector_runs_in_flight", "collector_due_backlog", "collector_overdue_seconds",
                 "collector_rate_limit_pauses", "collector_service_paused", "collector_service_paused_until_seconds",
                 "collector_database_up", "collector_lease_lost", "collector_uncovered_due"):
        assert name in families, name


def test_label_values_are_bounded(servers):
    m = Metrics("normal", "owner", "1", max_services=2)
    server = servers(m)
    m.run_finished("github", "page", 0, 1.0)
    m.run_finished("stackoverflow", "weird-outcome", 0, 1.0)
    m.run_finished("third", "page", 0, 1.0)  # over the cap
    m.run_finished("ghp_" + "x" * 80, "page", 0, 1.0)  # not a connector name (a token pasted in the wrong field)
    m.run_finished("a b/c", "page", 0, 1.0)
    m.rate_limit_pause("github", "everything")
    m.set_in_flight({"fourth": 1, "fifth": 2})
    m.set_backlog([("bogus-mode", "github", 1, 1.0)])
    s = scrape(server)
    assert value(s, "collector_runs_total", service="stackoverflow", outcome="other") == 1
    assert value(s, "collector_runs_total", service="other", outcome="page") == 3
    assert value(s, "collector_rate_limit_pauses_total", service="github", scope="other") == 1
    assert value(s, "collector_runs_in_flight", service="other") == 3  # merged, not overwritten
    assert value(s, "collector_due_backlog", mode="other", service="github") == 1
    services = {dict(labels).get("service") for _name, labels in s} - {None}
    assert services == {"github", "stackoverflow", "other"}
    assert "ghp_" not in m.render().decode()


def test_serve_on_a_port_in_use_raises_metrics_error(servers):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsError) as excinfo:
            metrics().serve(HOST, port)
    message = str(excinfo.value)
    assert f"{HOST}:{port}" in message
    assert "in use" in message.lower()
    assert isinstance(excinfo.value.__cause__, OSError)

    # another collector process (or instance) on the same port is refused too: no silent port sharing
    first = servers(metrics())
    with pytest.raises(MetricsError, match=f"{HOST}:{first.port}"):
        metrics().serve(HOST, first.port)


def test_serve_with_an_invalid_port_raises_metrics_error():
    with pytest.raises(MetricsError, match="70000"):
        metrics().serve(HOST, 70000)


def test_close_frees_the_port_and_stops_the_thread():
    m = metrics()
    server = m.serve(HOST, 0)
    port = server.port
    assert port > 0
    scrape(server)
    assert any(t.name == f"metrics-{port}" for t in threading.enumerate())
    server.close()
    server.close()  # idempotent
    assert not any(t.name == f"metrics-{port}" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(httpx.ConnectError), httpx.Client(trust_env=False, timeout=2) as client:
        client.get(f"http://{HOST}:{port}/metrics")
    # the port can be bound again right away, by the next process or the same one
    with m.serve(HOST, port) as again:
        assert again.port == port
        assert value(scrape(again), "collector_database_up") == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        assert probe.connect_ex((HOST, port)) != 0


def test_uncovered_is_zeroed_when_a_gap_closes(servers):
    m = metrics()
    server = servers(m)
    m.set_uncovered([("normal", "github", 7), ("initial", "youtube", 2)])
    s = scrape(server)
    assert value(s, "collector_uncovered_due", mode="normal", service="github") == 7
    assert value(s, "collector_uncovered_due", mode="initial", service="youtube") == 2
    m.set_uncovered([("normal", "github", 1)])
    s = scrape(server)
    assert value(s, "collector_uncovered_due", mode="normal", service="github") == 1
    assert value(s, "collector_uncovered_due", mode="initial", service="youtube") == 0
